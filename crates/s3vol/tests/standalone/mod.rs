//! A standalone `s3vol mount` of the test server's bucket `bkt`, as a user runs it, for
//! the fault-storm and soak suites (and the mount-table check `mount.rs` uses too).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use s3vol_testkit::{TestS3, ACCESS_KEY, SECRET_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_s3vol");

/// Whether FUSE mounts can be made here (root and /dev/fuse); if not, says so naming
/// `who` and fails in CI (`skip_or_fail`).
pub fn can_mount(who: &str) -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists();
    if !ok {
        s3vol_testkit::skip_or_fail(&format!("{who} need root and /dev/fuse"));
    }
    ok
}

/// Whether `p` is a mount point now.
pub fn is_mounted(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let p = p.to_string_lossy();
    mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(&*p))
}

/// A running mount at its default options; unmounted (and its process ended) on drop.
pub struct Mounted {
    pub mnt: PathBuf,
    /// The mount's log (`--log-file`).
    pub log: PathBuf,
    pub child: Child,
    _dir: tempfile::TempDir,
}

/// Mounts `s3://bkt` of `srv` in a fresh directory and waits for the mount to appear.
pub fn mount(srv: &TestS3) -> Mounted {
    mount_with(srv, &[])
}

/// [`mount`] with `-o` options (none: the defaults).
pub fn mount_with(srv: &TestS3, options: &[&str]) -> Mounted {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let log = dir.path().join("mount.log");
    std::fs::create_dir(&mnt).unwrap();
    let child = Command::new(BIN)
        .args(["mount", "s3://bkt"])
        .arg(&mnt)
        .args(["--endpoint", &srv.endpoint(), "--foreground", "--log-file"])
        .arg(&log)
        .args(options.iter().flat_map(|o| ["-o", o]))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(&mnt) {
        assert!(Instant::now() < deadline, "mount did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The log the no-panic checks read: a foreground mount writes it too.
    assert!(log.exists(), "--log-file was not opened by the foreground mount");
    Mounted { mnt, log, child, _dir: dir }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if Command::new("umount").arg(&self.mnt).status().map(|s| !s.success()).unwrap_or(true) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Prometheus text a `--metrics-addr` endpoint serves now.
pub fn metrics_text(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
