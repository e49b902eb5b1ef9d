//! A successor `Fs` serving what its predecessor handed the kernel, from the predecessor's
//! journal alone: node ids resolve to the same files, handles keep working, and a writer
//! whose content died with the predecessor fails with EIO instead of losing it silently.

use std::sync::Arc;

use s3vol_fs::{Caller, Errno, Fs, FsConfig, MemoryJournal, MountOptions, ROOT_INO};
use s3vol_store::{collect_body, MemoryStore, ObjectStore};

const B: &str = "bkt";
const ME: Caller = Caller { uid: 0, gid: 0, pid: 0 };

fn fs(store: &Arc<MemoryStore>) -> Fs {
    let cfg = FsConfig {
        bucket: B.into(),
        prefix: "v/".into(),
        options: MountOptions::default(),
        capacity: None,
        hard_quota: false,
    };
    Fs::new(store.clone(), cfg)
}

async fn object(store: &MemoryStore, key: &str) -> Option<Vec<u8>> {
    let r = store.get_object(B, key, None).await.ok()?;
    Some(collect_body(r.body).await.unwrap().to_vec())
}

#[tokio::test]
async fn a_successor_serves_the_predecessors_ids_and_handles() {
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    let journal = Arc::new(MemoryJournal::default());
    let old = fs(&store).journaled(journal.clone());

    let dir = old.mkdir(ROOT_INO, "d", 0o755, ME).await.unwrap();
    let (f, wfh) = old.create(dir.ino, "done.txt", 0o644, ME).await.unwrap();
    old.write(wfh, 0, b"stored ").await.unwrap();
    old.flush(wfh).await.unwrap(); // clean: everything it wrote is in the store
    let rfh = old.open(f.ino, libc::O_RDONLY, ME).await.unwrap();
    let (lost, lost_fh) = old.create(dir.ino, "unflushed.txt", 0o644, ME).await.unwrap();
    old.write(lost_fh, 0, b"only in the dead server's memory").await.unwrap();
    let dfh = old.opendir(dir.ino).await.unwrap();
    // A renamed node keeps its id under the new name.
    let (r, rfh2) = old.create(ROOT_INO, "before", 0o644, ME).await.unwrap();
    old.flush(rfh2).await.unwrap();
    old.release(rfh2).await.unwrap();
    old.rename(ROOT_INO, "before", dir.ino, "after", 0).await.unwrap();
    drop(old); // the predecessor dies with whatever it held

    let new = fs(&store);
    let summary = new.restore(&journal.bytes());
    assert!(summary.nodes >= 4 && summary.handles == 4 && summary.lost_writers == 1 && !summary.torn, "{summary:?}");

    assert_eq!(new.getattr(f.ino).await.unwrap().size, 7);
    assert_eq!(new.getattr(r.ino).await.unwrap().ino, r.ino, "renamed node resolves under its new name");
    assert_eq!(&new.read(rfh, 0, 100).await.unwrap()[..], b"stored ", "read handle reopened lazily");
    // The clean writer goes on appending.
    new.write(wfh, 7, b"and more").await.unwrap();
    new.flush(wfh).await.unwrap();
    new.release(wfh).await.unwrap();
    assert_eq!(object(&store, "v/d/done.txt").await.as_deref(), Some(&b"stored and more"[..]));
    // The writer whose data died: EIO on every use, never a silent loss.
    assert_eq!(new.write(lost_fh, 32, b"x").await.unwrap_err(), Errno::EIO);
    assert_eq!(new.flush(lost_fh).await.unwrap_err(), Errno::EIO);
    assert_eq!(new.release(lost_fh).await.unwrap_err(), Errno::EIO);
    assert_eq!(object(&store, "v/d/unflushed.txt").await, None);
    let _ = lost;
    // The directory handle lists.
    let names: Vec<String> = new.readdir(dir.ino, dfh, 0).await.unwrap().into_iter().map(|e| e.2.name).collect();
    assert!(names.contains(&"done.txt".to_string()) && names.contains(&"after".to_string()), "{names:?}");
    new.releasedir(dir.ino, dfh);
    new.release(rfh).await.unwrap();
    // Ids the successor never heard of are stale, not a crash; new ids do not collide.
    assert_eq!(new.getattr(9_999).await.unwrap_err(), Errno::ESTALE);
    let (fresh, fh) = new.create(ROOT_INO, "new-file", 0o644, ME).await.unwrap();
    assert!(fresh.ino > r.ino && fresh.ino > lost.ino, "new id {} reuses an old one", fresh.ino);
    let fresh_fh_collides = [wfh, rfh, lost_fh, dfh].contains(&fh);
    assert!(!fresh_fh_collides, "new handle {fh} reuses an old one");
}

#[tokio::test]
async fn a_successors_own_journal_lets_a_third_server_take_over() {
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    let j1 = Arc::new(MemoryJournal::default());
    let first = fs(&store).journaled(j1.clone());
    let (f, fh) = first.create(ROOT_INO, "f", 0o644, ME).await.unwrap();
    first.write(fh, 0, b"abc").await.unwrap();
    first.flush(fh).await.unwrap();
    drop(first);
    // The second server appends to the same journal (the memfd the plugin keeps).
    let second = fs(&store).journaled(j1.clone());
    second.restore(&j1.bytes());
    let (g, gfh) = second.create(ROOT_INO, "g", 0o644, ME).await.unwrap();
    second.flush(gfh).await.unwrap();
    drop(second);
    let third = fs(&store);
    let s = third.restore(&j1.bytes());
    assert_eq!((s.handles, s.lost_writers), (2, 0), "{s:?}");
    assert_eq!(third.getattr(f.ino).await.unwrap().size, 3);
    assert_eq!(third.getattr(g.ino).await.unwrap().size, 0);
    third.write(fh, 3, b"d").await.unwrap();
    third.flush(fh).await.unwrap();
    assert_eq!(object(&store, "v/f").await.as_deref(), Some(&b"abcd"[..]));
}

/// Graceful handover in the middle of a large streamed write: the old server hands its
/// multipart upload over (no commit, no staging), the new one continues it, and the
/// object ends up with every byte, in one upload.
#[tokio::test]
async fn a_drained_stream_is_continued_by_the_successor() {
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    let opts = MountOptions::parse(&["part_size=5", "upload_concurrency=2"]).unwrap();
    let cfg =
        || FsConfig { bucket: B.into(), prefix: "v/".into(), options: opts.clone(), capacity: None, hard_quota: false };
    let data: Vec<u8> = (0..(23 << 20) + 4321).map(|i: usize| (i.wrapping_mul(131) % 251) as u8).collect();
    let journal = Arc::new(MemoryJournal::default());
    let old = Fs::new(store.clone(), cfg()).journaled(journal.clone());
    let (f, fh) = old.create(ROOT_INO, "big.bin", 0o644, ME).await.unwrap();
    let split = 12 * (1 << 20) + 777; // parts uploaded, and a partial part buffered
    for (i, chunk) in data[..split].chunks(128 * 1024).enumerate() {
        old.write(fh, (i * 128 * 1024) as u64, chunk).await.unwrap();
    }
    let drained = old.drain().await.unwrap();
    assert_eq!((drained.streams, drained.committed), (1, 0), "{drained:?}");
    assert_eq!(store.open_uploads(), 1, "the upload stays open for the successor");
    assert_eq!(object(&store, "v/big.bin").await, None, "nothing committed at the handover");
    drop(old);

    let new = Fs::new(store.clone(), cfg()).journaled(journal.clone());
    let r = new.restore(&journal.bytes());
    assert_eq!((r.streams, r.lost_writers), (1, 0), "{r:?}");
    assert_eq!(new.getattr(f.ino).await.unwrap().size, split as u64, "size as the application left it");
    for (i, chunk) in data[split..].chunks(128 * 1024).enumerate() {
        new.write(fh, (split + i * 128 * 1024) as u64, chunk).await.unwrap();
    }
    new.flush(fh).await.unwrap();
    new.release(fh).await.unwrap();
    assert_eq!(store.open_uploads(), 0);
    let got = object(&store, "v/big.bin").await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "content differs after the handover");
}

/// A mount that looks up many names compacts its journal to the live state: the journal
/// stays small, and a successor restored from it still knows every id the kernel holds
/// and which writer held unstored data.
#[tokio::test]
async fn the_journal_is_compacted_to_the_live_state() {
    use bytes::Bytes;
    use s3vol_store::PutOptions;
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    for i in 0..3000 {
        store.put_object(B, &format!("v/f{i:05}"), Bytes::from_static(b"x"), &PutOptions::default()).await.unwrap();
    }
    let journal = Arc::new(MemoryJournal::with_threshold(16 * 1024));
    let old = fs(&store).journaled(journal.clone());
    let (dirty, dirty_fh) = old.create(ROOT_INO, "dirty", 0o644, ME).await.unwrap();
    old.write(dirty_fh, 0, b"unstored").await.unwrap();
    let (clean, clean_fh) = old.create(ROOT_INO, "clean", 0o644, ME).await.unwrap();
    old.flush(clean_fh).await.unwrap();
    let mut kept = Vec::new();
    for i in 0..3000 {
        let a = old.lookup(ROOT_INO, &format!("f{i:05}")).await.unwrap();
        if i % 100 == 0 {
            kept.push(a.ino); // the kernel keeps these
        } else {
            old.forget(a.ino, 1);
        }
    }
    // An id the compaction left out (the kernel had forgotten it) is handed out again
    // from the cache: it must be journaled again.
    let again = old.lookup(ROOT_INO, "f00001").await.unwrap();
    kept.push(again.ino);
    let bytes = journal.bytes();
    // 3000 node records are ~75 KB; the compacted journal holds the live ones only.
    assert!(bytes.len() < 40 * 1024, "journal not compacted: {} bytes", bytes.len());
    drop(old);
    let new = fs(&store);
    new.restore(&bytes);
    for ino in &kept {
        assert_eq!(new.getattr(*ino).await.unwrap().size, 1, "id {ino} lost by the compaction");
    }
    assert_eq!(new.write(dirty_fh, 8, b"x").await.unwrap_err(), Errno::EIO, "dirty writer kept as dirty");
    new.write(clean_fh, 0, b"ok").await.unwrap();
    new.flush(clean_fh).await.unwrap();
    assert_eq!(object(&store, "v/clean").await.as_deref(), Some(&b"ok"[..]));
    let _ = (dirty, clean);
}

/// A writer that had started a multipart upload dies with its server: the successor
/// aborts that upload, so its parts do not linger in the store (and on the bill).
#[tokio::test]
async fn a_lost_writers_multipart_upload_is_aborted_by_the_successor() {
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    // Compacted at every chance: the upload must survive in the live-state snapshot.
    let journal = Arc::new(MemoryJournal::with_threshold(1));
    let opts = MountOptions::parse(&["part_size=5"]).unwrap();
    let cfg = |o: MountOptions| FsConfig {
        bucket: B.into(),
        prefix: "v/".into(),
        options: o,
        capacity: None,
        hard_quota: false,
    };
    let old = Fs::new(store.clone(), cfg(opts.clone())).journaled(journal.clone());
    let (_, fh) = old.create(ROOT_INO, "big.bin", 0o644, ME).await.unwrap();
    let chunk = vec![7u8; 1 << 20];
    for i in 0..12u64 {
        old.write(fh, i << 20, &chunk).await.unwrap();
    }
    assert_eq!(store.open_uploads(), 1, "parts are on their way");
    // More node ids: compactions replace the history by the live state.
    for i in 0..3 {
        let (_, other) = old.create(ROOT_INO, &format!("small{i}"), 0o644, ME).await.unwrap();
        old.release(other).await.unwrap();
        let a = old.lookup(ROOT_INO, &format!("small{i}")).await.unwrap();
        old.forget(a.ino, 2); // the kernel forgets it: the next compaction leaves it out
    }
    drop(old); // killed: the upload is left open
    let records = s3vol_fs::decode_all(&journal.bytes()).0;
    assert!(!records.iter().any(|r| format!("{r:?}").contains("small0")), "compacted: {records:?}");

    let new = Fs::new(store.clone(), cfg(opts));
    let summary = new.restore(&journal.bytes());
    assert_eq!(summary.lost_writers, 1, "{summary:?}");
    assert_eq!(new.abort_abandoned_uploads().await, 1);
    assert_eq!(store.open_uploads(), 0, "no orphaned upload left");
    assert_eq!(new.write(fh, 12 << 20, b"x").await.unwrap_err(), Errno::EIO);
}
