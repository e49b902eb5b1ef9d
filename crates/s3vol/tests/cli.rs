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

/// A new user's first try: no keys anywhere. The error is one short line that says what
/// to set, not the SDK's nested debug structures.
#[test]
fn mount_without_credentials_says_what_to_set_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["mount", "s3://some-bucket/data"])
        .arg(dir.path())
        .args(["--endpoint", "http://127.0.0.1:9"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no credentials found") && err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    let longest = err.lines().map(str::len).max().unwrap_or(0);
    assert!(err.lines().count() <= 2 && longest < 400, "not one clear line: {err}");
}

/// A bad option is refused before anything touches the network or the mount point, by
/// name, with a failing exit status (no root needed).
#[test]
fn a_bogus_mount_option_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["mount", "s3://bkt"])
        .arg(dir.path())
        .args(["--endpoint", "http://127.0.0.1:9", "-o", "bogus_option=1"])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(!out.status.success(), "exit status {:?}", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus_option"), "{err}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&dir.path().display().to_string()), "mounted despite the error");
}
