use super::*;

fn cfg(dir: &Path) -> ReadCacheConfig {
    ReadCacheConfig {
        dir: dir.to_path_buf(),
        max_bytes: 16 << 20,
        min_free_permille: 0,
        block_size: 1 << 20,
        volume: "t".into(),
    }
}

#[tokio::test]
async fn a_block_put_is_got_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = ReadCache::open(cfg(dir.path())).unwrap();
    let v = ObjectVersion { key: "k".into(), etag: "e".into(), size: 5 };
    c.put(&v, 0, Bytes::from_static(b"hello"));
    for _ in 0..200 {
        if c.stats().write_errors > 0 || c.get(&v, 0).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(c.stats().write_errors, 0);
    assert_eq!(&c.get(&v, 0).await.unwrap()[..], b"hello");
}

/// Many blocks written at once (the prefetcher hands over eight at a time, readers run in
/// parallel): blocks of one fan-out directory created concurrently must not fail each
/// other (a failed write turns the cache off for 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_written_at_once_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let c = ReadCache::open(ReadCacheConfig { max_bytes: 64 << 20, ..cfg(dir.path()) }).unwrap();
    let n = 600u64;
    for b in 0..n {
        let v = ObjectVersion { key: format!("k{}", b % 7), etag: "e".into(), size: 1 << 30 };
        c.put(&v, b, Bytes::from(vec![b as u8; 4096]));
    }
    for _ in 0..1000 {
        if c.inner.pending_writes.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let st = c.stats();
    assert_eq!(st.write_errors, 0, "{st:?}");
    assert_eq!(st.bytes, n * (4096 + block_file::HEADER as u64), "{st:?}");
}
