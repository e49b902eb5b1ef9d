//! A directory listing that fails part-way (a LIST that still fails after the client's
//! retries) returns the error; a reader that asks again at the same offset gets the
//! entries that follow, not the first page once more.

use std::sync::Arc;

use bytes::Bytes;
use s3vol_fs::{Errno, MountOptions, ROOT_INO};
use s3vol_store::{FaultyStore, MemoryStore, ObjectStore, PutOptions};

mod common;
use common::{fs_over, until, B};

/// More names than one LIST page holds (1000), so the listing takes two pages.
const N: usize = 1500;

#[tokio::test]
async fn a_failed_page_is_listed_again_from_where_it_stopped() {
    let mem = Arc::new(MemoryStore::with_buckets(&[B]));
    for i in 0..N {
        mem.put_object(B, &format!("vol/f{i:04}"), Bytes::from_static(b"x"), &PutOptions::default()).await.unwrap();
    }
    let store = Arc::new(FaultyStore::new(mem));
    let fs = fs_over(store.clone(), MountOptions::default());

    // The first page passes; the second (requested ahead of the reader) fails.
    store.gate_lists();
    store.admit_lists(1);
    let fh = fs.opendir(ROOT_INO).await.unwrap();
    let mut names = Vec::new();
    let mut offset = 0;
    let first = fs.readdir(ROOT_INO, fh, offset).await.unwrap();
    for (_, next, e) in &first {
        names.push(e.name.clone());
        offset = *next;
    }
    until("the second page's LIST to wait at the gate", || store.lists_waiting() == 1).await;
    store.fail_lists(1);
    store.admit_lists(1);
    assert_eq!(fs.readdir(ROOT_INO, fh, offset).await.unwrap_err(), Errno::EIO);

    // The reader asks again at the same offset: the store answers now.
    store.admit_lists(100);
    loop {
        let batch = fs.readdir(ROOT_INO, fh, offset).await.unwrap();
        let Some((_, next, _)) = batch.last() else { break };
        offset = *next;
        names.extend(batch.into_iter().map(|(_, _, e)| e.name));
    }
    let want: Vec<String> =
        [".".to_string(), "..".to_string()].into_iter().chain((0..N).map(|i| format!("f{i:04}"))).collect();
    assert_eq!(names.len(), want.len(), "every name once (first page entries came back: {})", names.len() > want.len());
    assert_eq!(names, want);
}
