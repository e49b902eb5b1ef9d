//! The read path: sequential reads are served by a prefetcher issuing parallel ranged
//! GETs with a window that grows from a small first request (fast first byte) to
//! `read_ahead`; random reads fetch exactly what was asked.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use s3vol_store::{ErrorKind, ObjectStore, StoreError, StoreResult};
use tokio::task::JoinHandle;

use crate::budget::{MemoryBudget, Reservation};
use crate::cached_fetch::{fetch_through_cache, CachedObject};
use crate::chunk_buf::{ChunkBuf, ChunkPool, PoolUser};
use crate::error::{store_errno, Errno, FsResult};
use crate::read_cache::{ObjectVersion, ReadCache};

/// First prefetch request size: small, so the first bytes come back fast.
const FIRST_CHUNK: u64 = 256 * 1024;
/// Size of each later prefetch request: several run in parallel within the window, as a
/// parallel ranged download does.
const CHUNK: u64 = 8 * 1024 * 1024;

struct Chunk {
    start: u64,
    end: u64,
    data: ChunkData,
    /// Read-ahead's share of the mount's memory budget (none for what a read waits on).
    _reserved: Option<Reservation>,
}

enum ChunkData {
    Pending(JoinHandle<StoreResult<Bytes>>),
    Ready(Bytes),
    /// The GET failed after its retries; the reader resets before the next read.
    Failed(Errno),
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
    /// The mount's memory budget; read-ahead only takes what it can spare.
    budget: Option<MemoryBudget>,
    /// The mount's kept chunk buffers (none: each chunk on the heap).
    chunk_pool: Option<(ChunkPool, PoolUser)>,
    /// The volume's read cache and the version of the object this reader opened.
    cached: Option<CachedObject>,
}

/// Attempts at one ranged GET whose body broke off or came up short. The store client
/// retries requests that fail before the body; a body cut mid-way (a reset connection, a
/// proxy that closes early) is resumed here from the first missing byte.
const BODY_ATTEMPTS: u32 = 5;
/// First pause before resuming a broken body; doubled per attempt, with jitter.
const BODY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Bytes `start..end` of the object, exactly: fewer (a body that ended early) is retried,
/// more (a store that ignored the range) is an error, never data handed out. With the
/// ETag of the version the bytes came from (empty when the store sent none, or when a
/// resumed body came from another version than its start).
pub(crate) async fn fetch_tagged(
    store: Arc<dyn ObjectStore>,
    bucket: String,
    key: String,
    start: u64,
    end: u64,
    pool: Option<ChunkPool>,
) -> StoreResult<(Bytes, String)> {
    let mut etag: Option<String> = None;
    let want = (end - start) as usize;
    let mut buf = match pool {
        Some(p) => p.buffer(want),
        None => ChunkBuf::heap(want),
    };
    let mut attempt = 0;
    loop {
        let from = start + buf.len() as u64;
        let res: StoreResult<()> = async {
            let got = store.get_object(&bucket, &key, Some(from..end)).await?;
            match &etag {
                None => etag = Some(got.meta.etag.clone()),
                Some(e) if *e != got.meta.etag => etag = Some(String::new()),
                Some(_) => {}
            }
            let mut body = got.body;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                if buf.len() + chunk.len() > want {
                    return Err(StoreError::new(
                        ErrorKind::Other,
                        format!(
                            "GET {bucket}/{key} bytes {from}-{end}: the store sent more bytes than the range holds"
                        ),
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(())
        }
        .await;
        let err = match res {
            Ok(()) if buf.len() == want => return Ok((buf.freeze(), etag.unwrap_or_default())),
            Ok(()) => StoreError::new(
                ErrorKind::Unavailable,
                format!("GET {bucket}/{key}: body ended after {} of {want} bytes", buf.len()),
            ),
            Err(e) if e.kind.is_retryable() => e,
            Err(e) => return Err(e),
        };
        attempt += 1;
        if attempt >= BODY_ATTEMPTS {
            return Err(err.context(format!("gave up after {attempt} attempts")));
        }
        tracing::debug!(error = %err, attempt, "resuming a ranged GET");
        tokio::time::sleep(jittered(BODY_BACKOFF * 2u32.pow(attempt - 1))).await;
    }
}

/// `d` scaled by a factor in [0.5, 1.5), so retries of many readers do not line up.
fn jittered(d: std::time::Duration) -> std::time::Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
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
            budget: None,
            chunk_pool: None,
            cached: None,
        }
    }

    /// Reads through `cache`, as the version `etag` of the object (the one the open saw);
    /// without an ETag nothing identifies the version, and the cache is not used.
    pub(crate) fn with_read_cache(mut self, cache: Option<&ReadCache>, etag: &str) -> Self {
        self.cached = match cache {
            Some(cache) if !etag.is_empty() => Some(CachedObject {
                cache: cache.clone(),
                version: ObjectVersion { key: self.key.clone(), etag: etag.to_string(), size: self.size },
            }),
            _ => None,
        };
        self
    }

    /// Fills chunks into `pool`'s buffers, kept for the next chunks while readers exist.
    pub(crate) fn with_chunk_pool(mut self, pool: ChunkPool) -> Self {
        let user = pool.user();
        self.chunk_pool = Some((pool, user));
        self
    }

    fn pool(&self) -> Option<ChunkPool> {
        self.chunk_pool.as_ref().map(|(p, _)| p.clone())
    }

    /// Prefetches only within `budget` (shared by the mount's readers and writers).
    pub fn with_budget(mut self, budget: MemoryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The file was renamed while open: read from `key` from now on. Prefetched data
    /// still in flight for the old key is dropped.
    pub fn retarget(&mut self, key: String) {
        self.reset();
        // A renamed object is a copy, whose ETag the open did not see.
        self.cached = None;
        self.key = key;
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

    /// Schedules GETs from `from` up to `upto`: what a read waits on (before `needed`)
    /// always, read-ahead beyond it only as far as the memory budget allows.
    fn schedule(&mut self, from: u64, needed: u64, upto: u64) {
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
            let mut end = match &self.cached {
                Some(c) => c.aligned_end(start, len),
                None => (start + len).min(self.size),
            };
            let reserved = match &self.budget {
                Some(b) if start >= needed => match b.try_reserve_optional(end - start) {
                    Some(r) => Some(r),
                    // Memory is short: read-ahead stops here and grows back later.
                    None => break,
                },
                Some(b) => match b.try_reserve(end - start) {
                    Some(r) => Some(r),
                    // Not even the read's own chunk fits: fetch only what the read needs
                    // (at most a read's size per reader goes beyond the budget).
                    None => {
                        end = needed.min(self.size).max(start + 1);
                        None
                    }
                },
                None => None,
            };
            let h = tokio::spawn(self.fetch_task(start, end));
            self.chunks.push_back(Chunk { start, end, data: ChunkData::Pending(h), _reserved: reserved });
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
        self.schedule(off, end, end.max(off + self.window));
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
        for i in 0..self.chunks.len() {
            let (c_start, c_end) = (self.chunks[i].start, self.chunks[i].end);
            if c_end <= off || c_start >= end {
                continue;
            }
            let data = self.ready(i).await?;
            let from = off.max(c_start) - c_start;
            let to = end.min(c_end) - c_start;
            if to as usize > data.len() {
                self.reset();
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
    /// Exactly the bytes asked for, in one GET (or from the read cache).
    async fn fetch_exact(&self, off: u64, end: u64) -> FsResult<Bytes> {
        self.fetch_task(off, end).await.map_err(|e| store_errno("read", &e))
    }

    /// Fetches `start..end`, through the read cache when there is one.
    fn fetch_task(
        &self,
        start: u64,
        end: u64,
    ) -> impl std::future::Future<Output = StoreResult<Bytes>> + Send + 'static {
        let (store, bucket, key, pool) = (self.store.clone(), self.bucket.clone(), self.key.clone(), self.pool());
        let cached = self.cached.clone();
        async move {
            match cached {
                Some(c) => fetch_through_cache(&c, store, &bucket, start, end, pool).await,
                None => fetch_tagged(store, bucket, key, start, end, pool).await.map(|(data, _)| data),
            }
        }
    }

    /// The data of chunk `i`, once its GET is done.
    async fn ready(&mut self, i: usize) -> FsResult<Bytes> {
        let res = Self::wait(&mut self.chunks[i]).await;
        if res.is_err() {
            // Failed chunks are not kept: the next read asks the store again.
            self.reset();
        }
        res
    }

    async fn wait(c: &mut Chunk) -> FsResult<Bytes> {
        if let ChunkData::Pending(h) = &mut c.data {
            let res = h.await;
            // The handle is finished now: it must not stay behind to be polled again.
            c.data = match res {
                Ok(Ok(b)) => ChunkData::Ready(b),
                Ok(Err(e)) => {
                    let errno = store_errno("read", &e);
                    c.data = ChunkData::Failed(errno);
                    return Err(errno);
                }
                Err(e) => {
                    tracing::error!(error = %e, "a prefetch task ended without a result");
                    ChunkData::Failed(Errno::EIO)
                }
            };
        }
        match &c.data {
            ChunkData::Ready(data) => Ok(data.clone()),
            ChunkData::Failed(e) => Err(*e),
            ChunkData::Pending(_) => unreachable!("awaited above"),
        }
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
    use s3vol_store::{CountingStore, FaultyStore, GetFault, MemoryStore, PutOptions};

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

    async fn seeded(size: u64) -> (Arc<FaultyStore>, Vec<u8>) {
        let mem = Arc::new(MemoryStore::with_buckets(&["b"]));
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        mem.put_object("b", "k", Bytes::from(data.clone()), &PutOptions::default()).await.unwrap();
        (Arc::new(FaultyStore::new(mem)), data)
    }

    /// Under a flaky network a prefetch GET fails; the read that waits on it gets EIO and
    /// the next read must ask again. It used to poll the finished task a second time:
    /// a panic on the FUSE session thread, and the mount was gone.
    #[tokio::test]
    async fn a_failed_prefetch_fails_one_read_and_the_next_one_works() {
        const MIB: u64 = 1 << 20;
        let (store, data) = seeded(8 * MIB).await;
        let mut r = Reader::new(store.clone(), "b".into(), "k".into(), 8 * MIB, 4 * MIB);
        r.read(0, 128 * 1024).await.unwrap();
        // Everything the reader has scheduled, and what it schedules next, fails.
        store.fail_gets(GetFault::Fail(ErrorKind::Other), 64);
        let mut failed = 0;
        let mut off = 128 * 1024;
        while off < 6 * MIB && store.pending_get_faults() > 0 {
            if r.read(off, 128 * 1024).await.is_err() {
                failed += 1;
            }
            off += 128 * 1024;
        }
        assert!(failed > 0, "the injected failures never reached a read");
        // Drain what is left, then every read is right again (same reader, same offsets).
        while store.pending_get_faults() > 0 {
            let _ = store.get_object("b", "k", Some(0..1)).await;
        }
        for off in (0..8 * MIB).step_by(512 * 1024) {
            let got = r.read(off, 512 * 1024).await.expect("reads after the failures");
            assert_eq!(&got[..], &data[off as usize..(off + 512 * 1024) as usize], "at {off}");
        }
    }

    /// Chunks in mapped, reused buffers (a mount's readers): every byte right across many
    /// chunks, with bodies that break off and are resumed into the same buffer.
    #[tokio::test]
    async fn pooled_chunk_buffers_hold_the_right_bytes() {
        const MIB: u64 = 1 << 20;
        let size = 72 * MIB + 12345;
        let (store, data) = seeded(size).await;
        let pool = ChunkPool::default();
        let mut r = Reader::new(store.clone(), "b".into(), "k".into(), size, 32 * MIB).with_chunk_pool(pool.clone());
        let mut off = 0;
        while off < size {
            if off % (16 * MIB) == 0 {
                store.fail_gets(GetFault::BreakMidBody, 1);
            }
            let got = r.read(off, MIB as u32).await.expect("read");
            let end = (off + MIB).min(size);
            assert_eq!(&got[..], &data[off as usize..end as usize], "at {off}");
            off = end;
        }
        assert!(pool.kept() > 0, "no chunk buffer was kept for reuse");
        drop(r);
        assert_eq!(pool.kept(), 0, "buffers kept after the last reader");
    }

    /// A body that breaks off or ends early is resumed, not reported as EIO.
    #[tokio::test]
    async fn cut_short_bodies_are_resumed() {
        const MIB: u64 = 1 << 20;
        let (store, data) = seeded(4 * MIB).await;
        let mut r = Reader::new(store.clone(), "b".into(), "k".into(), 4 * MIB, 2 * MIB);
        let mut injected = 0;
        for (i, off) in (0..4 * MIB).step_by(256 * 1024).enumerate() {
            // At most two faults queued: fewer than one GET's attempts, however the
            // prefetcher's parallel GETs share them.
            if store.pending_get_faults() == 0 {
                let fault = if i % 2 == 0 { GetFault::Truncate } else { GetFault::BreakMidBody };
                store.fail_gets(fault, 2);
                injected += 2;
            }
            let got = r.read(off, 256 * 1024).await.expect("a cut-short body is retried");
            assert_eq!(&got[..], &data[off as usize..(off + 256 * 1024) as usize], "at {off}");
        }
        assert!(injected - store.pending_get_faults() >= 4, "the prefetcher met too few faults to prove anything");
        // Random reads (one exact GET each) too.
        for off in [3 * MIB + 7, 17, 2 * MIB - 5] {
            while store.pending_get_faults() > 0 {
                let _ = store.get_object("b", "k", Some(0..1)).await;
            }
            store.fail_gets(GetFault::BreakMidBody, 2);
            let got = r.read(off, 4096).await.unwrap();
            assert_eq!(&got[..], &data[off as usize..off as usize + 4096]);
        }
    }

    /// A GET that keeps breaking gives up with EIO after its attempts, never wrong bytes.
    #[tokio::test]
    async fn a_body_that_always_breaks_is_eio() {
        let (store, _) = seeded(1 << 20).await;
        let mut r = Reader::new(store.clone(), "b".into(), "k".into(), 1 << 20, 1 << 20);
        store.fail_gets(GetFault::BreakMidBody, 1000);
        assert_eq!(r.read(1000, 4096).await.unwrap_err(), Errno::EIO);
    }
}
