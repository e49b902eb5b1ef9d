//! The read path: sequential reads are served by a prefetcher issuing parallel ranged
//! GETs with a window that grows from a small first request (fast first byte) to
//! `read_ahead`; random reads fetch exactly what was asked.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use s3vol_store::{ObjectStore, StoreResult};
use tokio::task::JoinHandle;

use crate::error::{store_errno, Errno, FsResult};

/// First prefetch request size: small, so the first bytes come back fast.
const FIRST_CHUNK: u64 = 256 * 1024;
/// Size of each later prefetch request: several run in parallel within the window, as a
/// parallel ranged download does.
const CHUNK: u64 = 8 * 1024 * 1024;

struct Chunk {
    start: u64,
    end: u64,
    data: ChunkData,
}

enum ChunkData {
    Pending(JoinHandle<StoreResult<Bytes>>),
    Ready(Bytes),
}

/// Per-handle read state. Memory is bounded by `read_ahead` plus one chunk.
pub struct Reader {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    key: String,
    size: u64,
    chunks: VecDeque<Chunk>,
    /// Where the previous read ended: a read starting here is sequential.
    last_end: Option<u64>,
    /// End of what is scheduled.
    scheduled_end: u64,
    window: u64,
    max_window: u64,
    chunk_size: u64,
}

async fn fetch(store: Arc<dyn ObjectStore>, bucket: String, key: String, start: u64, end: u64) -> StoreResult<Bytes> {
    let resp = store.get_object(&bucket, &key, Some(start..end)).await?;
    let mut body = resp.body;
    let mut buf = BytesMut::with_capacity((end - start) as usize);
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf.freeze())
}

impl Reader {
    /// A reader of `size` bytes of `key`.
    pub fn new(store: Arc<dyn ObjectStore>, bucket: String, key: String, size: u64, read_ahead: u64) -> Self {
        Reader {
            store,
            bucket,
            key,
            size,
            chunks: VecDeque::new(),
            last_end: None,
            scheduled_end: 0,
            window: FIRST_CHUNK,
            max_window: read_ahead.max(FIRST_CHUNK),
            chunk_size: CHUNK.min(read_ahead.max(FIRST_CHUNK)),
        }
    }

    fn covered(&self, off: u64) -> bool {
        self.chunks.front().is_some_and(|c| c.start <= off) && off < self.scheduled_end
    }

    fn reset(&mut self) {
        for c in self.chunks.drain(..) {
            if let ChunkData::Pending(h) = c.data {
                h.abort();
            }
        }
        self.window = FIRST_CHUNK;
    }

    fn schedule(&mut self, from: u64, upto: u64) {
        if self.chunks.is_empty() {
            self.scheduled_end = from;
        }
        while self.scheduled_end < upto.min(self.size) {
            let start = self.scheduled_end;
            let len = if self.chunks.is_empty() {
                self.window.min(self.chunk_size)
            } else {
                self.chunk_size.min(self.window)
            };
            let end = (start + len).min(self.size);
            let h = tokio::spawn(fetch(self.store.clone(), self.bucket.clone(), self.key.clone(), start, end));
            self.chunks.push_back(Chunk { start, end, data: ChunkData::Pending(h) });
            self.scheduled_end = end;
        }
    }

    /// Reads up to `len` bytes at `off` (short only at end of file).
    pub async fn read(&mut self, off: u64, len: u32) -> FsResult<Bytes> {
        if off >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (off + len as u64).min(self.size);
        // The kernel's read-ahead sends several reads at once and they can arrive out of
        // order: a read a little behind the window is served on its own, one a little
        // ahead extends it; neither counts as a jump that ends the sequential stream.
        let behind = self.chunks.front().is_some_and(|c| off < c.start && c.start - off <= self.max_window);
        if behind {
            return self.fetch_exact(off, end).await;
        }
        let ahead = !self.chunks.is_empty() && off >= self.scheduled_end && off - self.scheduled_end <= self.max_window;
        // Within a few reads of the previous one: a stream whose reads were reordered.
        let near = self.last_end.is_some_and(|e| off.abs_diff(e) <= 4 * u64::from(len));
        let sequential = near || self.covered(off) || ahead;
        self.last_end = Some(end);
        if !sequential {
            // Random access: exactly the bytes asked for, no prefetch.
            self.reset();
            return self.fetch_exact(off, end).await;
        }
        if !self.covered(off) && !ahead {
            self.reset();
        }
        // Drop chunks the reader has moved past (one kept behind for reordered reads).
        while self.chunks.len() > 1 && self.chunks.get(1).is_some_and(|c| c.start <= off) {
            self.chunks.pop_front();
        }
        self.schedule(off, end.max(off + self.window));
        self.window = (self.window * 2).min(self.max_window);
        // Most reads fall inside one chunk: hand out a slice of it, no copy.
        let single = self.chunks.iter().position(|c| c.start <= off && end <= c.end);
        if let Some(i) = single {
            let data = self.ready(i).await?;
            let (from, to) = ((off - self.chunks[i].start) as usize, (end - self.chunks[i].start) as usize);
            if to > data.len() {
                self.reset();
                return Err(Errno::EIO);
            }
            return Ok(data.slice(from..to));
        }
        let mut out = BytesMut::with_capacity((end - off) as usize);
        for c in self.chunks.iter_mut() {
            if c.end <= off || c.start >= end {
                continue;
            }
            let data = Self::wait(c).await?;
            let from = off.max(c.start) - c.start;
            let to = end.min(c.end) - c.start;
            if to as usize > data.len() {
                return Err(Errno::EIO);
            }
            out.extend_from_slice(&data[from as usize..to as usize]);
        }
        if out.len() as u64 != end - off {
            self.reset();
            return Err(Errno::EIO);
        }
        Ok(out.freeze())
    }
}

impl Reader {
    /// Exactly the bytes asked for, in one GET.
    async fn fetch_exact(&self, off: u64, end: u64) -> FsResult<Bytes> {
        fetch(self.store.clone(), self.bucket.clone(), self.key.clone(), off, end)
            .await
            .map_err(|e| store_errno("read", &e))
    }

    /// The data of chunk `i`, once its GET is done.
    async fn ready(&mut self, i: usize) -> FsResult<Bytes> {
        Self::wait(&mut self.chunks[i]).await
    }

    async fn wait(c: &mut Chunk) -> FsResult<Bytes> {
        if let ChunkData::Pending(h) = &mut c.data {
            let data = match h.await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return Err(store_errno("read", &e)),
                Err(_) => return Err(Errno::EIO),
            };
            c.data = ChunkData::Ready(data);
        }
        let ChunkData::Ready(data) = &c.data else { unreachable!("awaited above") };
        Ok(data.clone())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3vol_store::{CountingStore, MemoryStore, PutOptions};

    /// The kernel's read-ahead has several reads in flight; they reach the reader out of
    /// order. The stream must stay sequential: large prefetch GETs, not one GET per read.
    #[tokio::test]
    async fn reordered_sequential_reads_keep_prefetching() {
        const MIB: u64 = 1 << 20;
        let size = 64 * MIB;
        let mem = Arc::new(MemoryStore::with_buckets(&["b"]));
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        mem.put_object("b", "k", Bytes::from(data.clone()), &PutOptions::default()).await.unwrap();
        let counting = Arc::new(CountingStore::new(mem, "t"));
        let counts = counting.counts();
        let mut r = Reader::new(counting, "b".into(), "k".into(), size, 16 * MIB);
        // Groups of four 1 MiB reads arrive as 2, 0, 3, 1.
        for group in 0..size / (4 * MIB) {
            for i in [2, 0, 3, 1] {
                let off = (group * 4 + i) * MIB;
                let got = r.read(off, MIB as u32).await.unwrap();
                assert_eq!(&got[..], &data[off as usize..(off + MIB) as usize], "at {off}");
            }
        }
        let gets = counts.get("GetObject");
        assert!(gets <= 24, "{gets} GETs for 64 reads: the stream fell back to one GET per read");
    }
}
