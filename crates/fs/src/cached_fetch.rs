//! Ranged reads through the read cache: blocks found on disk are served from there, the
//! missing ones are fetched from the store in one GET per run of missing blocks and
//! cached for the next reader.

use std::sync::Arc;

use bytes::Bytes;
use s3vol_store::{ErrorKind, ObjectStore, StoreError, StoreResult};

use crate::chunk_buf::{ChunkBuf, ChunkPool};
use crate::read::fetch_tagged;
use crate::read_cache::{ObjectVersion, ReadCache};

/// The cache and the object version a reader reads (its ETag from the open).
#[derive(Clone)]
pub(crate) struct CachedObject {
    pub(crate) cache: ReadCache,
    pub(crate) version: ObjectVersion,
}

impl CachedObject {
    /// Where a fetch that starts at `start` and wants `len` bytes should end: on a block
    /// boundary, so the next fetch starts on one and every block is fetched whole, once.
    pub(crate) fn aligned_end(&self, start: u64, len: u64) -> u64 {
        let bs = self.cache.block_size();
        ((start + len).div_ceil(bs) * bs).min(self.version.size)
    }

    /// The length block `b` has.
    fn block_len(&self, b: u64) -> u64 {
        let bs = self.cache.block_size();
        bs.min(self.version.size.saturating_sub(b * bs))
    }
}

/// Bytes `start..end` of the object, from cached blocks where they are intact and from
/// the store otherwise. Blocks come from the store only in the version (ETag) the reader
/// opened; a GET that answers with another version is served but not cached.
pub(crate) async fn fetch_through_cache(
    c: &CachedObject,
    store: Arc<dyn ObjectStore>,
    bucket: &str,
    start: u64,
    end: u64,
    pool: Option<ChunkPool>,
) -> StoreResult<Bytes> {
    let bs = c.cache.block_size();
    let key = &c.version.key;
    let (first, last) = (start / bs, (end - 1) / bs);
    let lookups = (first..=last)
        .map(|b| async move { c.cache.get(&c.version, b).await.filter(|d| d.len() as u64 == c.block_len(b)) });
    let mut blocks: Vec<Option<Bytes>> = futures::future::join_all(lookups).await;
    // The bytes of this read that block `b` holds.
    let share = |b: u64| end.min((b + 1) * bs).saturating_sub(start.max(b * bs));
    let hit: u64 = (first..=last).filter(|b| blocks[(b - first) as usize].is_some()).map(share).sum();
    c.cache.note_hit(hit);
    c.cache.note_miss(end - start - hit);
    let mut b = first;
    while b <= last {
        if blocks[(b - first) as usize].is_some() {
            b += 1;
            continue;
        }
        let run = b;
        while b <= last && blocks[(b - first) as usize].is_none() {
            b += 1;
        }
        let (s, e) = (run * bs, (b * bs).min(c.version.size));
        let (data, etag) = fetch_tagged(store.clone(), bucket.to_string(), key.clone(), s, e, pool.clone()).await?;
        for i in run..b {
            let from = (i - run) * bs;
            let piece = data.slice(from as usize..(from + c.block_len(i)) as usize);
            if etag == c.version.etag {
                c.cache.put(&c.version, i, piece.clone());
            }
            blocks[(i - first) as usize] = Some(piece);
        }
    }
    let at = |i: usize| (first + i as u64) * bs;
    if let [Some(only)] = &blocks[..] {
        return Ok(only.slice((start - at(0)) as usize..(end - at(0)) as usize));
    }
    // The mount's chunk buffers, as a chunk from the store would use: the cache adds no
    // heap of its own to the reader's memory.
    let mut out = match &pool {
        Some(p) => p.buffer((end - start) as usize),
        None => ChunkBuf::heap((end - start) as usize),
    };
    for (i, d) in blocks.iter().enumerate() {
        let d = d.as_ref().expect("every block is filled above");
        let from = start.max(at(i)) - at(i);
        let to = end.min(at(i) + d.len() as u64) - at(i);
        out.extend_from_slice(&d[from as usize..to as usize]);
    }
    if out.len() as u64 != end - start {
        return Err(StoreError::new(
            ErrorKind::Other,
            format!("read of {key} bytes {start}-{end} assembled {} bytes from the cache and the store", out.len()),
        ));
    }
    Ok(out.freeze())
}
