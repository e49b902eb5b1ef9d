//! A cold lookup asks for the object (HEAD) and for keys under `name/` (LIST) at once.
//! A file found is answered without waiting for the LIST, whose answer only matters when
//! the name is also a prefix; the kernel is told not to cache such a provisional answer,
//! and once the LIST shows keys under the name, the next lookup answers the directory.
//! An empty object (a directory placeholder of other tools) waits for the LIST.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use s3vol_fs::{FileKind, Fs, MountOptions, ROOT_INO};
use s3vol_store::{FaultyStore, MemoryStore, ObjectStore, PutOptions};

mod common;
use common::{until, B};

async fn store_with(keys: &[&str]) -> Arc<FaultyStore> {
    let mem = Arc::new(MemoryStore::with_buckets(&[B]));
    for k in keys {
        mem.put_object(B, k, Bytes::from_static(b"data"), &PutOptions::default()).await.unwrap();
    }
    Arc::new(FaultyStore::new(mem))
}

fn fs_over(store: Arc<FaultyStore>) -> Arc<Fs> {
    Arc::new(common::fs_over(store, MountOptions::default()))
}

/// Looks `name` up in the root, failing the test if the answer needs the gated LIST.
async fn answered_without_the_list(fs: &Fs, name: &str) -> s3vol_fs::Attr {
    tokio::time::timeout(Duration::from_secs(10), fs.lookup(ROOT_INO, name))
        .await
        .expect("the lookup waited for the LIST")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_found_file_is_answered_while_the_directory_check_still_runs() {
    let store = store_with(&["vol/f"]).await;
    let fs = fs_over(store.clone());
    store.gate_lists();

    // The LIST cannot answer: the lookup must not need it.
    let a = answered_without_the_list(&fs, "f").await;
    assert_eq!((a.kind, a.size), (FileKind::File, 4));
    until("the directory check, asked all the same", || store.lists_waiting() == 1).await;
    assert_eq!(fs.entry_ttl(ROOT_INO, "f"), Duration::ZERO, "a provisional answer is not cached by the kernel");

    store.admit_lists(1);
    until("the directory check to end", || fs.pending_dir_checks() == 0).await;
    assert_eq!(fs.entry_ttl(ROOT_INO, "f"), fs.ttl(), "a checked file is cached as usual");
    let again = fs.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!((again.ino, again.kind), (a.ino, FileKind::File));
    assert_eq!(store.lists_done(), 1, "one LIST in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_also_a_prefix_becomes_the_directory_once_its_check_ends() {
    let store = store_with(&["vol/a", "vol/a/x"]).await;
    let fs = fs_over(store.clone());
    store.gate_lists();

    let first = answered_without_the_list(&fs, "a").await;
    assert_eq!(first.kind, FileKind::File, "answered from the HEAD before the LIST");
    assert_eq!(fs.entry_ttl(ROOT_INO, "a"), Duration::ZERO);

    store.admit_lists(1000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let dir = loop {
        let a = fs.lookup(ROOT_INO, "a").await.unwrap();
        if a.kind == FileKind::Dir {
            break a;
        }
        assert_eq!(fs.entry_ttl(ROOT_INO, "a"), Duration::ZERO, "still provisional, so still uncached");
        assert!(Instant::now() < deadline, "the name never became the directory");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_ne!(dir.ino, first.ino, "a new node: the kernel drops the file's entry");
    assert_eq!(fs.entry_ttl(ROOT_INO, "a"), fs.ttl());
    assert_eq!(fs.pending_dir_checks(), 0);
    assert_eq!(fs.lookup(dir.ino, "x").await.unwrap().kind, FileKind::File, "the directory's keys are reachable");
    // Known as a directory now: no provisional answer again.
    assert_eq!(fs.lookup(ROOT_INO, "a").await.unwrap().ino, dir.ino);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_name_an_implicit_directory_and_an_empty_placeholder_wait_for_the_list() {
    let store = store_with(&["vol/d/x", "vol/p/x"]).await;
    // An empty `p` beside `p/x`: the placeholder some tools write for a directory.
    store.put_object(B, "vol/p", Bytes::new(), &PutOptions::default()).await.unwrap();
    let fs = fs_over(store.clone());
    store.gate_lists();
    let lookup = tokio::spawn({
        let fs = fs.clone();
        async move {
            let (d, p, nothing) =
                tokio::join!(fs.lookup(ROOT_INO, "d"), fs.lookup(ROOT_INO, "p"), fs.lookup(ROOT_INO, "nothing"));
            (d, p, nothing)
        }
    });
    until("the directory checks", || store.lists_waiting() == 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!lookup.is_finished(), "no file answer to give, so the LIST decides");
    store.admit_lists(1000);
    let (d, p, nothing) = tokio::time::timeout(Duration::from_secs(20), lookup).await.unwrap().unwrap();
    assert_eq!(d.unwrap().kind, FileKind::Dir);
    assert_eq!(p.unwrap().kind, FileKind::Dir, "the empty placeholder never shows as a file");
    assert_eq!(nothing.unwrap_err(), s3vol_fs::Errno::ENOENT);
    assert_eq!(fs.entry_ttl(ROOT_INO, "d"), fs.ttl());
    assert_eq!(fs.pending_dir_checks(), 0);
}
