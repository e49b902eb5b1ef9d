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
