//! The read cache through the filesystem: a second epoch reads from disk, the cache
//! survives its server (a successor finds it), damaged blocks are fetched again, an
//! object another client overwrote is read new after reopen, the size bound holds while
//! filling, and a full disk changes nothing for the reader.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use s3vol_fs::{Caller, Fs, MountOptions, ReadCache, ReadCacheConfig, ROOT_INO};
use s3vol_store::{CountingStore, MemoryStore, ObjectStore, PutOptions, RequestCounts};

mod common;
use common::{fs_over, until, B};

const ME: Caller = Caller { uid: 0, gid: 0, pid: 0 };
const MIB: u64 = 1 << 20;

fn pattern(seed: u64, len: u64) -> Vec<u8> {
    // Position-dependent: a block served at the wrong offset or from the wrong object
    // never reads back as right.
    (0..len).map(|i| ((i.wrapping_mul(2654435761) >> 7) ^ seed.wrapping_mul(31)) as u8).collect()
}

fn cache_cfg(dir: &Path, max_bytes: u64) -> ReadCacheConfig {
    ReadCacheConfig { dir: dir.to_path_buf(), max_bytes, min_free_permille: 0, block_size: MIB, volume: "test".into() }
}

struct World {
    mem: Arc<MemoryStore>,
    counts: RequestCounts,
    fs: Fs,
}

async fn world(files: &[(&str, u64)], cache: ReadCache) -> World {
    let mem = Arc::new(MemoryStore::with_buckets(&[B]));
    for (i, (name, len)) in files.iter().enumerate() {
        let data = Bytes::from(pattern(i as u64, *len));
        mem.put_object(B, &format!("vol/{name}"), data, &PutOptions::default()).await.unwrap();
    }
    over(mem, cache)
}

fn over(mem: Arc<MemoryStore>, cache: ReadCache) -> World {
    let counting = Arc::new(CountingStore::new(mem.clone(), "t"));
    let counts = counting.counts();
    let fs = fs_over(counting, MountOptions::default()).with_read_cache(cache);
    World { mem, counts, fs }
}

/// Reads `name` whole, in 128 KiB reads as the kernel sends them.
async fn read_all(fs: &Fs, name: &str) -> Vec<u8> {
    let a = fs.lookup(ROOT_INO, name).await.unwrap();
    let fh = fs.open(a.ino, libc::O_RDONLY, ME).await.unwrap();
    let mut out = Vec::new();
    loop {
        let got = fs.read(fh, out.len() as u64, 128 * 1024).await.unwrap();
        if got.is_empty() {
            break;
        }
        out.extend_from_slice(&got);
    }
    fs.release(fh).await.unwrap();
    out
}

/// Waits until the cache wrote at least `bytes` of blocks to `dir`.
async fn settled(cache: &ReadCache, dir: &Path, bytes: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(cache.stats().bytes >= bytes && disk_bytes(dir) >= bytes) {
        assert!(
            std::time::Instant::now() < deadline,
            "the cache holds {} bytes on disk, {:?}, want {bytes}",
            disk_bytes(dir),
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Bytes of block files under `dir` (what the disk holds, not what the index believes).
fn disk_bytes(dir: &Path) -> u64 {
    block_files(dir).iter().map(|p| p.metadata().map(|m| m.len()).unwrap_or(0)).sum()
}

fn block_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for s in std::fs::read_dir(dir.join("blocks")).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(s.path()).into_iter().flatten().flatten() {
            out.push(f.path());
        }
    }
    out
}

/// Epoch 2 of a dataset (files of several sizes, a block-unaligned tail) reads every
/// byte from the cache: no GET at all, the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_epoch_reads_from_disk_with_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ReadCache::open(cache_cfg(dir.path(), 256 * MIB)).unwrap();
    let files = [("a", 5 * MIB + 12345), ("b", 100 * 1024), ("c", 3 * MIB)];
    let w = world(&files, cache.clone()).await;
    for (i, (name, len)) in files.iter().enumerate() {
        assert_eq!(read_all(&w.fs, name).await, pattern(i as u64, *len), "epoch 1 {name}");
    }
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    settled(&cache, dir.path(), total).await;
    let gets = w.counts.get("GetObject");
    let before = cache.stats();
    // Past the revalidation window, so each open asks the store (close-to-open) and the
    // cache is keyed by what that HEAD said.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (i, (name, len)) in files.iter().enumerate() {
        assert_eq!(read_all(&w.fs, name).await, pattern(i as u64, *len), "epoch 2 {name}");
    }
    assert_eq!(w.counts.get("GetObject"), gets, "epoch 2 went to the store");
    let st = cache.stats();
    assert_eq!(st.hit_bytes - before.hit_bytes, total, "{st:?}");
    assert_eq!(st.miss_bytes, before.miss_bytes, "{st:?}");
}

/// A successor server (a handover, a crash, an upgrade) finds the cache its predecessor
/// filled; while the predecessor still holds it, the successor neither reads nor writes
/// it (two servers never write one cache) and takes it over once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_finds_the_cache_and_waits_for_its_predecessor() {
    let dir = tempfile::tempdir().unwrap();
    let first = ReadCache::open(cache_cfg(dir.path(), 64 * MIB)).unwrap();
    let w = world(&[("data", 6 * MIB)], first.clone()).await;
    read_all(&w.fs, "data").await;
    settled(&first, dir.path(), 6 * MIB).await;

    let second = ReadCache::open(cache_cfg(dir.path(), 64 * MIB)).unwrap();
    assert!(!second.is_owner(), "the predecessor still holds the cache");
    let w2 = over(w.mem.clone(), second.clone());
    let gets = w2.counts.get("GetObject");
    assert_eq!(read_all(&w2.fs, "data").await, pattern(0, 6 * MIB));
    assert!(w2.counts.get("GetObject") > gets, "read from a cache it does not own");
    assert_eq!(second.stats().hit_bytes, 0);

    drop(w);
    drop(first);
    until("the successor to take the cache over", || {
        // Any use starts a takeover attempt once one is due.
        second.stats();
        let _ = futures::executor::block_on(
            second.get(&s3vol_fs::ObjectVersion { key: String::new(), etag: "x".into(), size: 1 }, 0),
        );
        second.is_owner()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let gets = w2.counts.get("GetObject");
    assert_eq!(read_all(&w2.fs, "data").await, pattern(0, 6 * MIB));
    assert_eq!(w2.counts.get("GetObject"), gets, "the successor did not use its predecessor's blocks");
    assert_eq!(second.stats().hit_bytes, 6 * MIB, "every byte of the second read from the cache");
}

/// A block truncated or altered on disk is detected, dropped and fetched again; the
/// reader gets the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_block_is_fetched_again_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ReadCache::open(cache_cfg(dir.path(), 64 * MIB)).unwrap();
    let w = world(&[("data", 4 * MIB)], cache.clone()).await;
    read_all(&w.fs, "data").await;
    settled(&cache, dir.path(), 4 * MIB).await;
    let files = block_files(dir.path());
    assert_eq!(files.len(), 4);
    // One cut short (a crash mid-write), one with a byte flipped (a bad disk).
    let raw = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &raw[..raw.len() / 2]).unwrap();
    let mut raw = std::fs::read(&files[1]).unwrap();
    let at = raw.len() - 1000;
    raw[at] ^= 0x40;
    std::fs::write(&files[1], &raw).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let gets = w.counts.get("GetObject");
    assert_eq!(read_all(&w.fs, "data").await, pattern(0, 4 * MIB), "wrong bytes from a damaged cache");
    assert!(w.counts.get("GetObject") > gets, "the damaged blocks were not fetched again");
    let st = cache.stats();
    assert_eq!(st.dropped_blocks, 2, "{st:?}");
}

/// Another client overwrites an object (same size): the next open reads the new bytes,
/// never the cached blocks of the old version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_overwritten_elsewhere_is_read_new_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ReadCache::open(cache_cfg(dir.path(), 64 * MIB)).unwrap();
    let w = world(&[("data", 3 * MIB)], cache.clone()).await;
    read_all(&w.fs, "data").await;
    settled(&cache, dir.path(), 3 * MIB).await;
    let new = pattern(99, 3 * MIB);
    w.mem.put_object(B, "vol/data", Bytes::from(new.clone()), &PutOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(read_all(&w.fs, "data").await == new, "the old version was served from the cache");
    // And this mount's own overwrite: read back at once (within the revalidation window).
    let a = w.fs.lookup(ROOT_INO, "data").await.unwrap();
    let fh = w.fs.open(a.ino, libc::O_WRONLY | libc::O_TRUNC, ME).await.unwrap();
    let mine = pattern(7, 3 * MIB);
    w.fs.write(fh, 0, &mine).await.unwrap();
    w.fs.release(fh).await.unwrap();
    assert!(read_all(&w.fs, "data").await == mine, "this mount's own write was answered from the cache");
}

/// Filling a cache much smaller than the data: what the disk holds never exceeds the
/// bound, checked while the blocks are written, and the least recently used go first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_bound_holds_while_filling() {
    let dir = tempfile::tempdir().unwrap();
    let bound = 8 * MIB + 8 * 64;
    let cache = ReadCache::open(cache_cfg(dir.path(), bound)).unwrap();
    let files: Vec<(String, u64)> = (0..6).map(|i| (format!("f{i}"), 5 * MIB)).collect();
    let refs: Vec<(&str, u64)> = files.iter().map(|(n, l)| (n.as_str(), *l)).collect();
    let w = Arc::new(world(&refs, cache.clone()).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (dir, stop) = (dir.path().to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(disk_bytes(&dir));
            }
            most
        })
    };
    let mut readers = Vec::new();
    for (i, (name, len)) in files.iter().cloned().enumerate() {
        let w = w.clone();
        readers.push(tokio::spawn(async move {
            assert_eq!(read_all(&w.fs, &name).await, pattern(i as u64, len), "{name}");
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    until("the writes to finish", || cache.stats().bytes == disk_bytes(dir.path())).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().unwrap();
    let st = cache.stats();
    assert!(most <= bound, "the disk held {most} bytes, bound {bound}");
    assert!(st.peak_bytes <= bound, "{st:?}");
    assert!(st.evicted_blocks >= 20, "{st:?}");
    assert!(most > bound / 2, "the cache never filled ({most} bytes): the test proves nothing");
}

/// The cache's filesystem fills up (a 3 MiB tmpfs under a 64 MiB cache): writes fail
/// with ENOSPC, the cache turns itself off, and every read still returns the right bytes
/// with no error. Needs root (it mounts the tmpfs), as CI runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_disk_changes_nothing_for_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m,mode=0700", "s3vol-test", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "mounting a small tmpfs (needs root): {}", String::from_utf8_lossy(&out.stderr));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    let cache = ReadCache::open(cache_cfg(&dir.path().join("vol"), 64 * MIB)).unwrap();
    let files: Vec<(String, u64)> = (0..4).map(|i| (format!("f{i}"), 3 * MIB + 777)).collect();
    let refs: Vec<(&str, u64)> = files.iter().map(|(n, l)| (n.as_str(), *l)).collect();
    let w = world(&refs, cache.clone()).await;
    for _epoch in 0..2 {
        for (i, (name, len)) in files.iter().enumerate() {
            assert!(read_all(&w.fs, name).await == pattern(i as u64, *len), "wrong bytes in {name}");
        }
    }
    until("the disk to refuse a write", || cache.stats().write_errors > 0).await;
    assert!(disk_bytes(&dir.path().join("vol")) <= 3 * MIB);

    // A floor of free space the disk is already below: nothing is written at all.
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = cache_cfg(dir2.path(), 64 * MIB);
    cfg.min_free_permille = 999;
    let cache = ReadCache::open(cfg).unwrap();
    let w = over(w.mem.clone(), cache.clone());
    assert!(read_all(&w.fs, "f1").await == pattern(1, 3 * MIB + 777));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(disk_bytes(dir2.path()), 0, "cached below the free-space floor");
    assert_eq!(cache.stats().write_errors, 0);
}

/// With `open_cache` longer than an epoch (a dataset class), epoch 2 asks the store
/// nothing at all: no HEAD at open, no GET; at the default every open asks once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_open_cache_the_second_epoch_makes_no_request() {
    for (open_cache, heads_per_open) in [("3600", 0), ("1", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let cache = ReadCache::open(cache_cfg(dir.path(), 64 * MIB)).unwrap();
        let mem = Arc::new(MemoryStore::with_buckets(&[B]));
        for i in 0..5u64 {
            mem.put_object(B, &format!("vol/f{i}"), Bytes::from(pattern(i, 300 * 1024)), &PutOptions::default())
                .await
                .unwrap();
        }
        let counting = Arc::new(CountingStore::new(mem, "t"));
        let counts = counting.counts();
        let options = MountOptions::parse(&[format!("open_cache={open_cache}")]).unwrap();
        let fs = fs_over(counting, options).with_read_cache(cache.clone());
        for i in 0..5u64 {
            assert_eq!(read_all(&fs, &format!("f{i}")).await, pattern(i, 300 * 1024));
        }
        settled(&cache, dir.path(), 5 * 300 * 1024).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let total = counts.total();
        for i in 0..5u64 {
            assert_eq!(read_all(&fs, &format!("f{i}")).await, pattern(i, 300 * 1024));
        }
        assert_eq!(
            counts.total() - total,
            5 * heads_per_open,
            "open_cache={open_cache}: requests in epoch 2: {:?}",
            counts.snapshot()
        );
        // A file this mount wrote: its version is asked once, then its reads are cached.
        let fh = fs.create(ROOT_INO, "mine", 0o644, ME).await.unwrap().1;
        fs.write(fh, 0, &pattern(9, 2 * MIB)).await.unwrap();
        fs.release(fh).await.unwrap();
        assert_eq!(read_all(&fs, "mine").await, pattern(9, 2 * MIB));
        settled(&cache, dir.path(), 5 * 300 * 1024 + 2 * MIB).await;
        // The first read may already find a block it wrote a moment before (its first,
        // exact read and the prefetch after it share block 0): count the second read only.
        let before = cache.stats().hit_bytes;
        assert_eq!(read_all(&fs, "mine").await, pattern(9, 2 * MIB));
        assert_eq!(cache.stats().hit_bytes - before, 2 * MIB, "open_cache={open_cache}: own file not cached");
    }
}
