//! What unlink, rename and chmod do to a file that is still open: the POSIX answers
//! (an unlinked file's data lives on, nameless, until the last close; a renamed open
//! file is written under its new name), against the in-memory store.

use std::sync::Arc;

use bytes::Bytes;
use s3vol_fs::{Caller, Errno, Fs, FsConfig, MountOptions, SetAttr, ROOT_INO};
use s3vol_store::{collect_body, MemoryStore, ObjectStore, PutOptions};

const B: &str = "bkt";
const ME: Caller = Caller { uid: 1000, gid: 1000, pid: 0 };
const MIB: usize = 1 << 20;

fn mount(opts: &[&str]) -> (Arc<MemoryStore>, Fs) {
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    let cfg = FsConfig {
        bucket: B.into(),
        prefix: "vol/".into(),
        options: MountOptions::parse(opts).unwrap(),
        capacity: None,
        hard_quota: false,
    };
    (store.clone(), Fs::new(store, cfg))
}

async fn object(store: &MemoryStore, key: &str) -> Option<Vec<u8>> {
    let r = store.get_object(B, key, None).await.ok()?;
    Some(collect_body(r.body).await.unwrap().to_vec())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

async fn write_all(fs: &Fs, fh: u64, at: u64, data: &[u8]) {
    let mut off = at;
    for chunk in data.chunks(128 * 1024) {
        assert_eq!(fs.write(fh, off, chunk).await.unwrap() as usize, chunk.len());
        off += chunk.len() as u64;
    }
}

async fn close(fs: &Fs, fh: u64) -> Result<(), Errno> {
    fs.flush(fh).await?;
    fs.release(fh).await
}

#[tokio::test]
async fn an_unlinked_new_file_does_not_come_back_at_close() {
    let (store, fs) = mount(&[]);
    let (_, fh) = fs.create(ROOT_INO, "tmp.txt", 0o644, ME).await.unwrap();
    write_all(&fs, fh, 0, b"scratch data").await;
    fs.unlink(ROOT_INO, "tmp.txt").await.unwrap();
    // The open descriptor still reads and writes the nameless file.
    write_all(&fs, fh, 12, b" and more").await;
    assert_eq!(&fs.read(fh, 0, 100).await.unwrap()[..], b"scratch data and more");
    close(&fs, fh).await.expect("close of an unlinked file succeeds");
    assert_eq!(object(&store, "vol/tmp.txt").await, None, "the close brought the unlinked file back");
    assert_eq!(fs.lookup(ROOT_INO, "tmp.txt").await.unwrap_err(), Errno::ENOENT);
}

#[tokio::test]
async fn an_unlinked_file_that_was_flushed_stays_gone() {
    let (store, fs) = mount(&[]);
    let (_, fh) = fs.create(ROOT_INO, "f", 0o644, ME).await.unwrap();
    write_all(&fs, fh, 0, b"v1").await;
    fs.flush(fh).await.unwrap();
    assert!(object(&store, "vol/f").await.is_some());
    fs.unlink(ROOT_INO, "f").await.unwrap();
    write_all(&fs, fh, 2, b"v2").await;
    close(&fs, fh).await.unwrap();
    assert_eq!(object(&store, "vol/f").await, None);
    assert!(!store.keys(B).iter().any(|k| k.starts_with("vol/f")), "{:?}", store.keys(B));
}

#[tokio::test]
async fn an_unlinked_large_upload_is_abandoned_not_completed() {
    let (store, fs) = mount(&["part_size=5", "upload_concurrency=2"]);
    let (_, fh) = fs.create(ROOT_INO, "big", 0o644, ME).await.unwrap();
    write_all(&fs, fh, 0, &pattern(12 * MIB, 1)).await;
    fs.unlink(ROOT_INO, "big").await.unwrap();
    assert_eq!(store.open_uploads(), 0, "the multipart upload was left open");
    close(&fs, fh).await.unwrap();
    assert_eq!(object(&store, "vol/big").await, None);
    assert_eq!(store.open_uploads(), 0);
}

#[tokio::test]
async fn a_renamed_new_file_is_written_under_its_new_name() {
    let (store, fs) = mount(&[]);
    let (_, fh) = fs.create(ROOT_INO, "draft", 0o644, ME).await.unwrap();
    write_all(&fs, fh, 0, b"first half, ").await;
    fs.rename(ROOT_INO, "draft", ROOT_INO, "final", 0).await.expect("rename of a file not yet uploaded");
    write_all(&fs, fh, 12, b"second half").await;
    close(&fs, fh).await.unwrap();
    assert_eq!(object(&store, "vol/final").await.as_deref(), Some(&b"first half, second half"[..]));
    assert_eq!(object(&store, "vol/draft").await, None, "the close recreated the old name");
}

#[tokio::test]
async fn a_renamed_file_mid_multipart_keeps_every_byte_under_the_new_name() {
    let (store, fs) = mount(&["part_size=5", "upload_concurrency=2"]);
    let data = pattern(16 * MIB + 77, 3);
    let (_, fh) = fs.create(ROOT_INO, "a", 0o644, ME).await.unwrap();
    write_all(&fs, fh, 0, &data[..11 * MIB]).await;
    let d = fs.mkdir(ROOT_INO, "dir", 0o755, ME).await.unwrap();
    fs.rename(ROOT_INO, "a", d.ino, "b", 0).await.unwrap();
    write_all(&fs, fh, 11 * MIB as u64, &data[11 * MIB..]).await;
    close(&fs, fh).await.unwrap();
    assert_eq!(object(&store, "vol/dir/b").await.map(|d| d.len()), Some(data.len()));
    assert!(object(&store, "vol/dir/b").await.unwrap() == data, "content differs");
    assert_eq!(object(&store, "vol/a").await, None);
    assert_eq!(store.open_uploads(), 0);
}

#[tokio::test]
async fn a_file_open_for_reading_reads_on_after_a_rename() {
    let (store, fs) = mount(&[]);
    let data = pattern(3 * MIB, 5);
    store.put_object(B, "vol/src", Bytes::from(data.clone()), &PutOptions::default()).await.unwrap();
    let a = fs.lookup(ROOT_INO, "src").await.unwrap();
    let fh = fs.open(a.ino, libc::O_RDONLY, ME).await.unwrap();
    assert_eq!(&fs.read(fh, 0, 4096).await.unwrap()[..], &data[..4096]);
    fs.rename(ROOT_INO, "src", ROOT_INO, "dst", 0).await.unwrap();
    let far = 2 * MIB as u64 + 5;
    assert_eq!(&fs.read(fh, far, 4096).await.unwrap()[..], &data[far as usize..far as usize + 4096]);
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn chmod_of_an_open_file_applies_to_its_pending_upload() {
    let (store, fs) = mount(&[]);
    let (attr, fh) = fs.create(ROOT_INO, "m", 0o644, ME).await.unwrap();
    write_all(&fs, fh, 0, b"x").await;
    let set = SetAttr { mode: Some(0o600), ..Default::default() };
    fs.setattr(attr.ino, set, None).await.unwrap();
    close(&fs, fh).await.unwrap();
    let meta = store.head_object(B, "vol/m").await.unwrap().metadata;
    let mode = meta.get("mode").map(|m| m.parse::<u32>().unwrap() & 0o7777);
    assert_eq!(mode, Some(0o600), "{meta:?}");
}
