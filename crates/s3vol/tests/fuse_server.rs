//! `s3vol fuse-server`'s control socket as a plugin of another version talks to it: a
//! request it does not know is answered at once with an error (a newer plugin must not
//! wait for a timeout on every older server). Needs no root.

use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use s3vol_handoff::{self as handoff, ControlRequest, ControlResponse};

#[test]
fn an_unknown_request_gets_a_quick_error_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let server = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["fuse-server", "--control"])
        .arg(&control)
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    // Killed however the test ends (a failing one must not leave a server behind).
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Reaped(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while handoff::call(&control, &ControlRequest::Ping, &[], Duration::from_secs(1)).is_err() {
        assert!(Instant::now() < deadline, "server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    nix::sys::socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &nix::sys::socket::UnixAddr::new(&control).unwrap(),
    )
    .unwrap();
    // An old server said nothing: without this the test would wait forever instead of failing.
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(2, 0))
        .unwrap();
    let started = Instant::now();
    handoff::send_packet(sock.as_fd(), br#"{"op":"frobnicate_from_the_future"}"#, &[]).unwrap();
    let (reply, _) = handoff::recv_packet(sock.as_fd()).expect("an answer within 2 s").expect("an answer");
    let resp: ControlResponse = serde_json::from_slice(&reply).unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert!(!resp.ok);
    assert!(resp.error.unwrap_or_default().contains("unknown or bad request"));
}
