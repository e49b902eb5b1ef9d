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
