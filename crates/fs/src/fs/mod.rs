//! [`Fs`]: every filesystem operation, in POSIX terms, over an object store.
//!
//! This file holds the shared state and the helpers every operation uses; the operations
//! are grouped by what they work on: `namespace` (lookups, attributes, forgets), `attrs`
//! (setattr), `dirs` (directory handles), `files` (file handles), `entries` (names made
//! and removed), `journal` (state for a successor server).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use s3vol_store::{collect_body, ErrorKind, ListRequest, ObjectStore, PutOptions};

use crate::attr::{Attr, FileKind, SpecialKind, StoredMeta, S_IFDIR, S_IFLNK, S_IFREG};
use crate::budget::MemoryBudget;
use crate::chunk_buf::ChunkPool;
use crate::dir::{DirEntry, DirStream, VOLUME_MARKER};
use crate::dir_check::{DirCheck, DirChecks};
use crate::dir_index::DirIndex;
use crate::error::{store_errno, Errno, FsResult};
use crate::inode::{Inode, InodeTable, ROOT_INO};
use crate::journal::{decode_all, HandleKind, JournalRecord, StateJournal};
use crate::mime::content_type_for;
use crate::open_files::OpenFiles;
use crate::options::MountOptions;
use crate::prefetch::AttrPrefetch;
use crate::read::Reader;
use crate::write::{StreamState, WriteConfig, Writer};

mod attrs;
mod dirs;
mod entries;
mod files;
mod journal;
mod namespace;

/// What to mount.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Bucket.
    pub bucket: String,
    /// Prefix inside the bucket, empty or ending in `/`.
    pub prefix: String,
    /// Mount options.
    pub options: MountOptions,
    /// Capacity statfs reports, bytes; `None` = 1 PiB.
    pub capacity: Option<u64>,
    /// Refuse writes past `capacity` with ENOSPC (needs [`Fs::measure_usage`] first).
    pub hard_quota: bool,
}

/// Who is calling (from the FUSE request), for ownership of new files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id (for supplementary groups); 0 when unknown.
    pub pid: u32,
}

impl Caller {
    /// Whether this caller may read and/or write an entry with `attr`, by the POSIX rules
    /// the kernel applies (owner, then group incl. supplementary groups, then other).
    pub fn may(&self, attr: &Attr, read: bool, write: bool) -> bool {
        if self.uid == 0 {
            return true;
        }
        let bits = if self.uid == attr.uid {
            attr.perm >> 6
        } else if self.gid == attr.gid || self.in_group(attr.gid) {
            attr.perm >> 3
        } else {
            attr.perm
        } & 7;
        (!read || bits & 4 != 0) && (!write || bits & 2 != 0)
    }

    fn in_group(&self, gid: u32) -> bool {
        if self.pid == 0 {
            return false;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) else { return false };
        status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|g| g.split_whitespace().any(|x| x.parse::<u32>().ok() == Some(gid)))
    }
}

/// statfs answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
}

/// Attribute changes of a setattr.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate).
    pub size: Option<u64>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
}

enum Handle {
    Read {
        ino: u64,
        reader: Reader,
    },
    /// `base`: the size the object has in the store (what the writer replaces), for usage.
    Write {
        ino: u64,
        writer: Box<Writer>,
        base: u64,
    },
    Dir {
        ino: u64,
        stream: DirStream,
    },
    /// A handle a predecessor server opened, rebuilt on first use (see [`Fs::restore`]).
    Restored {
        ino: u64,
        kind: HandleKind,
        /// It held content that died with the predecessor: every use is EIO.
        dirty: bool,
        /// A streaming upload the predecessor handed over: the writer continues it.
        stream: Option<Box<StreamState>>,
    },
}

/// What the store said an entry is, before it gets an inode number.
struct Found {
    kind: FileKind,
    size: u64,
    mtime: SystemTime,
    stored: StoredMeta,
    has_marker: bool,
    /// The object's ETag, when a HEAD found it.
    etag: String,
}

impl Found {
    /// The object a HEAD found: its kind (a file, or a symlink or special node by the
    /// stored mode), size, mtime and stored attributes.
    fn object(m: &s3vol_store::ObjectMeta) -> Found {
        let stored = StoredMeta::from_metadata(&m.metadata);
        Found {
            kind: stored.object_kind(),
            size: m.size,
            mtime: m.last_modified,
            stored,
            has_marker: false,
            etag: m.etag.clone(),
        }
    }
}

/// How long attributes that came from a listing serve `stat`, at least: long enough for an
/// `ls -l` of a large directory to stat what it listed without a request per entry.
const LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(10);

type SharedHandle = Arc<tokio::sync::Mutex<Handle>>;

/// A mounted bucket/prefix. Cheap to share; every method is safe to call concurrently.
pub struct Fs {
    store: Arc<dyn ObjectStore>,
    cfg: FsConfig,
    table: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, SharedHandle>>,
    /// The handles open on each inode, for unlink, rename and setattr.
    open_files: OpenFiles,
    /// When each directory was last listed to its end, for the kernel's directory cache.
    listed: Mutex<HashMap<u64, Instant>>,
    /// Bytes stored under the prefix, once measured (hard quotas, statfs).
    usage: Mutex<Option<u64>>,
    /// What listings and this mount's own changes showed each directory to hold.
    index: Arc<DirIndex>,
    /// Attributes of listed files fetched ahead of the lookups that follow a listing.
    prefetch: AttrPrefetch,
    /// Chunk buffers the mount's readers reuse.
    chunk_pool: ChunkPool,
    /// Names answered as files while their directory check still runs.
    dir_checks: DirChecks,
    next_fh: AtomicU64,
    wcfg: WriteConfig,
    /// The volume's node-local read cache, when it has one.
    read_cache: Option<crate::ReadCache>,
    /// Where node ids and handles are recorded for a successor server.
    journal: Option<Arc<dyn StateJournal>>,
    /// Handle records are appended under it shared, a compaction takes it alone: no
    /// record can fall between the snapshot and the history it replaces.
    journal_gate: parking_lot::RwLock<()>,
    /// The volume's capacity in bytes (0: none), changed in place by an expansion.
    capacity: AtomicU64,
    /// Multipart uploads of writers lost with a predecessor server, to abort.
    abandoned: Mutex<Vec<(String, String)>>,
}

/// What [`Fs::restore`] rebuilt from a predecessor's journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    /// Node ids the kernel may use.
    pub nodes: usize,
    /// Open handles (rebuilt lazily on first use).
    pub handles: usize,
    /// Write handles whose unstored content died with the predecessor (EIO from now on).
    pub lost_writers: usize,
    /// Whether the journal ended in a torn record.
    pub torn: bool,
    /// Length of the journal's valid prefix: appends go after it.
    pub valid_len: usize,
    /// Streaming uploads handed over mid-way, continued by their writers.
    pub streams: usize,
}

/// What [`Fs::drain`] did before a graceful handover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Streaming uploads handed over mid-way.
    pub streams: usize,
    /// Writers whose content was uploaded now.
    pub committed: usize,
}

/// What `memory_limit` leaves for part buffers and read-ahead: the limit is for the whole
/// process (what a mount pod's memory limit is set to), and FUSE requests in flight,
/// connections and caches take their share first.
const FIXED_MEMORY: u64 = 128 << 20;

fn buffer_budget(memory_limit: u64) -> u64 {
    memory_limit.saturating_sub(FIXED_MEMORY).max(16 << 20)
}

fn check_name(name: &str) -> FsResult<()> {
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl Fs {
    /// A filesystem over `store`.
    pub fn new(store: Arc<dyn ObjectStore>, cfg: FsConfig) -> Self {
        let o = &cfg.options;
        let root_attr = StoredMeta::default().attr(ROOT_INO, FileKind::Dir, 0, SystemTime::now(), o);
        let root = Inode {
            ino: ROOT_INO,
            parent: ROOT_INO,
            name: String::new(),
            path: String::new(),
            kind: FileKind::Dir,
            attr: root_attr,
            stored: StoredMeta::default(),
            has_marker: true,
            verified: true,
            expires: Instant::now() + std::time::Duration::from_secs(3600 * 24 * 365),
            checked: Instant::now(),
            lookups: 1,
            etag: String::new(),
        };
        let wcfg = WriteConfig {
            part_size: o.part_size,
            concurrency: o.upload_concurrency,
            cache_dir: o.cache_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("s3vol-cache")),
            cache_limit: o.cache_size,
            budget: MemoryBudget::new(buffer_budget(o.memory_limit)),
        };
        let cfg_capacity = cfg.capacity.unwrap_or(0);
        // With list_attrs the listing itself carries the attributes (readdirplus).
        let prefetch_ttl = if o.list_attrs { std::time::Duration::ZERO } else { o.stat_cache_ttl };
        let prefetch = AttrPrefetch::new(store.clone(), cfg.bucket.clone(), prefetch_ttl);
        Fs {
            prefetch,
            chunk_pool: ChunkPool::with_budget(wcfg.budget.clone()),
            dir_checks: DirChecks::default(),
            store,
            table: Mutex::new(InodeTable::new(root, o.max_stat_cache_size)),
            handles: Mutex::new(HashMap::new()),
            open_files: OpenFiles::default(),
            listed: Mutex::new(HashMap::new()),
            usage: Mutex::new(None),
            index: Arc::new(DirIndex::new(o.stat_cache_ttl, o.negative_ttl, o.max_stat_cache_size)),
            next_fh: AtomicU64::new(1),
            wcfg,
            cfg,
            read_cache: None,
            journal: None,
            journal_gate: parking_lot::RwLock::new(()),
            capacity: AtomicU64::new(cfg_capacity),
            abandoned: Mutex::new(Vec::new()),
        }
    }

    /// The volume was expanded: statfs reports `bytes` from now on, and a hard quota
    /// allows writes up to it. No remount.
    pub fn set_capacity(&self, bytes: u64) {
        self.capacity.store(bytes, Ordering::Relaxed);
        tracing::info!(bytes, "volume capacity changed");
    }

    fn capacity(&self) -> Option<u64> {
        Some(self.capacity.load(Ordering::Relaxed)).filter(|c| *c > 0)
    }

    /// Records node ids and handles in `journal` from now on, so that a successor server
    /// can serve this mount's kernel connection (see [`Fs::restore`]).
    pub fn journaled(mut self, journal: Arc<dyn StateJournal>) -> Self {
        self.table.get_mut().set_journal(journal.clone());
        self.journal = Some(journal);
        self
    }

    /// Reads through `cache` from now on (see [`crate::ReadCache`]).
    pub fn with_read_cache(mut self, cache: crate::ReadCache) -> Self {
        self.read_cache = Some(cache);
        self
    }

    /// The read cache, for its statistics.
    pub fn read_cache(&self) -> Option<&crate::ReadCache> {
        self.read_cache.as_ref()
    }

    /// The mount options in force.
    pub fn options(&self) -> &MountOptions {
        &self.cfg.options
    }

    /// How long the kernel may cache attributes and entries.
    pub fn ttl(&self) -> std::time::Duration {
        self.cfg.options.stat_cache_ttl
    }

    /// How long the kernel may cache the entry `name` in `parent` that a lookup just
    /// returned: not at all while it is a file answer whose directory check still runs
    /// (the kernel asks again and sees the directory if it is one), else [`Fs::ttl`].
    pub fn entry_ttl(&self, parent: u64, name: &str) -> std::time::Duration {
        match self.dir_checks.state(parent, name) {
            Some(_) => std::time::Duration::ZERO,
            None => self.ttl(),
        }
    }

    /// Names whose lookup answered with a file while the directory check still runs, or
    /// whose check found a directory not yet looked up again.
    pub fn pending_dir_checks(&self) -> usize {
        self.dir_checks.count()
    }

    fn writable(&self) -> FsResult<()> {
        if self.cfg.options.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// What this mount now knows `name` in `parent` to be (`None`: absent): recorded in
    /// the directory index, and any fetch made before the change is dropped.
    fn note(&self, parent: u64, name: &str, kind: Option<FileKind>) {
        self.index.record(parent, name, kind);
        self.prefetch.forget(parent, name);
        self.dir_checks.clear(parent, name);
    }

    fn key(&self, path: &str, kind: FileKind) -> String {
        match (kind, path.is_empty()) {
            (FileKind::Dir, true) => self.cfg.prefix.clone(),
            (FileKind::Dir, false) => format!("{}{path}/", self.cfg.prefix),
            _ => format!("{}{path}", self.cfg.prefix),
        }
    }

    fn child_path(parent: &Inode, name: &str) -> String {
        if parent.path.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", parent.path)
        }
    }

    fn expiry(&self) -> Instant {
        Instant::now() + self.cfg.options.stat_cache_ttl
    }

    /// The attributes held for `ino`, asking nothing: the adapter compares them around
    /// an open to tell the kernel when close-to-open found the object changed.
    pub fn cached_attr(&self, ino: u64) -> Option<Attr> {
        self.table.lock().get(ino).map(|i| i.attr)
    }

    /// The inode the kernel names. An id this server does not know (one its predecessor
    /// gave out and did not journal, or one that was dropped) is ESTALE.
    fn inode(&self, ino: u64) -> FsResult<Inode> {
        self.table.lock().get(ino).cloned().ok_or(Errno::ESTALE)
    }

    fn dir_inode(&self, ino: u64) -> FsResult<Inode> {
        let i = self.inode(ino)?;
        if i.kind != FileKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Ok(i)
    }

    fn has_writer(&self, ino: u64) -> bool {
        self.open_files.has_writer(ino)
    }

    fn make_inode(&self, parent: &Inode, name: &str, found: Found) -> Inode {
        let ino = self.table.lock().assign(parent.ino, name, found.kind);
        Inode {
            ino,
            parent: parent.ino,
            name: name.to_string(),
            path: Self::child_path(parent, name),
            kind: found.kind,
            attr: found.stored.attr(ino, found.kind, found.size, found.mtime, &self.cfg.options),
            stored: found.stored,
            has_marker: found.has_marker,
            verified: true,
            expires: self.expiry(),
            checked: Instant::now(),
            lookups: 0,
            etag: found.etag,
        }
    }

    /// For copies that keep an object's metadata (renames): the mount's storage class
    /// and encryption, which a plain copy would reset to the store's defaults.
    fn copy_placement(&self) -> Option<PutOptions> {
        let o = &self.cfg.options;
        (o.storage_class.is_some() || o.sse.is_some()).then(|| PutOptions {
            storage_class: o.storage_class.clone(),
            sse: o.sse.clone(),
            keep_metadata: true,
            ..Default::default()
        })
    }

    fn put_options(&self, name: &str, stored: StoredMeta) -> PutOptions {
        let o = &self.cfg.options;
        PutOptions {
            metadata: stored.to_metadata(),
            content_type: o.mime.then(|| content_type_for(name).to_string()),
            storage_class: o.storage_class.clone(),
            sse: o.sse.clone(),
            keep_metadata: false,
        }
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        match &h {
            Handle::Write { ino, writer, .. } => {
                self.log(JournalRecord::Open { fh, ino: *ino, kind: HandleKind::Write });
                if writer.is_dirty() {
                    self.log(JournalRecord::Dirty { fh, dirty: true });
                }
                self.open_files.opened(*ino, fh, true)
            }
            Handle::Read { ino, .. } => {
                self.log(JournalRecord::Open { fh, ino: *ino, kind: HandleKind::Read });
                self.open_files.opened(*ino, fh, false)
            }
            Handle::Dir { .. } | Handle::Restored { .. } => {}
        }
        self.handles.lock().insert(fh, Arc::new(tokio::sync::Mutex::new(h)));
        fh
    }

    /// Every open handle with its number (taken out of the map's lock).
    fn all_handles(&self) -> Vec<(u64, SharedHandle)> {
        self.handles.lock().iter().map(|(fh, h)| (*fh, h.clone())).collect()
    }

    /// The handles open on `ino` (only that file's: waiting on them never waits on
    /// another file's upload).
    fn handles_of(&self, ino: u64) -> Vec<SharedHandle> {
        let fhs = self.open_files.handles_of(ino);
        let handles = self.handles.lock();
        fhs.iter().filter_map(|fh| handles.get(fh).cloned()).collect()
    }

    fn handle(&self, fh: u64) -> FsResult<SharedHandle> {
        self.handles.lock().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// Sums the sizes of every object under the prefix (one LIST per 1000 objects), so
    /// hard quotas can be enforced and statfs reports real usage from then on.
    pub async fn measure_usage(&self) -> FsResult<u64> {
        let mut req = ListRequest::recursive(self.cfg.prefix.clone());
        let mut total = 0u64;
        loop {
            let page = self.store.list(&self.cfg.bucket, &req).await.map_err(|e| store_errno("usage", &e))?;
            total += page.objects.iter().map(|o| o.size).sum::<u64>();
            match page.next_continuation {
                Some(t) => req.continuation = Some(t),
                None => break,
            }
        }
        *self.usage.lock() = Some(total);
        Ok(total)
    }

    /// Adds `delta` bytes to the measured usage.
    fn charge(&self, delta: i64) {
        if let Some(u) = self.usage.lock().as_mut() {
            *u = u.saturating_add_signed(delta);
        }
    }

    /// ENOSPC when growing a file from `from` to `to` bytes would pass a hard quota.
    fn check_quota(&self, from: u64, to: u64) -> FsResult<()> {
        if !self.cfg.hard_quota || to <= from {
            return Ok(());
        }
        let (Some(cap), Some(used)) = (self.capacity(), *self.usage.lock()) else { return Ok(()) };
        if used + (to - from) > cap {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    /// statfs: the volume capacity (or 1 PiB), never garbage.
    pub fn statfs(&self) -> StatFs {
        let bsize = 4096u64;
        let cap = self.capacity().unwrap_or(1 << 50);
        let total = cap / bsize;
        let free = cap.saturating_sub(self.usage.lock().unwrap_or(0)) / bsize;
        StatFs {
            blocks: total,
            bfree: free,
            bavail: free,
            files: 1 << 32,
            ffree: 1 << 32,
            bsize: bsize as u32,
            namelen: 255,
        }
    }
}
