//! The read cache through a real FUSE mount of the `s3vol` binary: a file read twice
//! (page cache dropped between) is fetched from the store once, the Prometheus output
//! shows the cache's hits, size, evictions and dropped blocks, and its files are private
//! to root (0700 directories, 0600 blocks).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use s3vol_testkit::TestS3;

mod standalone;

use standalone::metrics_text;

/// The value of the first sample of `name` whose labels contain `labels`.
fn sample(body: &str, name: &str, labels: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{body}"))
}

fn drop_page_cache() {
    assert!(Command::new("sh").args(["-c", "sync; echo 3 > /proc/sys/vm/drop_caches"]).status().unwrap().success());
}

#[test]
fn a_file_read_twice_is_fetched_once_and_the_cache_is_private() {
    if !standalone::can_mount("read cache mount tests") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let srv = rt.block_on(TestS3::start()).unwrap();
    srv.backend.create_bucket("bkt");
    let size = 8usize << 20;
    let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
    srv.backend.put("bkt", "data.bin", &data, &[]);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("rc");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["mount", "s3://bkt"])
        .arg(dir.path())
        .args(["--endpoint", &srv.endpoint(), "--metrics-addr", &addr, "-o"])
        .arg(format!("read_cache_size=64,read_cache_dir={}", cache_dir.display()))
        .env("AWS_ACCESS_KEY_ID", s3vol_testkit::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3vol_testkit::SECRET_KEY)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount failed");
    let file = dir.path().join("data.bin");
    let first = std::fs::read(&file).unwrap();
    // The blocks are written in the background; then a fresh open (past the 1 s
    // revalidation) with the kernel's page cache dropped must come from the cache.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop_page_cache();
    // What the first read cost (the kernel's read-ahead may read a block twice, the
    // second time from the cache already): the second read must add no store bytes and
    // exactly its own size in hits.
    let before = metrics_text(&addr);
    let second = std::fs::read(&file).unwrap();
    let body = metrics_text(&addr);
    assert!(Command::new("umount").arg(dir.path()).status().unwrap().success());
    assert!(first == data && second == data, "wrong bytes through the mount");
    let fetched = |b: &str| sample(b, "s3vol_store_bytes_total", "direction=\"read\"");
    assert_eq!(fetched(&body), fetched(&before), "the second read went to the store");
    let hits = |b: &str| sample(b, "s3vol_read_cache_bytes_total", "result=\"hit\"");
    assert_eq!(hits(&body) - hits(&before), size as f64, "{body}");
    assert!(sample(&body, "s3vol_read_cache_size_bytes", "volume=") >= size as f64);
    assert_eq!(sample(&body, "s3vol_read_cache_evictions_total", "volume="), 0.0);
    assert_eq!(sample(&body, "s3vol_read_cache_dropped_blocks_total", "volume="), 0.0);

    // Root's only: the directories 0700, every block 0600 (a pod never reads it).
    let mut blocks = 0;
    for d in [cache_dir.clone(), cache_dir.join("blocks")] {
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700, "{}", d.display());
    }
    for sub in std::fs::read_dir(cache_dir.join("blocks")).unwrap().flatten() {
        assert_eq!(sub.metadata().unwrap().permissions().mode() & 0o777, 0o700, "{}", sub.path().display());
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600, "{}", f.path().display());
            blocks += 1;
        }
    }
    assert_eq!(blocks, 8, "one block per MiB, kept after the unmount for the next mount");
    assert_eq!(std::fs::metadata(cache_dir.join("lock")).unwrap().permissions().mode() & 0o777, 0o600);
}
