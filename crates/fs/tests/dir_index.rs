//! Lookups answered from what a directory listing showed: requests counted on the
//! in-memory store.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use s3vol_fs::{Caller, Errno, Fs, FsConfig, MountOptions, ROOT_INO};
use s3vol_store::{CountingStore, MemoryStore, ObjectStore, PutOptions, RequestCounts};

const B: &str = "bkt";
const ME: Caller = Caller { uid: 1000, gid: 1000, pid: 0 };

async fn mount(existing: usize, options: MountOptions) -> (Arc<MemoryStore>, RequestCounts, Fs) {
    let mem = Arc::new(MemoryStore::with_buckets(&[B]));
    for i in 0..existing {
        mem.put_object(B, &format!("vol/old{i:05}"), Bytes::from_static(b"x"), &PutOptions::default()).await.unwrap();
    }
    mem.put_object(B, "vol/sub/inner", Bytes::from_static(b"y"), &PutOptions::default()).await.unwrap();
    let counting = Arc::new(CountingStore::new(mem.clone(), "test"));
    let counts = counting.counts();
    let fs = Fs::new(
        counting,
        FsConfig { bucket: B.into(), prefix: "vol/".into(), options, capacity: None, hard_quota: false },
    );
    (mem, counts, fs)
}

/// Waits for the background listing missed lookups start (`lists` LIST requests in all).
async fn settle(counts: &RequestCounts, lists: u64) {
    for _ in 0..200 {
        if counts.get("ListObjectsV2") >= lists {
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("background listing did not run: {:?}", counts.snapshot());
}

async fn create_file(fs: &Fs, name: &str) {
    assert_eq!(fs.lookup(ROOT_INO, name).await.unwrap_err(), Errno::ENOENT, "{name}");
    let (_, fh) = fs.create(ROOT_INO, name, 0o644, ME).await.unwrap();
    fs.write(fh, 0, &[7u8; 4096]).await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn creating_many_files_costs_one_listing_not_a_lookup_each() {
    // 1500 objects: the directory has two pages. Default options (negative_ttl 1 s).
    let (mem, counts, fs) = mount(1500, MountOptions::default()).await;
    create_file(&fs, "new00000").await;
    create_file(&fs, "new00001").await;
    // Each miss asked HEAD + LIST; the second within negative_ttl listed the directory's
    // first page in the background; it covers the names that follow.
    settle(&counts, 3).await;
    let before = counts.snapshot();
    let started = std::time::Instant::now();
    for i in 2..200 {
        create_file(&fs, &format!("new{i:05}")).await;
        // A storm longer than negative_ttl: the range is renewed before it expires.
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    let elapsed = started.elapsed();
    let after = counts.snapshot();
    assert!(elapsed > Duration::from_secs(1), "the storm outlasts negative_ttl: {elapsed:?}");
    assert_eq!(after.get("HeadObject"), before.get("HeadObject"), "no HEAD per new name: {after:?}");
    // At most one background page per half negative_ttl, never a LIST per name.
    let lists = after["ListObjectsV2"] - before["ListObjectsV2"];
    let bound = 1 + (elapsed.as_secs_f64() * 2.0).ceil() as u64;
    assert!((1..=bound).contains(&lists), "{lists} LISTs in {elapsed:?} (at most {bound}): {after:?}");
    assert_eq!(after["PutObject"] - before["PutObject"], 198, "{after:?}");
    for i in 0..200 {
        assert!(mem.head_object(B, &format!("vol/new{i:05}")).await.is_ok(), "new{i:05} in the store");
    }

    // Names the listing showed are found: a plain object with a HEAD alone, a directory
    // (an implicit one here) as a directory.
    let heads = counts.get("HeadObject");
    let lists = counts.get("ListObjectsV2");
    let old = fs.lookup(ROOT_INO, "old00777").await.unwrap();
    assert_eq!(old.size, 1);
    assert_eq!((counts.get("HeadObject"), counts.get("ListObjectsV2")), (heads + 1, lists));
    let sub = fs.lookup(ROOT_INO, "sub").await.unwrap();
    assert_eq!(sub.kind, s3vol_fs::FileKind::Dir);

    // This mount's own removals and renames keep the listing true.
    fs.unlink(ROOT_INO, "new00003").await.unwrap();
    assert_eq!(fs.lookup(ROOT_INO, "new00003").await.unwrap_err(), Errno::ENOENT);
    fs.rename(ROOT_INO, "new00004", ROOT_INO, "renamed", 0).await.unwrap();
    assert_eq!(fs.lookup(ROOT_INO, "new00004").await.unwrap_err(), Errno::ENOENT);
    assert_eq!(fs.lookup(ROOT_INO, "renamed").await.unwrap().size, 4096);
    let d = fs.mkdir(ROOT_INO, "made", 0o755, ME).await.unwrap();
    fs.forget(d.ino, 1);
    assert_eq!(fs.lookup(ROOT_INO, "made").await.unwrap().kind, s3vol_fs::FileKind::Dir);
}

/// Attributes are cached for a minute, but "no such name" only for `negative_ttl`: names
/// another client adds are found by name once it passes, whatever `stat_cache_ttl` is.
#[tokio::test]
async fn names_other_clients_add_show_once_negative_ttl_passes() {
    let options = MountOptions { negative_ttl: Duration::from_millis(400), ..MountOptions::default() };
    assert_eq!(options.stat_cache_ttl, Duration::from_secs(60));
    let (mem, counts, fs) = mount(10, options).await;
    assert_eq!(fs.lookup(ROOT_INO, "missing").await.unwrap_err(), Errno::ENOENT);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(counts.get("ListObjectsV2"), 1, "with a short negative_ttl one miss alone does not list");
    assert_eq!(fs.lookup(ROOT_INO, "elsewhere").await.unwrap_err(), Errno::ENOENT);
    settle(&counts, 3).await;
    mem.put_object(B, "vol/elsewhere", Bytes::from_static(b"z"), &PutOptions::default()).await.unwrap();
    mem.put_object(B, "vol/newdir/x", Bytes::from_static(b"z"), &PutOptions::default()).await.unwrap();
    // Within negative_ttl the listing is trusted (like any negative cache entry)...
    assert_eq!(fs.lookup(ROOT_INO, "newdir").await.unwrap_err(), Errno::ENOENT);
    // ...and once it passes, the store is asked again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fs.lookup(ROOT_INO, "elsewhere").await.unwrap().size, 1);
    assert_eq!(fs.lookup(ROOT_INO, "newdir").await.unwrap().kind, s3vol_fs::FileKind::Dir);
}

/// `negative_ttl=0`: a miss is never believed, even with attributes cached.
#[tokio::test]
async fn with_a_zero_negative_ttl_every_miss_asks_the_store() {
    let options = MountOptions { negative_ttl: Duration::ZERO, ..MountOptions::default() };
    let (mem, counts, fs) = mount(10, options).await;
    for _ in 0..3 {
        assert_eq!(fs.lookup(ROOT_INO, "soon").await.unwrap_err(), Errno::ENOENT);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(counts.get("ListObjectsV2"), 3, "no background listing, one probe per miss: {:?}", counts.snapshot());
    mem.put_object(B, "vol/soon", Bytes::from_static(b"z"), &PutOptions::default()).await.unwrap();
    assert_eq!(fs.lookup(ROOT_INO, "soon").await.unwrap().size, 1, "seen at once");
}

#[tokio::test]
async fn with_no_metadata_cache_every_lookup_asks_the_store() {
    let (mem, counts, fs) = mount(10, MountOptions { stat_cache_ttl: Duration::ZERO, ..MountOptions::default() }).await;
    assert_eq!(fs.lookup(ROOT_INO, "later").await.unwrap_err(), Errno::ENOENT);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(counts.get("ListObjectsV2"), 1, "no background listing with stat_cache_ttl=0");
    mem.put_object(B, "vol/later", Bytes::from_static(b"z"), &PutOptions::default()).await.unwrap();
    assert_eq!(fs.lookup(ROOT_INO, "later").await.unwrap().size, 1);
}
