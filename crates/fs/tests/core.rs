//! The filesystem core against the in-memory store: no FUSE, no network.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use s3vol_fs::{Caller, Errno, FileKind, Fs, FsConfig, MountOptions, SetAttr, ROOT_INO};
use s3vol_store::{collect_body, MemoryStore, ObjectStore, PutOptions};

const B: &str = "bkt";
const ME: Caller = Caller { uid: 1000, gid: 1000, pid: 0 };

fn fs_with(store: Arc<MemoryStore>, prefix: &str, opts: MountOptions) -> Fs {
    Fs::new(
        store,
        FsConfig {
            bucket: B.into(),
            prefix: prefix.into(),
            options: opts,
            capacity: Some(10 << 30),
            hard_quota: false,
        },
    )
}

fn setup() -> (Arc<MemoryStore>, Fs) {
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    let fs = fs_with(store.clone(), "vol/", MountOptions::default());
    (store, fs)
}

async fn put(store: &MemoryStore, key: &str, data: &[u8], meta: &[(&str, &str)]) {
    let opts = PutOptions {
        metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    store.put_object(B, key, Bytes::copy_from_slice(data), &opts).await.unwrap();
}

async fn object(store: &MemoryStore, key: &str) -> Option<Vec<u8>> {
    match store.get_object(B, key, None).await {
        Ok(r) => Some(collect_body(r.body).await.unwrap().to_vec()),
        Err(_) => None,
    }
}

async fn names(fs: &Fs, ino: u64) -> Vec<String> {
    let fh = fs.opendir(ino).await.unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let page = fs.readdir(ino, fh, off).await.unwrap();
        if page.is_empty() {
            break;
        }
        for (_, next, e) in page {
            off = next;
            if e.name != "." && e.name != ".." {
                out.push(e.name);
            }
        }
    }
    fs.releasedir(ino, fh);
    out
}

async fn write_file(fs: &Fs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, fh) = fs.create(parent, name, 0o644, ME).await.unwrap();
    let mut off = 0;
    for chunk in data.chunks(128 * 1024) {
        fs.write(fh, off, chunk).await.unwrap();
        off += chunk.len() as u64;
    }
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    attr.ino
}

async fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, libc::O_RDONLY, ME).await.unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(fh, out.len() as u64, 128 * 1024).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(fh).await.unwrap();
    out
}

#[tokio::test]
async fn all_three_directory_shapes_look_up_and_list() {
    let (store, fs) = setup();
    put(&store, "vol/marker/", b"", &[]).await;
    put(&store, "vol/implicit/child.txt", b"c", &[]).await;
    put(&store, "vol/deep/a/b/c.txt", b"c", &[]).await;
    put(&store, "vol/file.txt", b"hello", &[]).await;
    put(&store, "vol/.s3vol-volume.json", b"{}", &[]).await;
    assert_eq!(names(&fs, ROOT_INO).await, vec!["deep", "file.txt", "implicit", "marker"]);
    for d in ["marker", "implicit", "deep"] {
        assert_eq!(fs.lookup(ROOT_INO, d).await.unwrap().kind, FileKind::Dir, "{d}");
    }
    let f = fs.lookup(ROOT_INO, "file.txt").await.unwrap();
    assert_eq!((f.kind, f.size, f.perm), (FileKind::File, 5, 0o644));
    assert_eq!(fs.lookup(ROOT_INO, "missing").await.unwrap_err(), Errno::ENOENT);
    assert_eq!(fs.lookup(ROOT_INO, ".s3vol-volume.json").await.unwrap_err(), Errno::ENOENT, "volume marker hidden");
    let deep = fs.lookup(ROOT_INO, "deep").await.unwrap();
    assert_eq!(names(&fs, deep.ino).await, vec!["a"]);
}

#[tokio::test]
async fn s3fs_metadata_gives_mode_owner_and_symlinks() {
    let (store, fs) = setup();
    put(
        &store,
        "vol/script.sh",
        b"#!/bin/sh",
        &[("mode", "33261"), ("uid", "1000"), ("gid", "50"), ("mtime", "1600000000")],
    )
    .await;
    put(&store, "vol/link", b"script.sh", &[("mode", "41471")]).await;
    let a = fs.lookup(ROOT_INO, "script.sh").await.unwrap();
    assert_eq!((a.perm, a.uid, a.gid), (0o755, 1000, 50));
    let l = fs.lookup(ROOT_INO, "link").await.unwrap();
    assert_eq!(l.kind, FileKind::Symlink);
    assert_eq!(fs.readlink(l.ino).await.unwrap(), b"script.sh");
}

#[tokio::test]
async fn create_write_flush_puts_the_object_with_metadata() {
    let (store, fs) = setup();
    let ino = write_file(&fs, ROOT_INO, "notes.txt", b"some text").await;
    assert_eq!(object(&store, "vol/notes.txt").await.unwrap(), b"some text");
    let meta = store.head_object(B, "vol/notes.txt").await.unwrap();
    assert_eq!(meta.metadata.get("uid").map(String::as_str), Some("1000"));
    assert_eq!(meta.metadata.get("mode").map(String::as_str), Some("33188"));
    assert_eq!(meta.content_type.as_deref(), Some("text/plain"));
    assert_eq!(read_all(&fs, ino).await, b"some text");
    let a = fs.getattr(ino).await.unwrap();
    assert_eq!((a.size, a.uid), (9, 1000));
}

#[tokio::test]
async fn large_files_stream_as_multipart_and_read_back() {
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    let opts = MountOptions::parse(&["part_size=5", "upload_concurrency=2"]).unwrap();
    let fs = fs_with(store.clone(), "", opts);
    let data: Vec<u8> = (0..(12 << 20) + 123).map(|i| (i * 7 % 251) as u8).collect();
    let ino = write_file(&fs, ROOT_INO, "big.bin", &data).await;
    assert_eq!(object(&store, "big.bin").await.unwrap().len(), data.len());
    assert_eq!(read_all(&fs, ino).await, data);
    // Random reads return exactly the bytes asked for.
    let fh = fs.open(ino, libc::O_RDONLY, ME).await.unwrap();
    for off in [7_000_000u64, 100, 12_000_000, 5 << 20] {
        let got = fs.read(fh, off, 4096).await.unwrap();
        assert_eq!(&got[..], &data[off as usize..off as usize + 4096], "at {off}");
    }
    assert!(fs.read(fh, data.len() as u64 + 10, 10).await.unwrap().is_empty());
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn appends_and_overwrites_of_existing_objects_go_through_staging() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    let opts = MountOptions::parse(&[format!("cache_dir={}", dir.path().display())]).unwrap();
    let fs = fs_with(store.clone(), "", opts);
    put(&store, "log.txt", b"line1\n", &[]).await;
    let a = fs.lookup(ROOT_INO, "log.txt").await.unwrap();
    let fh = fs.open(a.ino, libc::O_WRONLY | libc::O_APPEND, ME).await.unwrap();
    fs.write(fh, 6, b"line2\n").await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(object(&store, "log.txt").await.unwrap(), b"line1\nline2\n");
    // A write in the middle.
    let fh = fs.open(a.ino, libc::O_RDWR, ME).await.unwrap();
    fs.write(fh, 0, b"LINE").await.unwrap();
    assert_eq!(&fs.read(fh, 0, 6).await.unwrap()[..], b"LINE1\n");
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(object(&store, "log.txt").await.unwrap(), b"LINE1\nline2\n");
    // Truncation by path.
    fs.setattr(a.ino, SetAttr { size: Some(3), ..Default::default() }, None).await.unwrap();
    assert_eq!(object(&store, "log.txt").await.unwrap(), b"LIN");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "staging files removed");
}

#[tokio::test]
async fn mkdir_rmdir_unlink_keep_posix_shape() {
    let (store, fs) = setup();
    let d = fs.mkdir(ROOT_INO, "d", 0o750, ME).await.unwrap();
    assert!(object(&store, "vol/d/").await.is_some(), "mkdir writes a marker");
    assert_eq!(fs.mkdir(ROOT_INO, "d", 0o750, ME).await.unwrap_err(), Errno::EEXIST);
    write_file(&fs, d.ino, "f", b"x").await;
    assert_eq!(fs.rmdir(ROOT_INO, "d").await.unwrap_err(), Errno::ENOTEMPTY);
    assert_eq!(fs.unlink(ROOT_INO, "d").await.unwrap_err(), Errno::EISDIR);
    fs.unlink(d.ino, "f").await.unwrap();
    fs.rmdir(ROOT_INO, "d").await.unwrap();
    assert!(store.keys(B).is_empty(), "{:?}", store.keys(B));
    // Removing the last file of an implicit directory keeps the directory.
    put(&store, "vol/imp/only", b"x", &[]).await;
    let imp = fs.lookup(ROOT_INO, "imp").await.unwrap();
    fs.lookup(imp.ino, "only").await.unwrap();
    fs.unlink(imp.ino, "only").await.unwrap();
    assert!(object(&store, "vol/imp/").await.is_some(), "implicit dir kept as a marker");
    assert_eq!(fs.lookup(ROOT_INO, "imp").await.unwrap().kind, FileKind::Dir);
}

#[tokio::test]
async fn rename_files_and_directories() {
    let (store, fs) = setup();
    let d = fs.mkdir(ROOT_INO, "src", 0o755, ME).await.unwrap();
    write_file(&fs, d.ino, "a", b"A").await;
    let sub = fs.mkdir(d.ino, "sub", 0o755, ME).await.unwrap();
    write_file(&fs, sub.ino, "b", b"B").await;
    fs.rename(ROOT_INO, "src", ROOT_INO, "dst", 0).await.unwrap();
    assert_eq!(store.keys(B), vec!["vol/dst/", "vol/dst/a", "vol/dst/sub/", "vol/dst/sub/b"]);
    let dst = fs.lookup(ROOT_INO, "dst").await.unwrap();
    let sub = fs.lookup(dst.ino, "sub").await.unwrap();
    let b = fs.lookup(sub.ino, "b").await.unwrap();
    assert_eq!(read_all(&fs, b.ino).await, b"B");
    fs.rename(sub.ino, "b", ROOT_INO, "moved", 0).await.unwrap();
    assert_eq!(object(&store, "vol/moved").await.unwrap(), b"B");
    assert!(object(&store, "vol/dst/sub/b").await.is_none());
    write_file(&fs, ROOT_INO, "other", b"O").await;
    assert_eq!(
        fs.rename(ROOT_INO, "moved", ROOT_INO, "other", libc::RENAME_NOREPLACE).await.unwrap_err(),
        Errno::EEXIST
    );
    fs.rename(ROOT_INO, "moved", ROOT_INO, "other", 0).await.unwrap();
    assert_eq!(object(&store, "vol/other").await.unwrap(), b"B");
    assert_eq!(fs.rename(ROOT_INO, "dst", ROOT_INO, "other", 0).await.unwrap_err(), Errno::ENOTDIR);
}

#[tokio::test]
async fn chmod_chown_persist_in_metadata() {
    let (store, fs) = setup();
    let ino = write_file(&fs, ROOT_INO, "f", b"x").await;
    let a = fs.setattr(ino, SetAttr { mode: Some(0o600), uid: Some(42), ..Default::default() }, None).await.unwrap();
    assert_eq!((a.perm, a.uid), (0o600, 42));
    let m = store.head_object(B, "vol/f").await.unwrap().metadata;
    assert_eq!(m.get("mode").map(String::as_str), Some("33152"));
    assert_eq!(m.get("uid").map(String::as_str), Some("42"));
    assert_eq!(object(&store, "vol/f").await.unwrap(), b"x", "content kept by the metadata copy");
}

#[tokio::test]
async fn read_only_mounts_refuse_writes() {
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    put(&store, "f", b"x", &[]).await;
    let fs = fs_with(store, "", MountOptions::parse(&["ro"]).unwrap());
    assert_eq!(fs.create(ROOT_INO, "n", 0o644, ME).await.unwrap_err(), Errno::EROFS);
    assert_eq!(fs.mkdir(ROOT_INO, "n", 0o755, ME).await.unwrap_err(), Errno::EROFS);
    let f = fs.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!(fs.open(f.ino, libc::O_WRONLY, ME).await.unwrap_err(), Errno::EROFS);
    assert_eq!(fs.unlink(ROOT_INO, "f").await.unwrap_err(), Errno::EROFS);
    assert_eq!(read_all(&fs, f.ino).await, b"x");
}

#[tokio::test]
async fn big_directories_list_page_by_page() {
    let (store, _) = setup();
    for i in 0..2500 {
        put(&store, &format!("vol/many/f{i:05}"), b"", &[]).await;
    }
    let counting = Arc::new(s3vol_store::CountingStore::new(store.clone(), "t"));
    let counts = counting.counts();
    let fs = Fs::new(
        counting,
        FsConfig {
            bucket: B.into(),
            prefix: "vol/".into(),
            options: MountOptions::default(),
            capacity: None,
            hard_quota: false,
        },
    );
    let d = fs.lookup(ROOT_INO, "many").await.unwrap();
    let before = counts.get("ListObjectsV2");
    let n = names(&fs, d.ino).await;
    assert_eq!(n.len(), 2500);
    assert_eq!(n[0], "f00000");
    assert_eq!(n[2499], "f02499");
    // Each page is asked for once, read ahead or not (HEADs of the listed files are
    // the attribute prefetch, counted elsewhere).
    assert_eq!(counts.get("ListObjectsV2") - before, 3, "three LIST pages of 1000");
}

#[tokio::test]
async fn statfs_reports_capacity() {
    let (_, fs) = setup();
    let s = fs.statfs();
    assert_eq!(s.blocks * s.bsize as u64, 10 << 30);
    assert!(s.bfree <= s.blocks);
}

/// Operation sequences checked against a reference model: a map of paths to contents
/// plus a set of directories.
mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u8, Vec<u8>),
        Append(u8, Vec<u8>),
        Unlink(u8),
        Mkdir(u8),
        Rmdir(u8),
        Rename(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let name = 0u8..4;
        let data = proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            (name.clone(), data.clone()).prop_map(|(n, d)| Op::Write(n, d)),
            (name.clone(), data).prop_map(|(n, d)| Op::Append(n, d)),
            name.clone().prop_map(Op::Unlink),
            name.clone().prop_map(Op::Mkdir),
            name.clone().prop_map(Op::Rmdir),
            (name.clone(), name).prop_map(|(a, b)| Op::Rename(a, b)),
        ]
    }

    #[derive(Default, Debug)]
    struct Model {
        files: BTreeMap<String, Vec<u8>>,
        dirs: std::collections::BTreeSet<String>,
    }

    async fn apply(fs: &Fs, m: &mut Model, op: &Op) {
        let n = |i: &u8| format!("n{i}");
        match op {
            Op::Write(i, d) => {
                let name = n(i);
                let res = match fs.lookup(ROOT_INO, &name).await {
                    Ok(a) if a.kind == FileKind::Dir => Err(Errno::EISDIR),
                    Ok(a) => {
                        let fh = fs.open(a.ino, libc::O_WRONLY | libc::O_TRUNC, ME).await.unwrap();
                        fs.write(fh, 0, d).await.unwrap();
                        fs.flush(fh).await.unwrap();
                        fs.release(fh).await
                    }
                    Err(_) => {
                        write_file(fs, ROOT_INO, &name, d).await;
                        Ok(())
                    }
                };
                if res.is_ok() {
                    m.files.insert(name, d.clone());
                }
            }
            Op::Append(i, d) => {
                let name = n(i);
                if let Ok(a) = fs.lookup(ROOT_INO, &name).await {
                    if a.kind == FileKind::File {
                        let fh = fs.open(a.ino, libc::O_WRONLY | libc::O_APPEND, ME).await.unwrap();
                        fs.write(fh, a.size, d).await.unwrap();
                        fs.flush(fh).await.unwrap();
                        fs.release(fh).await.unwrap();
                        m.files.get_mut(&name).unwrap().extend_from_slice(d);
                    }
                }
            }
            Op::Unlink(i) => {
                let ok = fs.unlink(ROOT_INO, &n(i)).await.is_ok();
                assert_eq!(ok, m.files.remove(&n(i)).is_some(), "unlink {}", n(i));
            }
            Op::Mkdir(i) => {
                let ok = fs.mkdir(ROOT_INO, &n(i), 0o755, ME).await.is_ok();
                let expect = !m.files.contains_key(&n(i)) && !m.dirs.contains(&n(i));
                assert_eq!(ok, expect, "mkdir {}", n(i));
                if ok {
                    m.dirs.insert(n(i));
                }
            }
            Op::Rmdir(i) => {
                let ok = fs.rmdir(ROOT_INO, &n(i)).await.is_ok();
                assert_eq!(ok, m.dirs.remove(&n(i)), "rmdir {}", n(i));
            }
            Op::Rename(a, b) => {
                let res = fs.rename(ROOT_INO, &n(a), ROOT_INO, &n(b), 0).await;
                let (src_file, src_dir) = (m.files.contains_key(&n(a)), m.dirs.contains(&n(a)));
                let (dst_file, dst_dir) = (m.files.contains_key(&n(b)), m.dirs.contains(&n(b)));
                let expect_ok = (src_file && !dst_dir) || (src_dir && !dst_file) || (a == b && (src_file || src_dir));
                assert_eq!(res.is_ok(), expect_ok, "rename {} -> {}: {res:?}", n(a), n(b));
                if res.is_ok() && a != b {
                    if let Some(d) = m.files.remove(&n(a)) {
                        m.files.insert(n(b), d);
                    }
                    if m.dirs.remove(&n(a)) {
                        m.dirs.insert(n(b));
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn operations_match_the_model(ops in proptest::collection::vec(op(), 1..25)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let store = Arc::new(MemoryStore::with_buckets(&[B]));
                let opts = MountOptions::parse(&["stat_cache_ttl=0"]).unwrap();
                let fs = fs_with(store, "", opts);
                let mut m = Model::default();
                for op in &ops {
                    apply(&fs, &mut m, op).await;
                    let mut expected: Vec<String> = m.files.keys().chain(m.dirs.iter()).cloned().collect();
                    expected.sort();
                    assert_eq!(names(&fs, ROOT_INO).await, expected, "after {op:?}");
                }
                for (name, data) in &m.files {
                    let a = fs.lookup(ROOT_INO, name).await.unwrap();
                    assert_eq!(&read_all(&fs, a.ino).await, data, "{name}");
                }
            });
        }
    }
}

#[tokio::test]
async fn hard_quota_refuses_writes_past_capacity() {
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    put(&store, "q/old", &[1u8; 4096], &[]).await;
    let cfg = FsConfig {
        bucket: B.into(),
        prefix: "q/".into(),
        options: MountOptions::default(),
        capacity: Some(10_000),
        hard_quota: true,
    };
    let fs = Fs::new(store.clone(), cfg);
    assert_eq!(fs.measure_usage().await.unwrap(), 4096);
    assert_eq!(fs.statfs().bfree, (10_000 - 4096) / 4096);
    write_file(&fs, ROOT_INO, "a", &[2u8; 5000]).await;
    let (_, fh) = fs.create(ROOT_INO, "b", 0o644, ME).await.unwrap();
    assert_eq!(fs.write(fh, 0, &[3u8; 1000]).await.unwrap_err(), Errno::ENOSPC);
    fs.release(fh).await.unwrap();
    fs.lookup(ROOT_INO, "old").await.unwrap();
    fs.unlink(ROOT_INO, "old").await.unwrap();
    write_file(&fs, ROOT_INO, "c", &[3u8; 4000]).await;
    assert!(object(&store, "q/c").await.is_some());
    let a = fs.lookup(ROOT_INO, "a").await.unwrap();
    assert_eq!(
        fs.setattr(a.ino, SetAttr { size: Some(9000), ..Default::default() }, None).await.unwrap_err(),
        Errno::ENOSPC
    );
}

/// Close-to-open at the default `stat_cache_ttl` (60 s): what one mount closed, an open
/// on another mount sees once its cached attributes are older than a second, although
/// `stat` may keep answering from the cache.
#[tokio::test]
async fn close_to_open_across_two_mounts_at_the_default_ttl() {
    let store = Arc::new(MemoryStore::with_buckets(&[B]));
    let a = fs_with(store.clone(), "vol/", MountOptions::default());
    let b = fs_with(store.clone(), "vol/", MountOptions::default());
    write_file(&a, ROOT_INO, "f", b"one").await;
    let on_b = b.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!(read_all(&b, on_b.ino).await, b"one");

    let on_a = a.lookup(ROOT_INO, "f").await.unwrap();
    let fh = a.open(on_a.ino, libc::O_WRONLY | libc::O_TRUNC, ME).await.unwrap();
    a.write(fh, 0, b"second version").await.unwrap();
    a.release(fh).await.unwrap();

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(b.getattr(on_b.ino).await.unwrap().size, 3, "stat answers from its 60 s cache");
    assert_eq!(read_all(&b, on_b.ino).await, b"second version", "open revalidates");
    assert_eq!(b.getattr(on_b.ino).await.unwrap().size, 14, "and the cache learns the new size");
}

/// The inode table keeps what the kernel holds, not everything ever looked up: files the
/// kernel forgot leave it (the next lookup asks the store again), directories stay.
#[tokio::test]
async fn forgotten_files_leave_the_inode_table() {
    let (store, fs) = setup();
    for i in 0..100 {
        put(&store, &format!("vol/many/f{i:03}"), b"x", &[]).await;
    }
    let d = fs.lookup(ROOT_INO, "many").await.unwrap();
    let before = fs.cached_inodes();
    let mut inos = Vec::new();
    for i in 0..100 {
        inos.push(fs.lookup(d.ino, &format!("f{i:03}")).await.unwrap().ino);
    }
    assert_eq!(fs.cached_inodes(), before + 100);
    for ino in inos {
        fs.forget(ino, 1);
    }
    assert_eq!(fs.cached_inodes(), before, "forgotten files are dropped");
    fs.forget(d.ino, 1);
    assert_eq!(fs.cached_inodes(), before, "a directory stays");
    let requests = store.request_count();
    assert_eq!(fs.lookup(d.ino, "f007").await.unwrap().size, 1);
    assert!(store.request_count() > requests, "looked up again in the store");
}
