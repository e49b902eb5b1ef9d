//! Real FUSE mounts of the `s3vol` binary against the in-process S3 server, exercised
//! with coreutils the way a user would. Needs root and /dev/fuse: outside CI the tests
//! say so and return; in CI (CI=true) not being able to mount is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use s3vol_testkit::{TestS3, ACCESS_KEY, SECRET_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_s3vol");

mod standalone;
use standalone::{is_mounted, metrics_text};

struct Env {
    srv: TestS3,
    rt: tokio::runtime::Runtime,
}

fn can_mount() -> bool {
    standalone::can_mount("FUSE mount tests")
}

/// A test server holding `n` one-byte objects `{stem}00000`, `{stem}00001`, ... in `bkt`.
fn env_with_objects(stem: &str, n: usize) -> Env {
    let e = env();
    for i in 0..n {
        e.srv.backend.put("bkt", &format!("{stem}{i:05}"), b"x", &[]);
    }
    e
}

fn env() -> Env {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let srv = rt.block_on(TestS3::start()).unwrap();
    srv.backend.create_bucket("bkt");
    Env { srv, rt }
}

struct Mount {
    mnt: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Mount {
    fn sh(&self, script: &str) -> Output {
        Command::new("sh").arg("-c").arg(script).current_dir(&self.mnt).output().unwrap()
    }

    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn err(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(!out.status.success(), "{script} should fail\nstdout: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(mut c) = self.child.take() {
            // Generous: a loaded 2-core machine (CI, `stress`) makes exits slow; a hang
            // still fails.
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            panic!("mount process did not exit after unmount");
        }
    }
}

/// Runs `args` as user and group `uid` with no supplementary groups, in `dir`.
fn run_as(uid: u32, dir: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".to_string()])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn mount_cmd(e: &Env, source: &str, mnt: &Path, opts: &[&str]) -> Command {
    mount_cmd_at(&e.srv.endpoint(), source, mnt, opts)
}

fn mount_cmd_at(endpoint: &str, source: &str, mnt: &Path, opts: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("mount").arg(source).arg(mnt).arg("--endpoint").arg(endpoint);
    for o in opts {
        c.arg("-o").arg(o);
    }
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", SECRET_KEY).env("RUST_LOG", "warn");
    c
}

fn mount(e: &Env, source: &str, opts: &[&str]) -> Mount {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let child = mount_cmd(e, source, &mnt, opts).arg("--foreground").stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(&mnt) {
        assert!(Instant::now() < deadline, "mount did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    Mount { mnt, child: Some(child), _dir: dir }
}

#[test]
fn coreutils_scenarios_and_keys_in_s3() {
    if !can_mount() {
        return;
    }
    let e = env();
    let m = mount(&e, "s3://bkt/vol", &[]);
    m.ok("mkdir -p src/a/b && echo hello > src/a/f.txt && echo deep > src/a/b/g && cp -r src copy && mv copy moved");
    let ls = m.ok("ls -l moved/a");
    assert!(ls.contains("f.txt") && ls.contains(" b"), "{ls}");
    assert!(m.ok("stat -c '%s %F' moved/a/f.txt").starts_with("6 regular"), "stat size and type");
    assert_eq!(m.ok("find moved -type f | sort"), "moved/a/b/g\nmoved/a/f.txt\n");
    m.ok("tar cf ../x.tar src && mkdir untar && tar xf ../x.tar -C untar && cmp untar/src/a/b/g src/a/b/g");
    m.ok("rm -r moved && test ! -e moved");
    m.ok("echo l1 >> log && echo l2 >> log && sed -i s/l1/L1/ log");
    assert_eq!(m.ok("cat log"), "L1\nl2\n");
    m.ok("dd if=/dev/urandom of=../big.local bs=1M count=48 status=none && dd if=../big.local of=big.bin bs=1M status=none");
    assert_eq!(m.ok("sha256sum < big.bin"), m.ok("sha256sum < ../big.local"));
    let keys = e.srv.backend.keys("bkt");
    for k in
        ["vol/src/", "vol/src/a/", "vol/src/a/f.txt", "vol/src/a/b/g", "vol/log", "vol/big.bin", "vol/untar/src/a/b/g"]
    {
        assert!(keys.contains(&k.to_string()), "{k} missing in {keys:?}");
    }
    assert!(!keys.iter().any(|k| k.starts_with("vol/moved")), "{keys:?}");
    assert_eq!(e.srv.backend.get("bkt", "vol/log").unwrap(), &b"L1\nl2\n"[..]);
    assert_eq!(e.srv.backend.pending_uploads(), 0);
}

/// A file unlinked or renamed while a process holds it open for writing: the close must
/// not bring the old name back, and the renamed file's content ends up under the new name.
#[test]
fn unlink_and_rename_of_open_files() {
    if !can_mount() {
        return;
    }
    let e = env();
    let m = mount(&e, "s3://bkt/vol", &[]);
    let script = r#"
import os
# Anonymous scratch file: create, unlink, keep using the descriptor.
fd = os.open("scratch", os.O_CREAT | os.O_RDWR, 0o644)
os.write(fd, b"temporary ")
os.unlink("scratch")
os.write(fd, b"data")
os.lseek(fd, 0, 0)
assert os.read(fd, 100) == b"temporary data", "the unlinked file's data is readable"
os.close(fd)
assert not os.path.exists("scratch"), "close brought the unlinked file back"
# Flushed, then unlinked, then written again.
f = open("flushed", "wb"); f.write(b"v1"); f.flush(); os.fsync(f.fileno())
os.unlink("flushed"); f.write(b"v2"); f.close()
assert not os.path.exists("flushed")
# Renamed while open: the rest of the data follows the file.
f = open("draft", "wb"); f.write(b"first ")
os.rename("draft", "final")
f.write(b"second"); f.close()
assert open("final", "rb").read() == b"first second"
assert not os.path.exists("draft")
# Opened read-only, then removed: fstat still answers with its size (until the close).
open("kept", "wb").write(b"12345")
fd = os.open("kept", os.O_RDONLY)
os.unlink("kept")
assert os.fstat(fd).st_size == 5, "fstat of an open, removed file"
os.close(fd)
print("ok")
"#;
    let out = m.sh(&format!("python3 -c '{}'", script.replace('\'', "'\\''")));
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let keys = e.srv.backend.keys("bkt");
    assert_eq!(e.srv.backend.get("bkt", "vol/final").unwrap(), &b"first second"[..]);
    for gone in ["vol/scratch", "vol/flushed", "vol/draft"] {
        assert!(!keys.contains(&gone.to_string()), "{gone} came back: {keys:?}");
    }
    assert_eq!(e.srv.backend.pending_uploads(), 0);
}

/// A full staging disk (`cache_dir`) is "No space left on device" to the writer (with
/// the cause in the log), not a bare I/O error, and the object keeps its old content.
#[test]
fn a_full_cache_dir_is_enospc() {
    if !can_mount() {
        return;
    }
    let e = env();
    let cache = tempfile::tempdir().unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(cache.path()).status().unwrap();
    assert!(ok.success());
    e.srv.backend.put("bkt", "c/f", b"old", &[]);
    let m = mount(&e, "s3://bkt/c", &[&format!("cache_dir={}", cache.path().display())]);
    // Writing past the end of an existing object goes through the staging file.
    let err = m.err("dd if=/dev/zero of=f bs=1M count=3 seek=1 conv=notrunc status=none");
    assert!(err.contains("No space left on device"), "{err}");
    drop(m);
    let _ = Command::new("umount").arg(cache.path()).status();
    assert_eq!(e.srv.backend.get("bkt", "c/f").as_deref(), Some(&b"old"[..]));
}

/// `s3vol mount --capacity N --hard-quota`, foreground and background: what is already
/// stored counts, writes past the capacity fail with ENOSPC, df shows the capacity.
#[test]
fn hard_quota_of_a_standalone_mount_is_enforced() {
    if !can_mount() {
        return;
    }
    let e = env();
    e.srv.backend.put("bkt", "q/existing", &[7u8; 15_000], &[]);
    for background in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut c = mount_cmd(&e, "s3://bkt/q", &mnt, &[]);
        c.args(["--capacity", "20000", "--hard-quota"]);
        let mut child = None;
        if background {
            assert!(c.status().unwrap().success(), "background mount");
        } else {
            child = Some(c.arg("--foreground").stdout(Stdio::null()).spawn().unwrap());
            let deadline = Instant::now() + Duration::from_secs(20);
            while !is_mounted(&mnt) {
                assert!(Instant::now() < deadline, "mount did not appear");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let m = Mount { mnt: mnt.clone(), child, _dir: dir };
        let err = std::fs::write(mnt.join("more"), vec![1u8; 10_000]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "background={background}: {err}");
        std::fs::write(mnt.join("small"), vec![1u8; 4_000]).expect("within the capacity");
        let s = nix::sys::statvfs::statvfs(&mnt).unwrap();
        assert_eq!(s.blocks() * s.fragment_size(), 20_000 / 4096 * 4096, "df shows the capacity");
        std::fs::remove_file(mnt.join("small")).unwrap();
        drop(m);
    }
}

/// mkfifo, mknod and a bound unix socket: stored as the node alone (an empty object with
/// the type in its mode, rdev for devices, as s3fs does), served by the kernel, and the
/// same after a remount.
#[test]
fn fifos_sockets_and_device_nodes() {
    if !can_mount() {
        return;
    }
    let e = env();
    let script = r#"
import os, socket, stat, threading
os.mkfifo("fifo", 0o640)
os.mknod("chr", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
os.mknod("blk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind("sock"); s.close()
# The FIFO is a real pipe, served by the kernel.
t = threading.Thread(target=lambda: open("fifo", "w").write("through the pipe"))
t.start(); got = open("fifo").read(); t.join()
assert got == "through the pipe", got
"#;
    let m = mount(&e, "s3://bkt/special", &[]);
    let out = m.sh(&format!("python3 -c '{script}'"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(m);
    let m = mount(&e, "s3://bkt/special", &[]);
    let types = m.ok("stat -c '%n %F %a %t:%T' fifo chr blk sock");
    assert_eq!(
        types,
        "fifo fifo 640 0:0\nchr character special file 600 1:3\nblk block special file 600 7:0\nsock socket 755 0:0\n",
        "after a remount"
    );
    let meta = e.srv.backend.metadata("bkt", "special/fifo").expect("the node is an object");
    assert_eq!(meta.get("mode").map(String::as_str), Some("4512"), "S_IFIFO|0640 as s3fs writes it: {meta:?}");
}

#[test]
fn git_works_in_the_mount() {
    if !can_mount() {
        return;
    }
    if Command::new("git").arg("--version").output().is_err() {
        s3vol_testkit::skip_or_fail("git is not installed");
        return;
    }
    let e = env();
    let m = mount(&e, "s3://bkt/repo", &[]);
    m.ok("git init -q . && git config user.email t@example.com && git config user.name t && echo a > a.txt && git add a.txt && git commit -qm first && echo b >> a.txt && git commit -qam second");
    assert_eq!(m.ok("git log --format=%s"), "second\nfirst\n");
    assert_eq!(m.ok("git status --porcelain"), "");
}

#[test]
fn objects_written_by_other_tools_appear_correctly() {
    if !can_mount() {
        return;
    }
    let e = env();
    let b = &e.srv.backend;
    b.put("bkt", "with-marker/", b"", &[]);
    b.put("bkt", "with-marker/x", b"1", &[]);
    b.put("bkt", "implicit/y", b"22", &[]);
    b.put("bkt", "s3fs-file", b"333", &[("mode", "33257"), ("uid", "1234"), ("gid", "4321"), ("mtime", "1600000000")]);
    b.put("bkt", "s3fs-link", b"s3fs-file", &[("mode", "41471")]);
    let m = mount(&e, "s3://bkt", &[]);
    assert_eq!(m.ok("ls"), "implicit\ns3fs-file\ns3fs-link\nwith-marker\n");
    assert_eq!(m.ok("stat -c '%F' implicit with-marker"), "directory\ndirectory\n");
    assert_eq!(m.ok("cat implicit/y with-marker/x"), "221");
    assert_eq!(m.ok("stat -c '%a %u %g %Y' s3fs-file"), "751 1234 4321 1600000000\n");
    assert_eq!(m.ok("readlink s3fs-link && cat s3fs-link"), "s3fs-file\n333");
}

#[test]
fn a_name_that_is_both_an_object_and_a_prefix_becomes_the_directory() {
    if !can_mount() {
        return;
    }
    let e = env();
    let b = &e.srv.backend;
    b.put("bkt", "both", b"file", &[]);
    b.put("bkt", "both/inner", b"in", &[]);
    b.put("bkt", "plain", b"p", &[]);
    let m = mount(&e, "s3://bkt", &[]);
    // LISTs answer a second after HEADs: a cold lookup answers from the HEAD first.
    e.srv.control.set_op_latency("ListObjectsV2", Duration::from_secs(1));
    assert_eq!(m.ok("stat -c %F both plain"), "regular file\nregular file\n", "the HEAD's answer, not waiting");
    // The provisional answer is not cached by the kernel: once the directory check is
    // back, the path through `both/` works (a cached file entry would say ENOTDIR for
    // the whole stat_cache_ttl, 60 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = m.sh("cat both/inner");
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "in");
            break;
        }
        assert!(Instant::now() < deadline, "both/ never became a directory: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(m.ok("stat -c %F both plain"), "directory\nregular file\n");
}

#[test]
fn hard_links_are_not_supported() {
    if !can_mount() {
        return;
    }
    let e = env();
    let m = mount(&e, "s3://bkt", &[]);
    m.ok("echo x > a");
    let err = m.err("ln a b");
    assert!(err.contains("Operation not supported"), "{err}");
    m.ok("ln -s a sym && test \"$(cat sym)\" = x");
}

#[test]
fn non_root_users_with_uid_gid_umask() {
    if !can_mount() {
        return;
    }
    let e = env();
    let m = mount(&e, "s3://bkt/shared", &["allow_other,uid=1000,gid=1000,umask=0022"]);
    let out = run_as(
        1000,
        &m.mnt,
        &["sh", "-c", "echo data > mine && mkdir d && echo more > d/f && cat mine d/f && ls -ln mine"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("data\nmore\n-rw-r--r-- 1 1000 1000"), "{text}");
    drop(m);

    // A locked-down mount: owned by root, 0700. The same user is refused.
    let m2 = mount(&e, "s3://bkt/locked", &["allow_other", "umask=077"]);
    m2.ok("echo secret > s");
    let out = run_as(1000, &m2.mnt, &["cat", "s"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn read_only_mount_refuses_writes() {
    if !can_mount() {
        return;
    }
    let e = env();
    e.srv.backend.put("bkt", "ro/f", b"keep", &[]);
    let m = mount(&e, "s3://bkt/ro", &["ro"]);
    assert_eq!(m.ok("cat f"), "keep");
    // Every path that writes: create, write, truncate, setattr (mode, owner, times),
    // rename, unlink, mkdir, rmdir, symlink, mknod.
    e.srv.backend.put("bkt", "ro/d/x", b"", &[]);
    for cmd in [
        "touch g",
        "echo x > f",
        "echo x >> f",
        "truncate -s 0 f",
        "chmod 600 f",
        "chown 1000 f",
        "touch -d 2001-01-01 f",
        "mv f f2",
        "rm f",
        "mkdir n",
        "rmdir d",
        "ln -s f l",
        "mkfifo p",
    ] {
        let err = m.err(cmd);
        assert!(err.contains("Read-only file system"), "{cmd}: {err}");
    }
    assert_eq!(e.srv.backend.get("bkt", "ro/f").unwrap(), &b"keep"[..]);
    assert_eq!(e.srv.backend.keys("bkt"), vec!["ro/d/x".to_string(), "ro/f".to_string()], "nothing added or removed");
}

#[test]
fn failed_upload_is_an_error_of_close() {
    if !can_mount() {
        return;
    }
    let e = env();
    let m = mount(&e, "s3://bkt", &["part_size=5"]);
    for op in ["PutObject", "UploadPart", "CompleteMultipartUpload", "CreateMultipartUpload"] {
        e.srv.control.fail_next(op, "InternalError".parse().unwrap(), usize::MAX);
    }
    let script = r#"
import errno, os, sys
for size in (1000, 12 * 1024 * 1024):
    f = open(f"f{size}", "wb")
    try:
        f.write(os.urandom(size))
        f.close()
    except OSError as e:
        print(f"{size}:{e.errno}")
        continue
    print(f"{size}:ok")
"#;
    let out = Command::new("python3").arg("-c").arg(script).current_dir(&m.mnt).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        format!("1000:{}\n{}:{}\n", libc::EIO, 12 * 1024 * 1024, libc::EIO),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    e.srv.control.clear_faults();
    m.ok("echo back > ok.txt");
    assert_eq!(e.srv.backend.get("bkt", "ok.txt").unwrap(), &b"back\n"[..]);
    assert_eq!(e.srv.backend.pending_uploads(), 0, "failed multipart uploads are aborted");
}

#[test]
fn mount_failures_are_one_clear_line() {
    if !can_mount() {
        return;
    }
    let e = env();
    let dir = tempfile::tempdir().unwrap();
    let run = |source: &str, env_ak: &str, endpoint: Option<String>| {
        let mut c = mount_cmd_at(&endpoint.unwrap_or_else(|| e.srv.endpoint()), source, dir.path(), &[]);
        c.env("AWS_ACCESS_KEY_ID", env_ak);
        let t = Instant::now();
        let out = c.output().unwrap();
        assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("s3://no-such-bucket", ACCESS_KEY, None);
    assert!(err.contains("no-such-bucket") && err.contains("does not exist"), "{err}");
    let err = run("s3://bkt", "wrong-key", None);
    assert!(err.contains("access denied") && err.contains("InvalidAccessKeyId"), "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = run("s3://bkt", ACCESS_KEY, Some(format!("http://127.0.0.1:{port}")));
    assert!(err.contains("unreachable"), "{err}");
    assert!(!is_mounted(dir.path()));
    // Checked before any request (the endpoint here is unreachable): the bucket's syntax...
    let err = run("s3://my bucket", ACCESS_KEY, Some(format!("http://127.0.0.1:{port}")));
    assert!(err.contains("\"my bucket\"") && err.contains("' '") && !err.contains("unreachable"), "{err}");
    // ... and the mount point: missing, not a directory, already an s3vol mount.
    let missing = dir.path().join("nope");
    let out = mount_cmd_at(&format!("http://127.0.0.1:{port}"), "s3://bkt", &missing, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not exist") && err.contains("mkdir -p"), "{err}");
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let out = mount_cmd_at(&format!("http://127.0.0.1:{port}"), "s3://bkt", &file, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not a directory"), "{err}");
    let m = mount(&e, "s3://bkt/first", &[]);
    let out = mount_cmd(&e, "s3://bkt/second", &m.mnt, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already an s3vol mount of s3vol:bkt/first/"), "{err}");
    let stacked = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let on_dir = stacked.lines().filter(|l| l.split(' ').nth(4) == Some(&*m.mnt.to_string_lossy())).count();
    assert_eq!(on_dir, 1, "no second mount stacked on {}", m.mnt.display());
}

#[test]
fn background_mount_returns_when_ready_and_exits_on_unmount() {
    if !can_mount() {
        return;
    }
    let e = env();
    let dir = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let status = mount_cmd(&e, "s3://bkt/bg", dir.path(), &[])
        .args(["--region", "eu-central-1", "--addressing-style", "path", "--log-file"])
        .arg(log.path())
        .env("RUST_LOG", "info")
        .status()
        .unwrap();
    assert!(status.success());
    // The background process logs to --log-file, naming where it signs and sends requests.
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("mounted") && text.contains("region eu-central-1, path addressing"), "{text}");
    assert!(is_mounted(dir.path()), "mounted when the command returns");
    std::fs::write(dir.path().join("f"), b"bg").unwrap();
    assert_eq!(e.srv.backend.get("bkt", "bg/f").unwrap(), &b"bg"[..]);
    assert!(Command::new("umount").arg(dir.path()).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running = Command::new("pgrep")
            .args(["-f", &format!("s3vol mount s3://bkt/bg {}", dir.path().display())])
            .output()
            .unwrap();
        if running.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "background process still running after unmount");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(e.rt);
}

#[test]
fn local_directory_mount_needs_no_s3() {
    if !can_mount() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = format!("file://{}", data.path().display());
    let out = Command::new(BIN).args(["mount", &src]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("d/f"), b"local").unwrap();
    assert_eq!(std::fs::read(data.path().join("d/f")).unwrap(), b"local");
    assert!(Command::new("umount").arg(dir.path()).status().unwrap().success());
}

#[test]
fn metrics_count_store_requests_by_operation() {
    if !can_mount() {
        return;
    }
    let e = env();
    e.srv.backend.put("bkt", "m/a", b"1", &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let status = mount_cmd(&e, "s3://bkt/m", dir.path(), &[]).arg("--metrics-addr").arg(&addr).status().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"1");
    let body = metrics_text(&addr);
    assert!(Command::new("umount").arg(dir.path()).status().unwrap().success());
    let line = body
        .lines()
        .find(|l| l.starts_with("s3vol_store_requests_total") && l.contains("op=\"GetObject\""))
        .unwrap_or_else(|| panic!("{body}"));
    assert!(line.contains("status=\"ok\""), "{line}");
    assert!(body.contains("s3vol_store_request_seconds"), "{body}");
}

/// The POSIX behaviour suite (tests/posix/suite.sh), run as an unprivileged user on an
/// S3-backed mount: supported operations behave as on a disk, unsupported ones fail
/// with the documented errno.
#[test]
fn posix_suite_as_a_non_root_user() {
    if !can_mount() {
        return;
    }
    let e = env();
    let m = mount(&e, "s3://bkt/posix", &["allow_other"]);
    m.ok("mkdir suite && chown 1000:1000 suite");
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/posix/suite.sh");
    let suite_dir = m.mnt.join("suite");
    let out = run_as(1000, &m.mnt, &[suite, suite_dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(" passed, 0 failed"), "{text}");
}

/// The core coreutils cases against moto, a second S3 implementation (CI starts it).
/// A bucket of its own on moto (`S3VOL_MOTO_ENDPOINT`, set by `make test`) mounted at
/// `s3://BUCKET/p` with `opts`; returns the mount, the bucket and the endpoint. `None`
/// (after saying so) when moto or mounting is not available here.
fn moto_mount(stem: &str, opts: &[&str]) -> Option<(Mount, String, String)> {
    let Ok(endpoint) = std::env::var("S3VOL_MOTO_ENDPOINT") else {
        s3vol_testkit::skip_or_fail("the moto mount cases need S3VOL_MOTO_ENDPOINT (moto_server)");
        return None;
    };
    if !can_mount() {
        return None;
    }
    let bucket = format!("{stem}-{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let creds = s3vol_store::CredentialSource::fixed(s3vol_store::StaticCredentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        });
        let store = s3vol_store::S3Store::new(s3vol_store::S3Config::new(Some(endpoint.clone()), "us-east-1", creds))
            .await
            .unwrap();
        s3vol_store::ObjectStore::create_bucket(&store, &bucket).await.unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let child = mount_cmd_at(&endpoint, &format!("s3://{bucket}/p"), &mnt, opts)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .arg("--foreground")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(&mnt) {
        assert!(Instant::now() < deadline, "moto mount did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((Mount { mnt, child: Some(child), _dir: dir }, bucket, endpoint))
}

#[test]
fn core_cases_against_moto() {
    let Some((m, _, _)) = moto_mount("mnt", &[]) else { return };
    m.ok("mkdir -p a/b && echo hi > a/b/f && cp -r a c && mv c d && echo more >> d/b/f && ln -s f d/b/l");
    assert_eq!(m.ok("cat d/b/f d/b/l"), "hi\nmore\nhi\nmore\n");
    assert_eq!(m.ok("find a d | sort"), "a\na/b\na/b/f\nd\nd/b\nd/b/f\nd/b/l\n");
    m.ok("dd if=/dev/urandom of=../big bs=1M count=12 status=none && cp ../big big && cmp big ../big && rm -r a d big");
    assert_eq!(m.ok("ls -A"), "");
    let err = m.err("echo x > h && ln h h2");
    assert!(err.contains("Operation not supported"), "{err}");
    let err = m.err("rmdir nonexistent");
    assert!(err.contains("No such file"), "{err}");
}

/// `storage_class` and `sse` on every path that writes an object, against moto (which
/// keeps both): a new file, a chmod (metadata rewritten by a copy), a rename, and the
/// files of a renamed directory. A plain copy would reset them to the store's defaults.
#[test]
fn storage_class_and_encryption_follow_every_write_path_against_moto() {
    let Some((m, bucket, endpoint)) = moto_mount("sc", &["storage_class=STANDARD_IA,sse=AES256"]) else { return };
    let boto = |script: &str| {
        let out = Command::new("python3")
            .args(["-c", &format!("import boto3,sys\ns3 = boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n{script}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    m.ok("echo a > new && echo b > chmodded && chmod 600 chmodded && echo c > before && mv before renamed");
    m.ok("mkdir d && echo e > d/inner && mv d moved");
    let out = boto(&format!(
        "for k in ['p/new', 'p/chmodded', 'p/renamed', 'p/moved/inner']:\n    h = s3.head_object(Bucket='{bucket}', Key=k)\n    print(k, h.get('StorageClass', 'STANDARD'), h.get('ServerSideEncryption'))"
    ));
    for k in ["p/new", "p/chmodded", "p/renamed", "p/moved/inner"] {
        assert!(out.contains(&format!("{k} STANDARD_IA AES256")), "{k}:\n{out}");
    }
}

/// With `list_attrs` a listing gives attributes without per-object metadata; a file kept
/// private with chmod must stay private to other users right after an `ls -l`.
#[test]
fn private_files_stay_private_after_a_listing() {
    if !can_mount() {
        return;
    }
    let e = env();
    e.srv.backend.put("bkt", "p/secret", b"s3cr3t", &[("mode", "33152"), ("uid", "1000"), ("gid", "1000")]);
    e.srv.backend.put("bkt", "p/open", b"hello", &[]);
    let m = mount(&e, "s3://bkt/p", &["allow_other,list_attrs"]);
    let as_user = |uid: u32, script: &str| run_as(uid, &m.mnt, &["sh", "-c", script]);
    let before = e.srv.control.count("HeadObject");
    let ls = as_user(1001, "ls -l");
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
    assert_eq!(e.srv.control.count("HeadObject"), before, "ls -l makes no request per entry");
    let denied = as_user(1001, "cat secret");
    assert!(!denied.status.success(), "another user read a 0600 file: {}", String::from_utf8_lossy(&denied.stdout));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Permission denied"));
    let owner = as_user(1000, "cat secret");
    assert_eq!(String::from_utf8_lossy(&owner.stdout), "s3cr3t", "{}", String::from_utf8_lossy(&owner.stderr));
    assert_eq!(String::from_utf8_lossy(&as_user(1001, "cat open").stdout), "hello");
}

/// The kernel may keep a directory's entries, but changes through the mount show at
/// once and changes made directly in the store show once `stat_cache_ttl` has passed.
#[test]
fn listings_see_local_changes_at_once_and_remote_ones_after_the_ttl() {
    if !can_mount() {
        return;
    }
    let e = env();
    let m = mount(&e, "s3://bkt/lc", &["stat_cache_ttl=1"]);
    m.ok("touch a");
    assert_eq!(m.ok("ls"), "a\n");
    m.ok("touch b && mkdir d");
    assert_eq!(m.ok("ls"), "a\nb\nd\n");
    m.ok("rm a && mv b c");
    assert_eq!(m.ok("ls"), "c\nd\n");
    e.srv.backend.put("bkt", "lc/remote", b"r", &[]);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(m.ok("ls"), "c\nd\nremote\n");
    assert_eq!(m.ok("cat remote"), "r");
}

/// At the default `stat_cache_ttl` (60 s) the kernel keeps names and attributes, yet what
/// another client did is seen where POSIX programs look: an open reads what was closed
/// elsewhere, and a file removed elsewhere can be created again by name (the open of the
/// cached name answers ESTALE, the kernel looks the name up again and creates it).
#[test]
fn other_clients_changes_at_the_default_ttl() {
    if !can_mount() {
        return;
    }
    let e = env();
    let m = mount(&e, "s3://bkt/dt", &[]);
    m.ok("echo one > f && echo keep > g && cat f g");
    e.srv.backend.put("bkt", "dt/f", b"second version\n", &[]);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(m.ok("cat f"), "second version\n", "close-to-open");

    e.srv.backend.delete("bkt", "dt/g");
    std::thread::sleep(Duration::from_millis(1100));
    m.ok("echo again > g");
    assert_eq!(e.srv.backend.get("bkt", "dt/g").as_deref(), Some(&b"again\n"[..]));
    e.srv.backend.delete("bkt", "dt/g");
    std::thread::sleep(Duration::from_millis(1100));
    let err = m.err("cat g");
    assert!(err.contains("No such file or directory"), "{err}");
}

/// With `list_attrs`, `ls -l` costs one LIST per 1000 entries and no request per entry,
/// and listing again right away is served from the kernel's directory cache.
#[test]
fn ls_l_costs_one_list_per_page_and_nothing_when_warm() {
    if !can_mount() {
        return;
    }
    let e = env_with_objects("many/f", 2500);
    let m = mount(&e, "s3://bkt/many", &["list_attrs"]);
    e.srv.control.reset_counts();
    assert_eq!(m.ok("ls -l | grep -c '^-'"), "2500\n");
    let cold = e.srv.control.counts();
    assert!(cold.get("ListObjectsV2").copied().unwrap_or(0) <= 3, "one LIST per 1000 entries: {cold:?}");
    assert_eq!(cold.get("HeadObject").copied().unwrap_or(0), 0, "{cold:?}");
    assert_eq!(m.ok("ls -l | grep -c '^-'"), "2500\n");
    assert_eq!(e.srv.control.counts(), cold, "a warm ls -l makes no request");
}

/// A program creating many files in a large directory pays for a listing of it about
/// once per `negative_ttl` (renewed in the background while the creates go on), not a
/// HEAD and a LIST per new name, and every file is in the store when its close returns.
/// At the default options.
#[test]
fn creating_many_files_lists_the_directory_once() {
    if !can_mount() {
        return;
    }
    let e = env_with_objects("cr/old", 1500);
    let m = mount(&e, "s3://bkt/cr", &[]);
    e.srv.control.reset_counts();
    let settle = |lists: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while e.srv.control.count("ListObjectsV2") < lists {
            assert!(Instant::now() < deadline, "no background listing: {:?}", e.srv.control.counts());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Each miss asked HEAD + LIST; the second within negative_ttl listed one page in the
    // background: the directory's first page (which holds the place of new*).
    m.ok("echo first > first; echo second > second");
    settle(3);
    let before = e.srv.control.counts();
    let started = Instant::now();
    // One open, write, close per file (a shell redirection or dd would dup the descriptor
    // and close it once empty: a second, empty PUT).
    m.ok("python3 -c 'for i in range(1, 301): open(\"new%d\" % i, \"w\").write(\"%d\\n\" % i)'");
    let elapsed = started.elapsed();
    let after = e.srv.control.counts();
    assert_eq!(after.get("HeadObject"), before.get("HeadObject"), "a HEAD per new name: {after:?}");
    let lists = after["ListObjectsV2"] - before["ListObjectsV2"];
    let bound = 1 + (elapsed.as_secs_f64() * 2.0).ceil() as u64;
    assert!(lists <= bound, "{lists} LISTs for 300 creates in {elapsed:?} (at most {bound}): {after:?}");
    assert_eq!(after["PutObject"] - before["PutObject"], 300, "{after:?}");
    assert_eq!(e.srv.backend.get("bkt", "cr/new300").as_deref(), Some(&b"300\n"[..]));
    // Existing names are still found, and this mount's removals are seen at once.
    assert_eq!(m.ok("cat old00042 new7"), "x7\n");
    m.ok("rm new7");
    assert!(!m.sh("test -e new7").status.success());
}

/// Lookups that miss while a background listing is in flight start no other listing:
/// one (at most two pages) per directory at a time.
#[test]
fn misses_during_a_listing_start_no_second_one() {
    if !can_mount() {
        return;
    }
    let e = env_with_objects("sl/old", 1500);
    let m = mount(&e, "s3://bkt/sl", &["stat_cache_ttl=60"]);
    e.srv.control.reset_counts();
    e.srv.control.set_latency(Duration::from_millis(60));
    m.ok("for n in zz1 zz2 zz3 zz4 zz5 zz6 zz7 zz8; do test -e $n && exit 1; done; true");
    std::thread::sleep(Duration::from_millis(400));
    e.srv.control.set_latency(Duration::ZERO);
    let c = e.srv.control.counts();
    let (heads, lists) = (c["HeadObject"], c["ListObjectsV2"]);
    // Each foreground miss is a HEAD and a LIST; the rest are the background listing.
    assert!(lists - heads <= 2, "more than one background listing: {c:?}");
    assert!(heads < 8, "later misses were not answered from the listing: {c:?}");
}

/// Random 4 KiB reads of a large object fetch about what is read: no whole-object
/// download, request bytes at most twice the bytes read.
#[test]
fn random_reads_fetch_only_what_is_read() {
    if !can_mount() {
        return;
    }
    let e = env();
    let size = 64 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    e.srv.backend.put("bkt", "rr/big.bin", &data, &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    assert!(mount_cmd(&e, "s3://bkt/rr", dir.path(), &[]).arg("--metrics-addr").arg(&addr).status().unwrap().success());
    let script = format!(
        "import os, random\nfd = os.open('{}', os.O_RDONLY)\nrandom.seed(7)\nfor _ in range(100):\n    off = random.randrange(0, {size} - 4096) // 4096 * 4096\n    assert len(os.pread(fd, 4096, off)) == 4096\n",
        dir.path().join("big.bin").display()
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().unwrap();
    let body = metrics_text(&addr);
    assert!(Command::new("umount").arg(dir.path()).status().unwrap().success());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fetched: f64 = body
        .lines()
        .find(|l| l.starts_with("s3vol_store_bytes_total") && l.contains("direction=\"read\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    let read = 100.0 * 4096.0;
    assert!(fetched <= 2.0 * read, "fetched {fetched} bytes for {read} read");
}

/// `list_type=1` mounts list with ListObjects (v1), for stores without V2.
#[test]
fn list_type_1_uses_list_objects_v1() {
    if !can_mount() {
        return;
    }
    let e = env();
    for i in 0..1200 {
        e.srv.backend.put("bkt", &format!("v1/d/f{i:04}"), b"", &[]);
    }
    let m = mount(&e, "s3://bkt/v1", &["list_type=1"]);
    assert_eq!(m.ok("ls d | wc -l"), "1200\n");
    assert!(e.srv.control.count("ListObjects") >= 2);
    assert_eq!(e.srv.control.count("ListObjectsV2"), 0);
}

/// Without `list_attrs`, `ls -l` reads each object's own metadata with one HEAD; the
/// listing already told files from directories, so no LIST per entry.
#[test]
fn ls_l_reads_metadata_with_one_head_per_file() {
    if !can_mount() {
        return;
    }
    let e = env();
    for i in 0..50 {
        e.srv.backend.put("bkt", &format!("h/f{i:02}"), b"x", &[("mode", "33261")]);
    }
    e.srv.backend.put("bkt", "h/sub/inner", b"y", &[]);
    let m = mount(&e, "s3://bkt/h", &[]);
    e.srv.control.reset_counts();
    let out = m.ok("ls -l");
    assert_eq!(out.lines().filter(|l| l.starts_with("-rwxr-xr-x")).count(), 50, "{out}");
    let c = e.srv.control.counts();
    // The promise: at most one HEAD per entry (50 files, the directory `sub`), and LISTs
    // for the listing and `sub`'s lookup only, none per file.
    let (heads, lists) = (c.get("HeadObject").copied().unwrap_or(0), c.get("ListObjectsV2").copied().unwrap_or(0));
    assert!(heads <= 51, "{c:?}");
    assert!(lists <= 2, "{c:?}");
}
