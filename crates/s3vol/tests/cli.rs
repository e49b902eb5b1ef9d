//! The binary's own surface: version output and argument errors.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_s3vol");

#[test]
fn version_prints_version_commit_and_build() {
    let out = Command::new(BIN).arg("version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("s3vol {}", env!("CARGO_PKG_VERSION")));
    assert!(lines[1].starts_with("commit: ") && lines[1].len() > "commit: ".len(), "{text}");
    assert!(lines[2].starts_with("built: 20"), "{text}");
}

#[test]
fn bad_csi_endpoint_is_named() {
    let out = Command::new(BIN).args(["csi", "--mode", "controller", "--endpoint", "tcp://x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcp://x"));
}

#[test]
fn csi_server_replaces_a_stale_socket_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    std::fs::write(&sock, b"stale").unwrap();
    let mut child = Command::new(BIN)
        .args(["csi", "--mode", "controller", "--endpoint"])
        .arg(format!("unix://{}", sock.display()))
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let is_socket = std::fs::metadata(&sock)
            .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            .unwrap_or(false);
        if is_socket {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "socket not served");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket removed on shutdown");
}
