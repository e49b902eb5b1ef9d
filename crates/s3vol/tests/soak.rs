//! Load and soak (issue 13 §4): 32 writers and 32 readers on one real mount of the
//! `s3vol` binary at its default options, for a minute (`cargo test`) or ten
//! (`S3VOL_SOAK_SECS=600`, what `make reliability` sets). No operation may fail or return
//! wrong bytes; after warm-up the mount process's RSS stays within its memory budget
//! (512 MiB) plus its fixed cost and stops growing, and its descriptors and threads do
//! not grow; the store's request counts match the files moved. Needs root and /dev/fuse.

use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use s3vol_testkit::TestS3;

mod standalone;

const MIB: usize = 1 << 20;
const WRITERS: usize = 32;
const READERS: usize = 32;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 / 4096) % 251) as u8).collect()
}

/// One sample of the mount process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    rss_mib: u64,
    fds: usize,
    threads: u64,
}

fn sample(pid: u32, start: Instant) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Sample {
        at: start.elapsed().as_secs_f64(),
        rss_mib: field("VmRSS:") / 1024,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0),
        threads: field("Threads:"),
    }
}

#[test]
fn thirty_two_writers_and_readers_for_a_minute_hold_memory_fds_and_threads_flat() {
    if !standalone::can_mount("the soak test's mounts") {
        return;
    }
    let secs: u64 = std::env::var("S3VOL_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let srv = rt.block_on(TestS3::start()).unwrap();
    srv.backend.create_bucket("bkt");
    for r in 0..READERS {
        srv.backend.put("bkt", &format!("r/{r:02}"), &pattern(r as u64, 8 * MIB), &[]);
    }
    let m = standalone::mount(&srv);
    let mnt = m.mnt.clone();
    let pid = m.child.id();
    std::fs::create_dir(mnt.join("w")).unwrap();
    srv.control.reset_counts();

    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let (written, files_written, read, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let (mnt, written, files, errors) = (mnt.clone(), written.clone(), files_written.clone(), errors.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while Instant::now() < end {
                // 1 to 24 MiB: single PUTs and multipart uploads alike, each file rewritten.
                let size = (1 + (w as u64 * 7 + n * 5) % 24) as usize * MIB;
                let data = pattern(1000 + w as u64 * 100 + n, size);
                let res = std::fs::File::create(mnt.join(format!("w/{w:02}"))).and_then(|mut f| {
                    f.write_all(&data)?;
                    nix::unistd::close(f.into_raw_fd()).map_err(std::io::Error::from)
                });
                match res {
                    Ok(()) => {
                        written.fetch_add(size as u64, Ordering::Relaxed);
                        files.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("writer {w}: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
        }));
    }
    for r in 0..READERS {
        let (mnt, read, errors) = (mnt.clone(), read.clone(), errors.clone());
        threads.push(std::thread::spawn(move || {
            let want = pattern(r as u64, 8 * MIB);
            while Instant::now() < end {
                match std::fs::read(mnt.join(format!("r/{r:02}"))) {
                    Ok(got) if got == want => {
                        read.fetch_add(got.len() as u64, Ordering::Relaxed);
                    }
                    Ok(got) => {
                        eprintln!("reader {r}: wrong bytes ({} read)", got.len());
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("reader {r}: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut samples = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(2));
        samples.push(sample(pid, start));
    }
    for t in threads {
        t.join().unwrap();
    }
    samples.push(sample(pid, start));

    // Warm-up: the first quarter (buffers and connections come up to their working set).
    let warm: Vec<_> = samples.iter().filter(|s| s.at <= secs as f64 / 4.0).copied().collect();
    let after: Vec<_> = samples.iter().filter(|s| s.at > secs as f64 / 4.0).copied().collect();
    let max = |v: &[Sample], f: fn(&Sample) -> u64| v.iter().map(f).max().unwrap_or(0);
    let warm_rss = max(&warm, |s| s.rss_mib);
    let peak_rss = max(&after, |s| s.rss_mib);
    let last = *samples.last().unwrap();
    let (warm_fds, warm_threads) = (max(&warm, |s| s.fds as u64), max(&warm, |s| s.threads));
    let counts = srv.control.counts();
    let puts =
        counts.get("PutObject").copied().unwrap_or(0) + counts.get("CompleteMultipartUpload").copied().unwrap_or(0);
    let files = files_written.load(Ordering::Relaxed);
    let line = format!(
        "soak {secs} s, {WRITERS} writers + {READERS} readers: {} MiB written in {files} files, {} MiB read, {} errors; \
         RSS warm {warm_rss} MiB, peak after warm-up {peak_rss} MiB, end {} MiB; fds warm {warm_fds}, end {}; threads warm {warm_threads}, end {}; \
         objects completed {puts}",
        written.load(Ordering::Relaxed) >> 20,
        read.load(Ordering::Relaxed) >> 20,
        errors.load(Ordering::Relaxed),
        last.rss_mib,
        last.fds,
        last.threads,
    );
    println!("{line}");
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak.txt"), format!("{line}\n"));
    assert_eq!(errors.load(Ordering::Relaxed), 0, "{line}");
    assert!(files > WRITERS as u64 && read.load(Ordering::Relaxed) > 0, "nothing moved: {line}");
    // Within the budget (512 MiB) plus the process's fixed cost, and not climbing.
    assert!(peak_rss <= 512 + 128, "RSS beyond the memory budget: {line}\n{samples:?}");
    assert!(peak_rss <= warm_rss.max(64) * 2, "RSS kept growing after warm-up: {line}\n{samples:?}");
    assert!(last.fds as u64 <= warm_fds + 16, "descriptors grew: {line}\n{samples:?}");
    assert!(last.threads <= warm_threads + 4, "threads grew: {line}\n{samples:?}");
    // Every file closed is one completed object, and nothing else was completed.
    assert_eq!(puts, files, "store requests do not match the files written: {counts:?}");
}
