//! Attributes of listed files are fetched in the background while a directory is read:
//! the lookups that follow (`ls -l`, `find`, `du`) find them, at most 32 HEADs are in
//! flight, closing the directory cancels what has not started, and this mount's own
//! changes are never answered from a fetch made before them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use s3vol_fs::{Caller, Errno, Fs, MountOptions, ROOT_INO};
use s3vol_store::{CountingStore, FaultyStore, MemoryStore, ObjectStore, PutOptions};

mod common;
use common::{fs_over, until, B};

const ME: Caller = Caller { uid: 1000, gid: 1000, pid: 0 };

async fn fill(store: &MemoryStore, n: usize) {
    for i in 0..n {
        let opts = PutOptions {
            metadata: [("mode".to_string(), (0o100600 + (i % 2) * 0o40).to_string())].into(),
            ..Default::default()
        };
        store.put_object(B, &format!("vol/d/f{i:04}"), Bytes::from(vec![b'x'; i]), &opts).await.unwrap();
    }
}

/// Reads the whole directory through `fh` (left open, as `ls` keeps it while it stats).
async fn read_names(fs: &Fs, ino: u64, fh: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let page = fs.readdir(ino, fh, off).await.unwrap();
        if page.is_empty() {
            return out;
        }
        for (_, next, e) in page {
            off = next;
            if e.name != "." && e.name != ".." {
                out.push(e.name);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_after_a_listing_find_the_attributes_already_fetched() {
    let mem = Arc::new(MemoryStore::with_buckets(&[B]));
    fill(&mem, 300).await;
    let counting = Arc::new(CountingStore::new(mem.clone(), "t"));
    let counts = counting.counts();
    let fs = fs_over(counting, MountOptions::default());
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    let before = counts.get("HeadObject");

    let fh = fs.opendir(d.ino).await.unwrap();
    let names = read_names(&fs, d.ino, fh).await;
    assert_eq!(names.len(), 300);
    until("300 background HEADs", || counts.get("HeadObject") - before >= 300).await;
    let listed = counts.get("ListObjectsV2");

    for (i, name) in names.iter().enumerate() {
        let a = fs.lookup(d.ino, name).await.unwrap();
        // The object's own metadata, not a listing's defaults.
        assert_eq!(a.perm, 0o600 + (i as u32 % 2) * 0o40, "{name}");
        assert_eq!(a.size, i as u64, "{name}");
    }
    fs.releasedir(d.ino, fh);
    assert_eq!(counts.get("HeadObject") - before, 300, "one HEAD per file, none by the lookups");
    assert_eq!(counts.get("ListObjectsV2"), listed, "no LIST for names the listing showed as files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_32_in_flight_and_closing_the_directory_cancels_the_rest() {
    let mem = Arc::new(MemoryStore::with_buckets(&[B]));
    fill(&mem, 300).await;
    let slow = Arc::new(FaultyStore::new(mem.clone()));
    let fs = fs_over(slow.clone(), MountOptions::default());
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    let before = slow.heads_done();
    slow.gate_heads();

    let fh = fs.opendir(d.ino).await.unwrap();
    assert_eq!(read_names(&fs, d.ino, fh).await.len(), 300);
    until("32 HEADs in flight", || slow.heads_waiting() == 32).await;
    // Give any 33rd request the chance to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(slow.heads_waiting(), 32, "prefetch is bounded");

    fs.releasedir(d.ino, fh);
    slow.admit_heads(10_000);
    until("the running HEADs to finish", || slow.heads_waiting() == 0 && slow.heads_done() - before >= 32).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(slow.heads_done() - before, 32, "what had not started when the directory closed was not fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_does_not_wait_for_a_fetch_that_has_not_started() {
    let mem = Arc::new(MemoryStore::with_buckets(&[B]));
    fill(&mem, 300).await;
    let slow = Arc::new(FaultyStore::new(mem.clone()));
    let fs = Arc::new(fs_over(slow.clone(), MountOptions::default()));
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    slow.gate_heads();
    let fh = fs.opendir(d.ino).await.unwrap();
    read_names(&fs, d.ino, fh).await;
    until("32 HEADs in flight", || slow.heads_waiting() == 32).await;

    // f0200 is queued behind the 32 in flight: its lookup asks the store itself, so it
    // needs one permit, not 33.
    let lookup = tokio::spawn({
        let fs = fs.clone();
        async move { fs.lookup(d.ino, "f0200").await }
    });
    until("the lookup's own HEAD", || slow.heads_waiting() == 33).await;
    slow.admit_heads(1);
    // Whichever waiting HEAD got the permit, at most all 33 need one each.
    slow.admit_heads(32);
    let a = tokio::time::timeout(Duration::from_secs(20), lookup).await.unwrap().unwrap().unwrap();
    assert_eq!(a.size, 200);
    fs.releasedir(d.ino, fh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_mounts_changes_are_never_answered_from_an_older_fetch() {
    let mem = Arc::new(MemoryStore::with_buckets(&[B]));
    fill(&mem, 40).await;
    let counting = Arc::new(CountingStore::new(mem.clone(), "t"));
    let counts = counting.counts();
    let fs = fs_over(counting, MountOptions::default());
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    let before = counts.get("HeadObject");
    let fh = fs.opendir(d.ino).await.unwrap();
    read_names(&fs, d.ino, fh).await;
    until("40 background HEADs", || counts.get("HeadObject") - before >= 40).await;

    // Removed by this mount: gone, not served from the fetch.
    fs.unlink(d.ino, "f0005").await.unwrap();
    assert_eq!(fs.lookup(d.ino, "f0005").await.unwrap_err(), Errno::ENOENT);
    // Removed and written again: the new size.
    fs.unlink(d.ino, "f0007").await.unwrap();
    let (_, wfh) = fs.create(d.ino, "f0007", 0o644, ME).await.unwrap();
    fs.write(wfh, 0, b"new").await.unwrap();
    fs.release(wfh).await.unwrap();
    assert_eq!(fs.lookup(d.ino, "f0007").await.unwrap().size, 3);
    // Renamed over: the source's content under the target's name.
    fs.rename(d.ino, "f0030", d.ino, "f0009", 0).await.unwrap();
    assert_eq!(fs.lookup(d.ino, "f0009").await.unwrap().size, 30);
    assert_eq!(fs.lookup(d.ino, "f0030").await.unwrap_err(), Errno::ENOENT);
    fs.releasedir(d.ino, fh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_prefetch_when_the_listing_carries_attributes_or_nothing_is_cached() {
    for opts in ["list_attrs", "stat_cache_ttl=0"] {
        let mem = Arc::new(MemoryStore::with_buckets(&[B]));
        fill(&mem, 50).await;
        let counting = Arc::new(CountingStore::new(mem.clone(), "t"));
        let counts = counting.counts();
        let fs = fs_over(counting, MountOptions::parse(&[opts]).unwrap());
        let d = fs.lookup(ROOT_INO, "d").await.unwrap();
        let before = counts.get("HeadObject");
        let fh = fs.opendir(d.ino).await.unwrap();
        read_names(&fs, d.ino, fh).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(counts.get("HeadObject"), before, "{opts}: no HEAD while listing");
        fs.releasedir(d.ino, fh);
    }
}
