//! The write path. New files and truncating overwrites stream to the store while the
//! application writes: data collects into `part_size` parts that are uploaded
//! `upload_concurrency` at a time as a multipart upload, completed on flush/fsync. Any
//! other write pattern (append to an existing object, a seek backwards, a read on a
//! read-write handle) moves the file into a local staging file under `cache_dir`, which
//! is uploaded whole on flush. Upload errors are returned by flush/fsync, never dropped.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use s3vol_store::{CompletedPart, ErrorKind, ObjectStore, PutOptions, StoreResult};
use tokio::task::JoinSet;

use crate::budget::{MemoryBudget, Reservation};
use crate::error::{store_errno, Errno, FsResult};
use crate::staging::{StagingFile, StagingReader};

/// Upload settings shared by every writer of a mount.
#[derive(Clone)]
pub struct WriteConfig {
    /// Part size in bytes.
    pub part_size: u64,
    /// Parts in flight per file.
    pub concurrency: usize,
    /// Where staging files go.
    pub cache_dir: PathBuf,
    /// Largest file that may be staged.
    pub cache_limit: u64,
    /// The mount's memory budget: every part buffer is reserved from it.
    pub budget: MemoryBudget,
}

struct Streaming {
    buf: BytesMut,
    upload_id: Option<String>,
    next_part: i32,
    parts: Vec<CompletedPart>,
    /// Part uploads in flight; each hands its buffer back when done.
    inflight: JoinSet<(StoreResult<CompletedPart>, Bytes)>,
    /// Buffers of uploaded parts, reused for the next parts: no fresh memory (page faults,
    /// zeroing) per part, and at most `upload_concurrency + 1` part buffers per file.
    spare: Vec<BytesMut>,
    /// One reservation from the mount's budget per part buffer this writer holds (being
    /// filled, uploading, or spare); given back with the buffer.
    reserved: Vec<Reservation>,
}

impl Streaming {
    /// Takes the result of a finished part upload, keeping its buffer for reuse.
    fn finished(
        &mut self,
        res: Result<(StoreResult<CompletedPart>, Bytes), tokio::task::JoinError>,
        keep: usize,
        budget: &MemoryBudget,
    ) -> FsResult<()> {
        let (res, body) = res.map_err(|e| {
            tracing::error!(error = %e, "a part upload task failed");
            Errno::EIO
        })?;
        let kept = match body.try_into_mut() {
            // Under memory pressure the buffer goes back to the budget instead.
            Ok(mut buf) if self.spare.len() < keep && !budget.under_pressure() => {
                buf.clear();
                self.spare.push(buf);
                true
            }
            _ => false,
        };
        if !kept {
            self.reserved.pop();
        }
        self.parts.push(res.map_err(|e| store_errno("write", &e))?);
        Ok(())
    }
}

enum Mode {
    Streaming(Streaming),
    Staged(StagingFile),
    /// Uploaded; the next write stages the object from the store first.
    Committed,
}

/// A streaming upload in the middle, as one server hands it to the next (graceful
/// handover): the multipart upload keeps going under the same id, and the bytes not yet
/// sent as a part travel with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// The multipart upload, once one was started.
    pub upload_id: Option<String>,
    /// Number the next part gets.
    pub next_part: i32,
    /// Parts already uploaded.
    pub parts: Vec<CompletedPart>,
    /// Written bytes not yet uploaded (less than a part).
    pub buffer: Bytes,
    /// Size of the file so far.
    pub size: u64,
}

/// One open file's pending content.
pub struct Writer {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    key: String,
    /// Metadata and content type the object gets.
    pub put: PutOptions,
    cfg: WriteConfig,
    mode: Mode,
    size: u64,
    dirty: bool,
    failed: Option<Errno>,
    /// The file's name was unlinked while open: content stays local for this handle's
    /// reads and writes, and nothing is ever uploaded.
    detached: bool,
}

impl Writer {
    /// A writer for a new (or truncated) object: starts empty, streams.
    pub fn new_stream(
        store: Arc<dyn ObjectStore>,
        bucket: String,
        key: String,
        put: PutOptions,
        cfg: WriteConfig,
    ) -> Self {
        let mode = Mode::Streaming(Streaming {
            buf: BytesMut::new(),
            upload_id: None,
            next_part: 1,
            parts: Vec::new(),
            inflight: JoinSet::new(),
            spare: Vec::new(),
            reserved: Vec::new(),
        });
        Writer { store, bucket, key, put, cfg, mode, size: 0, dirty: true, failed: None, detached: false }
    }

    /// A writer over an existing object of `size` bytes; staged on the first write.
    pub fn existing(
        store: Arc<dyn ObjectStore>,
        bucket: String,
        key: String,
        put: PutOptions,
        cfg: WriteConfig,
        size: u64,
    ) -> Self {
        Writer {
            store,
            bucket,
            key,
            put,
            cfg,
            mode: Mode::Committed,
            size,
            dirty: false,
            failed: None,
            detached: false,
        }
    }

    /// Current logical size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether there is content not yet in the store.
    pub fn is_dirty(&self) -> bool {
        self.dirty && !self.detached
    }

    /// For a graceful handover: waits for the parts in flight and returns the state of a
    /// streaming upload, so that a successor continues it ([`Writer::resume_stream`]).
    /// `None` when the writer is not streaming (commit it instead). This writer must not
    /// be used afterwards: the upload belongs to the successor.
    pub async fn export_stream(&mut self) -> FsResult<Option<StreamState>> {
        if self.detached || self.failed.is_some() {
            return Ok(None);
        }
        let Mode::Streaming(s) = &mut self.mode else { return Ok(None) };
        while let Some(h) = s.inflight.join_next().await {
            s.finished(h, 0, &self.cfg.budget)?;
        }
        Ok(Some(StreamState {
            upload_id: s.upload_id.clone(),
            next_part: s.next_part,
            parts: s.parts.clone(),
            buffer: Bytes::copy_from_slice(&s.buf),
            size: self.size,
        }))
    }

    /// A writer continuing a streaming upload a predecessor exported.
    pub fn resume_stream(
        store: Arc<dyn ObjectStore>,
        bucket: String,
        key: String,
        put: PutOptions,
        cfg: WriteConfig,
        st: StreamState,
    ) -> Self {
        let mut buf = BytesMut::with_capacity(cfg.part_size as usize);
        buf.extend_from_slice(&st.buffer);
        let mode = Mode::Streaming(Streaming {
            buf,
            upload_id: st.upload_id,
            next_part: st.next_part,
            parts: st.parts,
            inflight: JoinSet::new(),
            spare: Vec::new(),
            reserved: Vec::new(),
        });
        Writer { store, bucket, key, put, cfg, mode, size: st.size, dirty: true, failed: None, detached: false }
    }

    /// Whether the file was unlinked while this handle was open.
    pub fn is_detached(&self) -> bool {
        self.detached
    }

    /// Whether part of the content already went to the store as parts of a multipart
    /// upload, which is bound to the key it started under.
    pub fn upload_started(&self) -> bool {
        matches!(&self.mode, Mode::Streaming(s) if s.upload_id.is_some())
    }

    /// The key and id of the multipart upload in progress, if one is.
    pub fn upload(&self) -> Option<(&str, &str)> {
        match &self.mode {
            Mode::Streaming(s) => s.upload_id.as_deref().map(|id| (self.key.as_str(), id)),
            _ => None,
        }
    }

    /// The file was renamed while open: pending content goes to `key` from now on.
    /// Call only when no upload has started (see [`Writer::upload_started`]).
    pub fn retarget(&mut self, key: String, put: PutOptions) {
        debug_assert!(!self.upload_started(), "a started multipart upload cannot change its key");
        self.key = key;
        self.put = put;
    }

    /// The file was unlinked while open (POSIX: its data lives on until the last close).
    /// The content moves to the staging file, if it is not there already, so this handle
    /// keeps reading and writing it; nothing is uploaded from now on. Parts of a started
    /// upload are abandoned: the bytes they held can no longer be read back (EIO), the
    /// close still succeeds, since nothing was to be kept.
    pub async fn detach(&mut self) {
        if self.detached {
            return;
        }
        if self.upload_started() {
            self.abort().await;
            self.mode = Mode::Committed;
            self.failed = Some(Errno::EIO);
        } else if let Err(e) = self.stage().await {
            self.failed = Some(e);
        }
        self.detached = true;
        self.dirty = false;
    }

    async fn stage(&mut self) -> FsResult<()> {
        if matches!(self.mode, Mode::Staged(_)) {
            return Ok(());
        }
        if self.size > self.cfg.cache_limit {
            tracing::warn!(key = %self.key, size = self.size, limit = self.cfg.cache_limit, "file too large for the staging cache (cache_size)");
            return Err(Errno::EFBIG);
        }
        let staged = StagingFile::create(&self.cfg.cache_dir).await?;
        match std::mem::replace(&mut self.mode, Mode::Committed) {
            Mode::Streaming(s) => {
                if s.upload_id.is_some() {
                    // Parts already left for the store: this is a non-sequential write after streaming began.
                    self.mode = Mode::Streaming(s);
                    tracing::warn!(key = %self.key, "out-of-order write after part of the file was uploaded; not supported (see SEMANTICS.md)");
                    return Err(Errno::EINVAL);
                }
                staged.write_at(s.buf.freeze(), 0).await?;
            }
            Mode::Committed if self.size > 0 => {
                let resp =
                    self.store.get_object(&self.bucket, &self.key, None).await.map_err(|e| store_errno("stage", &e))?;
                let mut body = resp.body;
                let mut off = 0u64;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| store_errno("stage", &e))?;
                    let n = chunk.len() as u64;
                    staged.write_at(chunk, off).await?;
                    off += n;
                }
                self.size = off;
            }
            _ => {}
        }
        self.mode = Mode::Staged(staged);
        Ok(())
    }

    /// Writes `data` at `off`.
    pub async fn write(&mut self, off: u64, data: &[u8]) -> FsResult<u32> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if matches!(self.mode, Mode::Committed) && self.size == 0 && off == 0 {
            // Rewriting an empty (or just truncated) file from the start streams too.
            *self = Writer::new_stream(
                self.store.clone(),
                self.bucket.clone(),
                self.key.clone(),
                self.put.clone(),
                self.cfg.clone(),
            );
        }
        if matches!(self.mode, Mode::Streaming(_)) && off == self.size {
            // Fill each part buffer exactly, so a full part leaves as a buffer of its own.
            let part = self.cfg.part_size.max(1) as usize;
            let mut rest = data;
            while !rest.is_empty() {
                let Mode::Streaming(s) = &mut self.mode else { unreachable!("checked above") };
                if s.buf.is_empty() && s.buf.capacity() < part.min(FIRST_BUFFER) {
                    match next_buffer(s, &self.cfg).await {
                        Ok(b) => s.buf = b,
                        Err(e) => {
                            self.failed = Some(e);
                            return Err(e);
                        }
                    }
                }
                let take = part.saturating_sub(s.buf.len()).max(1).min(rest.len());
                if s.buf.len() + take > s.buf.capacity() && s.buf.capacity() < part {
                    // The file outgrew its small first buffer: on to a whole part (its
                    // memory was reserved with the first one).
                    let mut whole = BytesMut::with_capacity(part);
                    whole.extend_from_slice(&s.buf);
                    s.buf = whole;
                }
                s.buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                self.size += take as u64;
                self.dirty = true;
                if let Err(e) = self.pump(false).await {
                    self.failed = Some(e);
                    return Err(e);
                }
            }
            return Ok(data.len() as u32);
        }
        self.stage().await?;
        let Mode::Staged(st) = &self.mode else { unreachable!("staged above") };
        if off + data.len() as u64 > self.cfg.cache_limit {
            return Err(Errno::EFBIG);
        }
        st.write_at(Bytes::copy_from_slice(data), off).await?;
        self.size = self.size.max(off + data.len() as u64);
        self.dirty = true;
        Ok(data.len() as u32)
    }

    /// Reads back pending content (read on a read-write handle).
    pub async fn read(&mut self, off: u64, len: u32) -> FsResult<Bytes> {
        self.stage().await?;
        let Mode::Staged(st) = &self.mode else { unreachable!("staged above") };
        let end = (off + len as u64).min(self.size);
        if off >= end {
            return Ok(Bytes::new());
        }
        st.read_at(off, end - off).await
    }

    /// Changes the size (truncate/extend).
    pub async fn set_size(&mut self, size: u64) -> FsResult<()> {
        if size == self.size {
            return Ok(());
        }
        if size == 0 && !self.detached {
            self.abort().await;
            *self = Writer::new_stream(
                self.store.clone(),
                self.bucket.clone(),
                self.key.clone(),
                self.put.clone(),
                self.cfg.clone(),
            );
            return Ok(());
        }
        if let Mode::Streaming(s) = &mut self.mode {
            if s.upload_id.is_none() && size < self.size {
                s.buf.truncate(size as usize);
                self.size = size;
                self.dirty = true;
                return Ok(());
            }
        }
        self.stage().await?;
        let Mode::Staged(st) = &self.mode else { unreachable!("staged above") };
        st.set_len(size).await?;
        self.size = size;
        self.dirty = true;
        Ok(())
    }

    /// Uploads full parts; with `all`, waits for every part in flight.
    async fn pump(&mut self, all: bool) -> FsResult<()> {
        let Mode::Streaming(s) = &mut self.mode else { return Ok(()) };
        let part = self.cfg.part_size as usize;
        while s.buf.len() >= part {
            if s.upload_id.is_none() {
                let id = self
                    .store
                    .create_multipart(&self.bucket, &self.key, &self.put)
                    .await
                    .map_err(|e| store_errno("write", &e))?;
                s.upload_id = Some(id);
            }
            // A buffer that is exactly one part leaves whole (and comes back for reuse).
            let body =
                if s.buf.len() == part { std::mem::take(&mut s.buf).freeze() } else { s.buf.split_to(part).freeze() };
            let (store, bucket, key, id, n) = (
                self.store.clone(),
                self.bucket.clone(),
                self.key.clone(),
                s.upload_id.clone().unwrap_or_default(),
                s.next_part,
            );
            s.next_part += 1;
            s.inflight.spawn(async move {
                let keep = body.clone();
                (store.upload_part(&bucket, &key, &id, n, body).await, keep)
            });
            // Wait for whichever part finishes first, so one slow part does not stall the rest.
            while s.inflight.len() >= self.cfg.concurrency {
                let h = s.inflight.join_next().await.expect("non-empty");
                s.finished(h, self.cfg.concurrency, &self.cfg.budget)?;
            }
        }
        if all {
            while let Some(h) = s.inflight.join_next().await {
                s.finished(h, self.cfg.concurrency, &self.cfg.budget)?;
            }
        }
        Ok(())
    }

    /// Makes the store hold exactly the content written so far. Called by flush, fsync
    /// and release; an upload failure is returned here.
    pub async fn commit(&mut self) -> FsResult<()> {
        if self.detached {
            // Unlinked: there is no name left to upload to.
            return Ok(());
        }
        if let Some(e) = self.failed {
            return Err(e);
        }
        if !self.dirty {
            return Ok(());
        }
        let res = self.commit_inner().await;
        match res {
            Ok(()) => {
                self.mode = Mode::Committed;
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                self.abort().await;
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    async fn commit_inner(&mut self) -> FsResult<()> {
        match &mut self.mode {
            Mode::Streaming(_) => {
                self.pump(true).await?;
                let Mode::Streaming(s) = &mut self.mode else { unreachable!() };
                match s.upload_id.clone() {
                    None => {
                        let body = std::mem::take(&mut s.buf).freeze();
                        self.store
                            .put_object(&self.bucket, &self.key, body, &self.put)
                            .await
                            .map_err(|e| store_errno("flush", &e))
                    }
                    Some(id) => {
                        if !s.buf.is_empty() || s.parts.is_empty() {
                            let body = std::mem::take(&mut s.buf).freeze();
                            let p = self
                                .store
                                .upload_part(&self.bucket, &self.key, &id, s.next_part, body)
                                .await
                                .map_err(|e| store_errno("flush", &e))?;
                            s.next_part += 1;
                            s.parts.push(p);
                        }
                        s.parts.sort_by_key(|p| p.part_number);
                        let parts = s.parts.clone();
                        self.store
                            .complete_multipart(&self.bucket, &self.key, &id, parts)
                            .await
                            .map_err(|e| store_errno("flush", &e))?;
                        s.upload_id = None;
                        Ok(())
                    }
                }
            }
            Mode::Staged(st) => {
                let file = st.reader();
                upload_file(self.store.clone(), &self.bucket, &self.key, &self.put, file, self.size, &self.cfg).await
            }
            Mode::Committed => Ok(()),
        }
    }

    /// Abandons an unfinished multipart upload.
    pub async fn abort(&mut self) {
        if let Mode::Streaming(s) = &mut self.mode {
            s.inflight.abort_all();
            if let Some(id) = s.upload_id.take() {
                if let Err(e) = self.store.abort_multipart(&self.bucket, &self.key, &id).await {
                    tracing::warn!(key = %self.key, error = %e, "could not abort multipart upload; trying again in the background");
                    abort_later(self.store.clone(), self.bucket.clone(), self.key.clone(), id);
                }
            }
        }
    }
}

/// The next part buffer: a spare one, else one reserved from the mount's budget. While
/// the budget is spent, a part of this file finishing uploading gives its buffer instead,
/// so a writer never waits on memory that it holds itself.
async fn next_buffer(s: &mut Streaming, cfg: &WriteConfig) -> FsResult<BytesMut> {
    let part = cfg.part_size.max(1);
    // A file's first buffer starts small (see FIRST_BUFFER); the budget is charged a
    // whole part for it all the same.
    let capacity = if s.next_part == 1 { (part as usize).min(FIRST_BUFFER) } else { part as usize };
    loop {
        if let Some(b) = s.spare.pop() {
            return Ok(b);
        }
        if s.inflight.is_empty() {
            s.reserved.push(cfg.budget.reserve(part).await);
            return Ok(BytesMut::with_capacity(capacity));
        }
        tokio::select! {
            r = cfg.budget.reserve(part) => {
                s.reserved.push(r);
                return Ok(BytesMut::with_capacity(capacity));
            }
            Some(h) = s.inflight.join_next() => s.finished(h, cfg.concurrency, &cfg.budget)?,
        }
    }
}

/// Capacity of a file's first part buffer. Most files of a tree are small: they never take
/// a whole part buffer, which (larger than glibc's mmap threshold, set in main) would be a
/// fresh mapping, faulted in and unmapped again, for every file. A file that grows past it
/// moves to a part-sized buffer once (one copy of at most this much).
const FIRST_BUFFER: usize = 256 << 10;

/// Pauses between background attempts to abort an upload: the store refused the abort
/// (keys revoked, store down) at the time the write failed. About ten minutes in all.
const ABORT_RETRY_PAUSES: [u64; 10] = [2, 4, 8, 16, 30, 60, 60, 120, 120, 180];

/// Keeps trying to abort upload `id` of `key`, so a write that failed while the store was
/// unreachable leaves no parts billed behind once it is back.
fn abort_later(store: Arc<dyn ObjectStore>, bucket: String, key: String, id: String) {
    tokio::spawn(async move {
        for pause in ABORT_RETRY_PAUSES {
            tokio::time::sleep(std::time::Duration::from_secs(pause)).await;
            match store.abort_multipart(&bucket, &key, &id).await {
                Ok(()) => {
                    tracing::info!(%key, "aborted the failed write's multipart upload");
                    return;
                }
                Err(e) if e.kind == ErrorKind::NotFound => return,
                Err(_) => {}
            }
        }
        tracing::warn!(%key, upload_id = %id, "gave up aborting a failed write's multipart upload: abort it with the store's tools or a lifecycle rule (AbortIncompleteMultipartUpload)");
    });
}

async fn join_part(res: Result<StoreResult<CompletedPart>, tokio::task::JoinError>) -> FsResult<CompletedPart> {
    match res {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(store_errno("write", &e)),
        Err(_) => Err(Errno::EIO),
    }
}

/// Uploads a staged file: one PUT when small, else a multipart upload read part by part.
async fn upload_file(
    store: Arc<dyn ObjectStore>,
    bucket: &str,
    key: &str,
    put: &PutOptions,
    file: StagingReader,
    size: u64,
    cfg: &WriteConfig,
) -> FsResult<()> {
    if size <= cfg.part_size {
        let body = file.read_at(0, size).await?;
        return store.put_object(bucket, key, body, put).await.map_err(|e| store_errno("flush", &e));
    }
    let id = store.create_multipart(bucket, key, put).await.map_err(|e| store_errno("flush", &e))?;
    let mut parts = Vec::new();
    let mut inflight: JoinSet<StoreResult<CompletedPart>> = JoinSet::new();
    let mut off = 0;
    let mut n = 1;
    let result: FsResult<()> = async {
        while off < size {
            let len = cfg.part_size.min(size - off);
            let body = file.read_at(off, len).await?;
            let (s, b, k, i) = (store.clone(), bucket.to_string(), key.to_string(), id.clone());
            inflight.spawn(async move { s.upload_part(&b, &k, &i, n, body).await });
            n += 1;
            off += len;
            while inflight.len() >= cfg.concurrency {
                parts.push(join_part(inflight.join_next().await.expect("non-empty")).await?);
            }
        }
        while let Some(h) = inflight.join_next().await {
            parts.push(join_part(h).await?);
        }
        store.complete_multipart(bucket, key, &id, parts.clone()).await.map_err(|e| store_errno("flush", &e))
    }
    .await;
    if result.is_err() {
        inflight.abort_all();
        let _ = store.abort_multipart(bucket, key, &id).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3vol_store::MemoryStore;

    /// A small file keeps a small buffer; one that grows past it moves to a whole part,
    /// and every byte arrives in order either way.
    #[tokio::test]
    async fn a_file_starts_with_a_small_buffer_and_grows_into_a_part() {
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::with_buckets(&["b"]));
        let cfg = WriteConfig {
            part_size: 5 << 20,
            concurrency: 2,
            cache_dir: std::env::temp_dir(),
            cache_limit: 1 << 30,
            budget: MemoryBudget::new(64 << 20),
        };
        let capacity = |w: &Writer| match &w.mode {
            Mode::Streaming(s) => s.buf.capacity(),
            _ => panic!("not streaming"),
        };
        let mut w = Writer::new_stream(store.clone(), "b".into(), "f".into(), PutOptions::default(), cfg.clone());
        let data: Vec<u8> = (0..6 << 20).map(|i: u32| (i % 251) as u8).collect();
        w.write(0, &data[..4096]).await.unwrap();
        assert!(capacity(&w) <= FIRST_BUFFER, "a 4 KiB file holds {} bytes", capacity(&w));
        let mut off = 4096;
        for chunk in data[4096..].chunks(100_000) {
            w.write(off as u64, chunk).await.unwrap();
            off += chunk.len();
            if off > FIRST_BUFFER && off < 5 << 20 {
                assert_eq!(capacity(&w), 5 << 20, "at {off}");
            }
        }
        w.commit().await.unwrap();
        let mut body = store.get_object("b", "f", None).await.unwrap().body;
        let mut got = Vec::new();
        while let Some(c) = body.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert!(got == data, "content differs");
    }

    /// Eight files written at once through a budget that holds three part buffers: every
    /// writer finishes (none waits on memory it holds itself), every object is whole,
    /// and every byte of the budget comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_share_a_small_budget_and_give_it_all_back() {
        const MIB: usize = 1 << 20;
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::with_buckets(&["b"]));
        let budget = MemoryBudget::new(16 * MIB as u64);
        let cfg = WriteConfig {
            part_size: 5 * MIB as u64,
            concurrency: 4,
            cache_dir: std::env::temp_dir(),
            cache_limit: 1 << 30,
            budget: budget.clone(),
        };
        let mut tasks = JoinSet::new();
        for w in 0..8u8 {
            let (store, cfg) = (store.clone(), cfg.clone());
            tasks.spawn(async move {
                let mut wr = Writer::new_stream(store, "b".into(), format!("f{w}"), PutOptions::default(), cfg);
                let chunk = vec![w; MIB];
                for i in 0..30 {
                    wr.write((i * MIB) as u64, &chunk).await.unwrap();
                }
                wr.commit().await.unwrap();
            });
        }
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        })
        .await
        .expect("writers waited forever on the budget");
        for w in 0..8u8 {
            let mut body = store.get_object("b", &format!("f{w}"), None).await.unwrap().body;
            let mut n = 0;
            while let Some(c) = body.next().await {
                let c = c.unwrap();
                assert!(c.iter().all(|&b| b == w));
                n += c.len();
            }
            assert_eq!(n, 30 * MIB);
        }
        assert_eq!(budget.available(), budget.total(), "{budget:?}");
    }
}
