//! A node-local read cache of object data, per volume: the second epoch over a dataset
//! reads from local disk instead of the store.
//!
//! Blocks of `block_size` bytes are keyed by the object's key, ETag, size and block
//! number, so a block of an object that changed is never found again. The cache stays
//! within `max_bytes` and leaves `min_free` of its filesystem free, evicting the least
//! recently used blocks first. It lives in a directory that outlives the server (the node
//! plugin keeps one per volume), so a successor server after a handover, crash or upgrade
//! finds it again; a lock file keeps two servers from using one directory at once (the
//! successor waits for it), and every block is verified before use. When the disk fails
//! (ENOSPC, EIO) the cache turns itself off for a while: reads go on from the store and
//! never see an error of the cache.

mod block_file;
mod index;

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::fcntl::{Flock, FlockArg};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use block_file::BlockName;
use index::Index;

/// Default block size: large enough that a block is one efficient GET, small enough that
/// random reads of a large file cache only what they touch.
pub const DEFAULT_BLOCK_SIZE: u64 = 1024 * 1024;
/// How long the cache stays off after its disk failed a write.
const OFF_AFTER_ERROR: Duration = Duration::from_secs(30);
/// How often a server waiting for its predecessor's lock tries again.
const LOCK_RETRY: Duration = Duration::from_secs(1);
/// Bytes of blocks waiting to be written; beyond it new blocks are not cached (a slow disk
/// must not hold the reader's memory).
const MAX_PENDING_WRITES: u64 = 64 * 1024 * 1024;

/// Where and how large one volume's read cache is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadCacheConfig {
    /// The volume's cache directory (created 0700; must belong to this user).
    pub dir: PathBuf,
    /// Bound on the bytes of cached blocks (headers included).
    pub max_bytes: u64,
    /// Share of the cache filesystem, in thousandths, to leave free.
    pub min_free_permille: u32,
    /// Bytes per block.
    pub block_size: u64,
    /// The volume's name in metrics.
    pub volume: String,
}

/// The cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("read cache directory {}: {why}", dir.display())]
pub struct ReadCacheError {
    /// The directory.
    pub dir: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

/// What the cache did, for tests and `s3vol check`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadCacheStats {
    /// Bytes of reads served from cached blocks.
    pub hit_bytes: u64,
    /// Bytes of reads that came from the store for lack of a cached block.
    pub miss_bytes: u64,
    /// Blocks evicted to stay within the bounds.
    pub evicted_blocks: u64,
    /// Blocks found damaged (length or checksum) and dropped.
    pub dropped_blocks: u64,
    /// Writes the disk refused (the cache then turns off for a while).
    pub write_errors: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// Largest number of bytes ever held or reserved at once.
    pub peak_bytes: u64,
}

/// The object a block belongs to: its key and the version (ETag and size) read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    /// Key in the bucket.
    pub key: String,
    /// ETag as the store reports it (non-empty).
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
}

impl ObjectVersion {
    fn block_name(&self, block: u64) -> BlockName {
        let mut h = Sha256::new();
        for part in [self.key.as_bytes(), self.etag.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(self.size.to_le_bytes());
        h.update(block.to_le_bytes());
        h.finalize().into()
    }
}

/// One volume's read cache; cheap to clone and share between readers.
#[derive(Clone)]
pub struct ReadCache {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ReadCacheConfig,
    state: Mutex<State>,
    pending_writes: AtomicU64,
    hit_bytes: AtomicU64,
    miss_bytes: AtomicU64,
    evicted: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
    peak: AtomicU64,
}

struct State {
    /// Held while this server owns the directory.
    lock: Option<Flock<File>>,
    /// A lock attempt (and the scan after it) is running.
    locking: bool,
    next_lock_try: Instant,
    off_until: Option<Instant>,
    index: Index,
}

impl ReadCache {
    /// Opens (creating) the cache directory. If another server still holds it (a handover
    /// under way), the cache starts empty-handed and takes over once that lock is free.
    pub fn open(cfg: ReadCacheConfig) -> Result<ReadCache, ReadCacheError> {
        let err = |why: String| ReadCacheError { dir: cfg.dir.clone(), why };
        if !cfg.dir.is_absolute() {
            return Err(err("must be an absolute path".into()));
        }
        if cfg.block_size == 0 || cfg.max_bytes < cfg.block_size + block_file::HEADER as u64 {
            return Err(err(format!("a cache of {} bytes cannot hold one block of {}", cfg.max_bytes, cfg.block_size)));
        }
        private_dir(&cfg.dir).map_err(err)?;
        for sub in ["blocks", "tmp"] {
            private_dir(&cfg.dir.join(sub)).map_err(err)?;
        }
        let cache = ReadCache {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(State {
                    lock: None,
                    locking: false,
                    next_lock_try: Instant::now(),
                    off_until: None,
                    index: Index::default(),
                }),
                pending_writes: AtomicU64::new(0),
                hit_bytes: AtomicU64::new(0),
                miss_bytes: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                write_errors: AtomicU64::new(0),
                peak: AtomicU64::new(0),
            }),
        };
        // Every series from the start (at 0), so dashboards and alerts see the volume.
        let v = cache.inner.cfg.volume.clone();
        for result in ["hit", "miss"] {
            metrics::counter!("s3vol_read_cache_bytes_total", "volume" => v.clone(), "result" => result).increment(0);
        }
        metrics::counter!("s3vol_read_cache_evictions_total", "volume" => v.clone()).increment(0);
        metrics::counter!("s3vol_read_cache_dropped_blocks_total", "volume" => v.clone()).increment(0);
        metrics::gauge!("s3vol_read_cache_size_bytes", "volume" => v).set(0.0);
        cache.inner.state.lock().locking = true;
        cache.inner.try_take_over();
        Ok(cache)
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u64 {
        self.inner.cfg.block_size
    }

    /// Whether this server owns the directory (tests wait for it after a handover).
    pub fn is_owner(&self) -> bool {
        self.inner.state.lock().lock.is_some()
    }

    /// What the cache did so far.
    pub fn stats(&self) -> ReadCacheStats {
        let i = &self.inner;
        ReadCacheStats {
            hit_bytes: i.hit_bytes.load(Ordering::Relaxed),
            miss_bytes: i.miss_bytes.load(Ordering::Relaxed),
            evicted_blocks: i.evicted.load(Ordering::Relaxed),
            dropped_blocks: i.dropped.load(Ordering::Relaxed),
            write_errors: i.write_errors.load(Ordering::Relaxed),
            bytes: i.state.lock().index.total(),
            peak_bytes: i.peak.load(Ordering::Relaxed),
        }
    }

    /// Block `block` of `obj`, if cached and intact.
    pub async fn get(&self, obj: &ObjectVersion, block: u64) -> Option<Bytes> {
        let name = obj.block_name(block);
        if !self.inner.usable() || !self.inner.state.lock().index.is_written(&name) {
            return None;
        }
        let inner = self.inner.clone();
        let got = tokio::task::spawn_blocking(move || {
            let path = inner.block_path(&name);
            let res = block_file::read(&path, &name);
            let mut st = inner.state.lock();
            match res {
                Ok(Ok(data)) => {
                    st.index.touch(&name);
                    Some(data)
                }
                Ok(Err(why)) => {
                    st.index.remove(&name);
                    drop(st);
                    let _ = std::fs::remove_file(&path);
                    inner.dropped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("s3vol_read_cache_dropped_blocks_total", "volume" => inner.cfg.volume.clone())
                        .increment(1);
                    tracing::warn!(file = %path.display(), ?why, "a damaged read cache block was dropped");
                    None
                }
                Err(e) => {
                    st.index.remove(&name);
                    tracing::debug!(file = %path.display(), error = %e, "a read cache block could not be read");
                    None
                }
            }
        })
        .await
        .ok()
        .flatten()?;
        Some(Bytes::from(got))
    }

    /// Counts `bytes` of a read served from cached blocks.
    pub fn note_hit(&self, bytes: u64) {
        self.inner.hit_bytes.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("s3vol_read_cache_bytes_total", "volume" => self.inner.cfg.volume.clone(), "result" => "hit")
            .increment(bytes);
    }

    /// Counts `bytes` of a read that had to come from the store.
    pub fn note_miss(&self, bytes: u64) {
        self.inner.miss_bytes.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("s3vol_read_cache_bytes_total", "volume" => self.inner.cfg.volume.clone(), "result" => "miss")
            .increment(bytes);
    }

    /// Stores block `block` of `obj` in the background. Never fails: a block that cannot
    /// be cached is simply not cached.
    pub fn put(&self, obj: &ObjectVersion, block: u64, data: Bytes) {
        let inner = &self.inner;
        if !inner.usable() {
            return;
        }
        let len = data.len() as u64;
        if inner.pending_writes.fetch_add(len, Ordering::Relaxed) + len > MAX_PENDING_WRITES {
            inner.pending_writes.fetch_sub(len, Ordering::Relaxed);
            return;
        }
        let name = obj.block_name(block);
        let bytes = len + block_file::HEADER as u64;
        let evicted = {
            let mut st = inner.state.lock();
            if st.index.contains(&name) {
                inner.pending_writes.fetch_sub(len, Ordering::Relaxed);
                return;
            }
            let Some(evicted) = st.index.reserve(name, bytes, inner.cfg.max_bytes) else {
                inner.pending_writes.fetch_sub(len, Ordering::Relaxed);
                return;
            };
            inner.peak.fetch_max(st.index.total(), Ordering::Relaxed);
            evicted
        };
        let inner = inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.delete(&evicted);
            inner.write_block(name, &data);
            inner.pending_writes.fetch_sub(len, Ordering::Relaxed);
        });
    }

    /// Removes a volume's cache directory (the volume is unstaged or deleted).
    pub fn discard(dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Inner {
    fn block_path(&self, name: &BlockName) -> PathBuf {
        let hex = hex::encode(name);
        self.cfg.dir.join("blocks").join(&hex[..2]).join(hex)
    }

    /// Whether reads and writes may use the cache now; starts a lock attempt when one is due.
    fn usable(self: &Arc<Self>) -> bool {
        let mut st = self.state.lock();
        if st.off_until.is_some_and(|t| t > Instant::now()) {
            return false;
        }
        st.off_until = None;
        if st.lock.is_some() {
            return true;
        }
        if !st.locking && st.next_lock_try <= Instant::now() {
            st.locking = true;
            let me = self.clone();
            drop(st);
            match tokio::runtime::Handle::try_current() {
                Ok(_) => drop(tokio::task::spawn_blocking(move || me.try_take_over())),
                Err(_) => me.try_take_over(),
            }
        }
        false
    }

    /// Takes the directory's lock if it is free, then learns what the directory holds.
    fn try_take_over(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        let took = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.cfg.dir.join("lock"))
            .ok()
            .and_then(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).ok());
        let Some(lock) = took else {
            let mut st = self.state.lock();
            st.locking = false;
            st.next_lock_try = Instant::now() + LOCK_RETRY;
            tracing::debug!(dir = %self.cfg.dir.display(), "the read cache is still held by another server");
            return;
        };
        let index = self.scan();
        let mut st = self.state.lock();
        st.index = index;
        st.lock = Some(lock);
        st.locking = false;
        tracing::info!(dir = %self.cfg.dir.display(), blocks = st.index.len(), bytes = st.index.total(), "read cache ready");
    }

    /// The blocks a predecessor left, oldest use first; half-written files are removed and
    /// what exceeds today's bounds is evicted.
    fn scan(&self) -> Index {
        if let Ok(rd) = std::fs::read_dir(self.cfg.dir.join("tmp")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut found = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.cfg.dir.join("blocks")) {
            for sub in rd.flatten() {
                let Ok(files) = std::fs::read_dir(sub.path()) else { continue };
                for f in files.flatten() {
                    let name =
                        hex::decode(f.file_name().as_encoded_bytes()).ok().and_then(|v| BlockName::try_from(v).ok());
                    match (name, f.metadata()) {
                        (Some(name), Ok(m)) => found.push((m.mtime(), m.mtime_nsec(), name, m.len())),
                        _ => {
                            let _ = std::fs::remove_file(f.path());
                        }
                    }
                }
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, _, name, len) in found {
            match index.reserve(name, len, self.cfg.max_bytes) {
                Some(evicted) => {
                    index.mark_written(&name);
                    self.delete(&evicted)
                }
                None => self.delete(&[name]),
            }
        }
        self.publish_size(index.total());
        index
    }

    fn write_block(&self, name: BlockName, data: &[u8]) {
        let bytes = data.len() as u64 + block_file::HEADER as u64;
        if !self.room_for(bytes) {
            let evicted = {
                let mut st = self.state.lock();
                st.index.remove(&name);
                st.index.evict(4 * bytes)
            };
            self.delete(&evicted);
            return;
        }
        let tmp = self.cfg.dir.join("tmp").join(format!("{}.{}", hex::encode(&name[..8]), std::process::id()));
        let path = self.block_path(&name);
        let res = block_file::write(&tmp, &name, data).and_then(|()| {
            let parent = path.parent().expect("blocks/xx");
            // Another write may create the same fan-out directory at the same moment.
            match std::fs::DirBuilder::new().mode(0o700).create(parent) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            std::fs::rename(&tmp, &path)
        });
        let mut st = self.state.lock();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            st.index.remove(&name);
            st.off_until = Some(Instant::now() + OFF_AFTER_ERROR);
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(dir = %self.cfg.dir.display(), error = %e, "the read cache could not write a block; it is off for {}s, reads go to the store", OFF_AFTER_ERROR.as_secs());
        } else if !st.index.mark_written(&name) {
            // Evicted (or dropped) while it was being written.
            let _ = std::fs::remove_file(&path);
        }
        self.publish_size(st.index.total());
    }

    /// Whether writing `bytes` leaves the cache filesystem's free share above the floor.
    fn room_for(&self, bytes: u64) -> bool {
        let Ok(s) = nix::sys::statvfs::statvfs(&self.cfg.dir) else { return false };
        let unit = s.fragment_size();
        let total = s.blocks() * unit;
        let avail = s.blocks_available() * unit;
        avail.saturating_sub(bytes) * 1000 >= total * u64::from(self.cfg.min_free_permille)
    }

    fn delete(&self, names: &[BlockName]) {
        for n in names {
            let _ = std::fs::remove_file(self.block_path(n));
        }
        if !names.is_empty() {
            self.evicted.fetch_add(names.len() as u64, Ordering::Relaxed);
            metrics::counter!("s3vol_read_cache_evictions_total", "volume" => self.cfg.volume.clone())
                .increment(names.len() as u64);
        }
    }

    fn publish_size(&self, bytes: u64) {
        metrics::gauge!("s3vol_read_cache_size_bytes", "volume" => self.cfg.volume.clone()).set(bytes as f64);
    }
}

/// Creates `dir` 0700 if missing; an existing one must be a directory of this user, and is
/// made private.
fn private_dir(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| e.to_string())?;
        }
        Err(e) => return Err(e.to_string()),
        Ok(m) if !m.is_dir() => return Err("exists and is not a directory".into()),
        Ok(m) if m.uid() != nix::unistd::geteuid().as_raw() => {
            return Err(format!("belongs to uid {}, not to this server's user", m.uid()))
        }
        Ok(_) => {}
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
