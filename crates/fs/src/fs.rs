//! [`Fs`]: every filesystem operation, in POSIX terms, over an object store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use s3vol_store::{collect_body, ErrorKind, ListRequest, ObjectStore, PutOptions};

use crate::attr::{Attr, FileKind, SpecialKind, StoredMeta, S_IFDIR, S_IFLNK, S_IFREG};
use crate::budget::MemoryBudget;
use crate::dir::{DirEntry, DirStream, VOLUME_MARKER};
use crate::dir_index::DirIndex;
use crate::error::{store_errno, Errno, FsResult};
use crate::inode::{Inode, InodeTable, OPEN_REVALIDATE, ROOT_INO};
use crate::journal::{decode_all, HandleKind, JournalRecord, StateJournal};
use crate::mime::content_type_for;
use crate::open_files::OpenFiles;
use crate::options::MountOptions;
use crate::prefetch::AttrPrefetch;
use crate::read::Reader;
use crate::write::{StreamState, WriteConfig, Writer};

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
    next_fh: AtomicU64,
    wcfg: WriteConfig,
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
        };
        let wcfg = WriteConfig {
            part_size: o.part_size,
            concurrency: o.upload_concurrency,
            cache_dir: o.cache_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("s3vol-cache")),
            cache_limit: o.cache_size,
            budget: MemoryBudget::new(o.memory_limit),
        };
        let cfg_capacity = cfg.capacity.unwrap_or(0);
        // With list_attrs the listing itself carries the attributes (readdirplus).
        let prefetch_ttl = if o.list_attrs { std::time::Duration::ZERO } else { o.stat_cache_ttl };
        let prefetch = AttrPrefetch::new(store.clone(), cfg.bucket.clone(), prefetch_ttl);
        Fs {
            prefetch,
            store,
            table: Mutex::new(InodeTable::new(root, o.max_stat_cache_size)),
            handles: Mutex::new(HashMap::new()),
            open_files: OpenFiles::default(),
            listed: Mutex::new(HashMap::new()),
            usage: Mutex::new(None),
            index: Arc::new(DirIndex::new(o.stat_cache_ttl, o.max_stat_cache_size)),
            next_fh: AtomicU64::new(1),
            wcfg,
            cfg,
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

    fn log(&self, rec: JournalRecord) {
        if let Some(j) = &self.journal {
            let _shared = self.journal_gate.read();
            j.append(&rec);
        }
    }

    /// Replaces the journal's history by the live state once it asked for it (a mount
    /// that looked up millions of names would otherwise keep every one of them).
    fn compact_journal_if_due(&self) {
        let Some(j) = &self.journal else { return };
        if !j.wants_compaction() {
            return;
        }
        let Some(_alone) = self.journal_gate.try_write() else { return };
        if !j.wants_compaction() {
            return;
        }
        // Handles first, then the table under its lock: a node id handed out meanwhile
        // is journaled after the snapshot, so nothing is missed.
        let handles = self.all_handles();
        let mut snapshot = Vec::new();
        for (fh, h) in handles {
            match h.try_lock().as_deref() {
                Ok(Handle::Read { ino, .. }) => {
                    snapshot.push(JournalRecord::Open { fh, ino: *ino, kind: HandleKind::Read })
                }
                Ok(Handle::Dir { ino, .. }) => {
                    snapshot.push(JournalRecord::Open { fh, ino: *ino, kind: HandleKind::Dir })
                }
                Ok(Handle::Write { ino, writer, .. }) => {
                    snapshot.push(JournalRecord::Open { fh, ino: *ino, kind: HandleKind::Write });
                    snapshot.push(JournalRecord::Dirty { fh, dirty: writer.is_dirty() });
                    if let Some((key, upload_id)) = writer.upload() {
                        let (key, upload_id) = (key.to_string(), upload_id.to_string());
                        snapshot.push(JournalRecord::Upload { fh, key, upload_id });
                    }
                }
                Ok(Handle::Restored { ino, kind, dirty, stream }) => {
                    snapshot.push(JournalRecord::Open { fh, ino: *ino, kind: *kind });
                    snapshot.push(JournalRecord::Dirty { fh, dirty: *dirty });
                    if let Some(st) = stream {
                        snapshot.push(JournalRecord::Stream { fh, state: (**st).clone() });
                    }
                }
                // In use right now: the operation journals its own outcome after this.
                Err(_) => {
                    let ino = self.open_files.ino_of(fh);
                    if let Some((ino, writes)) = ino {
                        let kind = if writes { HandleKind::Write } else { HandleKind::Read };
                        snapshot.push(JournalRecord::Open { fh, ino, kind });
                        snapshot.push(JournalRecord::Dirty { fh, dirty: writes });
                    }
                }
            }
        }
        let open: std::collections::HashSet<u64> = snapshot
            .iter()
            .filter_map(|r| match r {
                JournalRecord::Open { ino, .. } => Some(*ino),
                _ => None,
            })
            .collect();
        let mut t = self.table.lock();
        let mut nodes = t.live_nodes(&open);
        nodes.sort_unstable_by_key(|r| r.0);
        let mut all: Vec<JournalRecord> = nodes
            .into_iter()
            .map(|(ino, parent, kind, name)| JournalRecord::Node { ino, parent, kind, name })
            .collect();
        all.extend(snapshot);
        j.compact(&all);
        drop(t);
    }

    /// Takes over the state a predecessor server journaled (`bytes`): the node ids the
    /// kernel holds resolve to the same files, and its open handles keep working (reads
    /// reopen lazily, writers whose content was all stored go on) except writers that
    /// held unstored content, which fail with EIO from now on, never silently.
    pub fn restore(&self, bytes: &[u8]) -> Restored {
        let (records, valid_len) = decode_all(bytes);
        let torn = valid_len != bytes.len();
        let mut nodes = Vec::new();
        /// A handle as the journal leaves it.
        struct Open {
            ino: u64,
            kind: HandleKind,
            dirty: bool,
            stream: Option<Box<StreamState>>,
            /// The multipart upload it had started (key, id).
            upload: Option<(String, String)>,
        }
        let mut open: HashMap<u64, Open> = HashMap::new();
        for r in records {
            match r {
                JournalRecord::Node { ino, parent, kind, name } => nodes.push((ino, parent, kind, name)),
                JournalRecord::Open { fh, ino, kind } => {
                    open.insert(fh, Open { ino, kind, dirty: false, stream: None, upload: None });
                }
                JournalRecord::Dirty { fh, dirty } => {
                    if let Some(h) = open.get_mut(&fh) {
                        h.dirty = dirty;
                        h.stream = None;
                        if !dirty {
                            // Stored: the upload it had was completed.
                            h.upload = None;
                        }
                    }
                }
                JournalRecord::Upload { fh, key, upload_id } => {
                    if let Some(h) = open.get_mut(&fh) {
                        h.upload = Some((key, upload_id));
                    }
                }
                JournalRecord::Stream { fh, state } => {
                    // Handed over: its content is in the upload and this record.
                    if let Some(h) = open.get_mut(&fh) {
                        h.dirty = false;
                        h.stream = Some(Box::new(state));
                    }
                }
                JournalRecord::Close { fh } => {
                    open.remove(&fh);
                }
            }
        }
        let mut out = Restored { torn, valid_len, ..Default::default() };
        {
            let mut t = self.table.lock();
            let root = t.get(ROOT_INO).cloned().expect("root");
            out.nodes = t.restore(&nodes, &root);
        }
        let max_fh = open.keys().copied().max().unwrap_or(0);
        self.next_fh.fetch_max(max_fh + 1, Ordering::Relaxed);
        // The records stay in the journal this server appends to, so a successor of
        // this server reads them again; nothing is written twice.
        for (fh, Open { ino, kind, dirty, stream, upload }) in open {
            out.lost_writers += usize::from(dirty);
            if let (true, None, Some(u)) = (dirty, &stream, upload) {
                // Its content died with the predecessor: the parts it sent are garbage.
                self.abandoned.lock().push(u);
            }
            out.streams += usize::from(stream.is_some());
            // Counted as a writer only once rebuilt (until then its attributes are the
            // store's), except a handed-over upload: its object does not exist yet, and
            // the size is the one the application left.
            match &stream {
                Some(st) => {
                    self.open_files.opened(ino, fh, true);
                    let size = st.size;
                    let _ = self.update_attr(ino, |n| n.attr.size = size);
                }
                None if kind != HandleKind::Dir => self.open_files.opened(ino, fh, false),
                None => {}
            }
            let h = Handle::Restored { ino, kind, dirty, stream };
            self.handles.lock().insert(fh, Arc::new(tokio::sync::Mutex::new(h)));
            out.handles += 1;
        }
        // Node ids of the predecessor are journaled again too (the journal is this
        // server's now; the predecessor's records stay in front of the new ones).
        out
    }

    /// Aborts the multipart uploads of writers whose content died with the predecessor
    /// (see [`Fs::restore`]), so their parts do not stay in the store. Returns how many
    /// were aborted; failures are logged (a bucket lifecycle rule catches what is left).
    pub async fn abort_abandoned_uploads(&self) -> usize {
        let uploads = std::mem::take(&mut *self.abandoned.lock());
        let mut aborted = 0;
        for (key, upload_id) in uploads {
            match self.store.abort_multipart(&self.cfg.bucket, &key, &upload_id).await {
                Ok(()) => aborted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::warn!(key = %key, error = %e, "aborting a lost writer's upload failed"),
            }
        }
        aborted
    }

    /// Prepares a graceful handover: every streaming upload is handed over mid-way (its
    /// state journaled, parts in flight finished), every other writer with unstored
    /// content uploads it now. Call once no request is running any more; the server
    /// must serve nothing afterwards.
    pub async fn drain(&self) -> FsResult<Drained> {
        let handles = self.all_handles();
        let mut out = Drained::default();
        for (fh, h) in handles {
            let mut g = h.lock().await;
            let Handle::Write { writer, .. } = &mut *g else { continue };
            match writer.export_stream().await? {
                Some(state) => {
                    self.log(JournalRecord::Stream { fh, state });
                    out.streams += 1;
                }
                None if writer.is_dirty() => {
                    writer.commit().await?;
                    self.log(JournalRecord::Dirty { fh, dirty: false });
                    out.committed += 1;
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// Turns a restored handle into a live one. Writers that held unstored content stay
    /// restored: every use is EIO.
    async fn materialize(&self, h: &mut Handle) -> FsResult<()> {
        let Handle::Restored { ino, kind, dirty, ref mut stream } = *h else { return Ok(()) };
        if dirty {
            return Err(Errno::EIO);
        }
        if let Some(st) = stream.take() {
            let i = self.inode(ino)?;
            let key = self.key(&i.path, FileKind::File);
            let put = self.put_options(&i.name, i.stored);
            let size = st.size;
            let (store, bucket, wcfg) = (self.store.clone(), self.cfg.bucket.clone(), self.wcfg.clone());
            let writer = Writer::resume_stream(store, bucket, key, put, wcfg, *st);
            self.update_attr(ino, |n| n.attr.size = size)?;
            *h = Handle::Write { ino, writer: Box::new(writer), base: 0 };
            return Ok(());
        }
        let i = self.inode(ino)?;
        *h = match kind {
            HandleKind::Dir => {
                let key = self.key(&i.path, FileKind::Dir);
                let stream = DirStream::new(self.store.clone(), self.cfg.bucket.clone(), key, ino == ROOT_INO)
                    .recording(self.index.clone(), ino)
                    .reading_ahead();
                Handle::Dir { ino, stream }
            }
            HandleKind::Read => {
                let attr = self.getattr(ino).await?;
                let key = self.key(&i.path, FileKind::File);
                let o = &self.cfg.options;
                Handle::Read {
                    ino,
                    reader: Reader::new(self.store.clone(), self.cfg.bucket.clone(), key, attr.size, o.read_ahead)
                        .with_budget(self.wcfg.budget.clone()),
                }
            }
            HandleKind::Write => {
                let attr = self.getattr(ino).await?;
                let i = self.inode(ino)?;
                let key = self.key(&i.path, FileKind::File);
                let put = self.put_options(&i.name, i.stored);
                let (store, bucket, wcfg) = (self.store.clone(), self.cfg.bucket.clone(), self.wcfg.clone());
                let writer = Writer::existing(store, bucket, key, put, wcfg, attr.size);
                self.open_files.promote(ino);
                Handle::Write { ino, writer: Box::new(writer), base: attr.size }
            }
        };
        Ok(())
    }

    /// The mount options in force.
    pub fn options(&self) -> &MountOptions {
        &self.cfg.options
    }

    /// How long the kernel may cache attributes and entries.
    pub fn ttl(&self) -> std::time::Duration {
        self.cfg.options.stat_cache_ttl
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
        }
    }

    /// Asks the store what `name` in `parent` is: a HEAD of the key and a one-key LIST of
    /// `key/` in parallel (the LIST finds marker and implicit directories alike).
    async fn probe(&self, parent: &Inode, name: &str) -> FsResult<Option<Inode>> {
        // A recent listing showed this name as a plain object (no `name/` prefix beside
        // it): its metadata needs only a HEAD, not the LIST that detects directories.
        if self.index.kind(parent.ino, name) == Some(FileKind::File) {
            let path = Self::child_path(parent, name);
            // Fetched in the background while the directory was read (see AttrPrefetch).
            let (head, fetched) = match self.prefetch.take(parent.ino, name).await {
                Some((m, at)) => (Ok(m), Some(at)),
                None => (self.store.head_object(&self.cfg.bucket, &self.key(&path, FileKind::File)).await, None),
            };
            match head {
                Ok(m) => {
                    let stored = StoredMeta::from_metadata(&m.metadata);
                    let found = Found {
                        kind: stored.object_kind(),
                        size: m.size,
                        mtime: m.last_modified,
                        stored,
                        has_marker: false,
                    };
                    let mut inode = self.make_inode(parent, name, found);
                    if let Some(at) = fetched {
                        // Trusted from when it was fetched, not from now.
                        inode.checked = at;
                        inode.expires = at + self.cfg.options.stat_cache_ttl;
                    }
                    return Ok(Some(inode));
                }
                // Gone or changed since the listing: ask the full question below.
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(store_errno("lookup", &e)),
            }
        }
        let path = Self::child_path(parent, name);
        let file_key = self.key(&path, FileKind::File);
        let dir_key = self.key(&path, FileKind::Dir);
        let list_req = ListRequest { prefix: dir_key.clone(), max_keys: Some(1), ..Default::default() };
        let (head, list) = tokio::join!(
            self.store.head_object(&self.cfg.bucket, &file_key),
            self.store.list(&self.cfg.bucket, &list_req)
        );
        let list = list.map_err(|e| store_errno("lookup", &e))?;
        if !list.objects.is_empty() || !list.common_prefixes.is_empty() {
            let has_marker = list.objects.first().is_some_and(|o| o.key == dir_key);
            let (stored, mtime) = if has_marker {
                // Marker metadata (mode/owner); some stores fail HEAD of `dir/` keys, so
                // any error just means defaults.
                match self.store.head_object(&self.cfg.bucket, &dir_key).await {
                    Ok(m) => (StoredMeta::from_metadata(&m.metadata), m.last_modified),
                    Err(_) => (StoredMeta::default(), list.objects[0].last_modified),
                }
            } else {
                (StoredMeta::default(), SystemTime::now())
            };
            return Ok(Some(self.make_inode(
                parent,
                name,
                Found { kind: FileKind::Dir, size: 0, mtime, stored, has_marker },
            )));
        }
        match head {
            Ok(m) => {
                let stored = StoredMeta::from_metadata(&m.metadata);
                Ok(Some(self.make_inode(
                    parent,
                    name,
                    Found {
                        kind: stored.object_kind(),
                        size: m.size,
                        mtime: m.last_modified,
                        stored,
                        has_marker: false,
                    },
                )))
            }
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_errno("lookup", &e)),
        }
    }

    /// Looks `name` up in `parent`, counting a kernel reference on success.
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        check_name(name)?;
        let p = self.dir_inode(parent)?;
        if parent == ROOT_INO && name == VOLUME_MARKER {
            return Err(Errno::ENOENT);
        }
        {
            let mut t = self.table.lock();
            if let Some(ino) = t.child(parent, name) {
                let fresh = t.get(ino).is_some_and(|i| i.expires > Instant::now()) || self.has_writer(ino);
                if fresh {
                    t.add_lookup(ino);
                    return Ok(t.get(ino).expect("present").attr);
                }
            }
            if t.is_negative(parent, name) {
                return Err(Errno::ENOENT);
            }
        }
        if self.index.is_absent(parent, name) {
            return Err(Errno::ENOENT);
        }
        match self.probe(&p, name).await? {
            Some(inode) => {
                let attr = inode.attr;
                self.note(parent, name, Some(inode.kind));
                {
                    let mut t = self.table.lock();
                    t.upsert(inode);
                    t.add_lookup(attr.ino);
                }
                self.compact_journal_if_due();
                Ok(attr)
            }
            None => {
                let ttl = self.cfg.options.stat_cache_ttl;
                let until = (!ttl.is_zero()).then(|| Instant::now() + ttl);
                self.table.lock().remove_name(parent, name, until);
                self.note(parent, name, None);
                self.list_in_background(&p, name);
                Err(Errno::ENOENT)
            }
        }
    }

    /// After a lookup of a name that does not exist (see [`DirIndex::missed`]), lists the
    /// directory's first page (unless a fresh one is held) and, when the name is not in
    /// its range, a page from the missed name on, in the background: the next new names
    /// (a program creating files, whose names usually sort together) are then known absent
    /// without a HEAD and a LIST each. At most two requests however large the directory;
    /// one listing per directory at a time, and none while a fresh one covers the name.
    fn list_in_background(&self, dir: &Inode, name: &str) {
        if !self.index.missed(dir.ino, name) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let key = self.key(&dir.path, FileKind::Dir);
        let (store, bucket, index) = (self.store.clone(), self.cfg.bucket.clone(), self.index.clone());
        let (ino, hide_marker, name) = (dir.ino, dir.ino == ROOT_INO, name.to_string());
        rt.spawn(async move {
            let stream = || DirStream::new(store.clone(), bucket.clone(), key.clone(), hide_marker);
            let mut res = Ok(());
            if !index.has_first_page(ino) {
                let mut first = stream().recording(index.clone(), ino);
                res = first.record_page().await;
            }
            if res.is_ok() && index.wants_listing(ino, &name) {
                res = stream().recording(index, ino).after(&name).record_page().await;
            }
            if let Err(e) = res {
                tracing::debug!(dir = ino, error = %e, "background listing failed; lookups ask the store");
            }
        });
    }

    /// Entries in the inode table (the kernel's references and what they need).
    pub fn cached_inodes(&self) -> usize {
        self.table.lock().len()
    }

    /// The kernel dropped `n` references.
    pub fn forget(&self, ino: u64, n: u64) {
        self.table.lock().forget(ino, n);
        self.compact_journal_if_due();
    }

    /// Reads an entry's own metadata (HEAD), replacing attributes that came from a listing.
    async fn verify(&self, i: &Inode) -> FsResult<Attr> {
        let parent = self.inode(i.parent)?;
        match self.probe(&parent, &i.name).await? {
            Some(fresh) if fresh.kind == i.kind || i.kind == FileKind::File => {
                let attr = Attr { ino: i.ino, ..fresh.attr };
                let mut t = self.table.lock();
                if let Some(cur) = t.get_mut(i.ino) {
                    cur.attr = attr;
                    cur.kind = fresh.kind;
                    cur.stored = fresh.stored;
                    cur.has_marker = fresh.has_marker;
                    cur.verified = true;
                    cur.expires = fresh.expires;
                    cur.checked = fresh.checked;
                }
                Ok(attr)
            }
            _ => {
                // The object is gone (or is something else now): the name no longer
                // leads here. ESTALE makes the kernel walk the path again with a fresh
                // lookup, so `open(O_CREAT)` creates the file and `stat` says ENOENT.
                let mut t = self.table.lock();
                if t.child(i.parent, &i.name) == Some(i.ino) {
                    t.remove_name(i.parent, &i.name, self.negative_until());
                    drop(t);
                    self.note(i.parent, &i.name, None);
                }
                Err(Errno::ESTALE)
            }
        }
    }

    /// Attributes, refreshed from the store once the cache entry expired.
    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let i = self.inode(ino)?;
        if i.expires > Instant::now() || (i.kind == FileKind::Dir && i.verified) || self.has_writer(ino) {
            return Ok(i.attr);
        }
        // A file this mount removed while it was open: fstat keeps answering with its last
        // attributes until the last close, as on a disk.
        let unlinked = self.table.lock().child(i.parent, &i.name) != Some(ino);
        if unlinked && !self.open_files.handles_of(ino).is_empty() {
            return Ok(i.attr);
        }
        self.verify(&i).await
    }

    /// Attributes an `open` may trust: the cached ones while an upload of this mount is
    /// pending or the store confirmed them within [`OPEN_REVALIDATE`], else the object's
    /// own (close-to-open: a file another client closed is seen at the next open, however
    /// long `stat` may cache it).
    async fn revalidated(&self, i: &Inode) -> FsResult<Attr> {
        if self.has_writer(i.ino) || i.checked.elapsed() < OPEN_REVALIDATE {
            return Ok(i.attr);
        }
        self.verify(i).await
    }

    fn update_attr(&self, ino: u64, f: impl FnOnce(&mut Inode)) -> FsResult<Attr> {
        let mut t = self.table.lock();
        let i = t.get_mut(ino).ok_or(Errno::ENOENT)?;
        f(i);
        let o = &self.cfg.options;
        i.attr = i.stored.attr(ino, i.kind, i.attr.size, i.attr.mtime, o);
        Ok(i.attr)
    }

    /// chmod, chown, truncate, utimens.
    pub async fn setattr(&self, ino: u64, set: SetAttr, fh: Option<u64>) -> FsResult<Attr> {
        self.writable()?;
        let i = self.inode(ino)?;
        if let Some(size) = set.size {
            if i.kind == FileKind::Dir {
                return Err(Errno::EISDIR);
            }
            let handle = fh.and_then(|f| self.handles.lock().get(&f).cloned());
            let mut done = false;
            if let Some(h) = handle {
                let mut g = h.lock().await;
                self.materialize(&mut g).await?;
                if let Handle::Write { writer, base, .. } = &mut *g {
                    self.check_quota(*base, size)?;
                    if !writer.is_dirty() {
                        self.log(JournalRecord::Dirty { fh: fh.unwrap_or_default(), dirty: true });
                    }
                    writer.set_size(size).await?;
                    done = true;
                }
            }
            if !done {
                let key = self.key(&i.path, FileKind::File);
                let put = self.put_options(&i.name, i.stored);
                let (store, bucket, wcfg) = (self.store.clone(), self.cfg.bucket.clone(), self.wcfg.clone());
                self.check_quota(i.attr.size, size)?;
                let mut w = if size == 0 {
                    Writer::new_stream(store, bucket, key, put, wcfg)
                } else {
                    let mut w = Writer::existing(store, bucket, key, put, wcfg, i.attr.size);
                    w.set_size(size).await?;
                    w
                };
                w.commit().await?;
                self.charge(size as i64 - i.attr.size as i64);
            }
            self.update_attr(ino, |n| {
                n.attr.size = size;
                n.attr.mtime = SystemTime::now();
            })?;
        }
        if set.mode.is_none() && set.uid.is_none() && set.gid.is_none() && set.mtime.is_none() {
            return self.inode(ino).map(|i| i.attr);
        }
        let type_bits = match i.kind {
            FileKind::Dir => S_IFDIR,
            FileKind::File => S_IFREG,
            FileKind::Symlink => S_IFLNK,
            FileKind::Special(k) => k.type_bits(),
        };
        let mut stored = i.stored;
        if let Some(m) = set.mode {
            stored.mode = Some(type_bits | (m & 0o7777));
        }
        if let Some(u) = set.uid {
            stored.uid = Some(u);
        }
        if let Some(g) = set.gid {
            stored.gid = Some(g);
        }
        stored.mtime = Some(set.mtime.unwrap_or(i.attr.mtime));
        if stored.mode.is_none() {
            stored.mode = Some(type_bits | (i.attr.perm & 0o7777));
        }
        self.persist_meta(&i, stored).await?;
        self.update_attr(ino, |n| {
            n.stored = stored;
            if let Some(t) = stored.mtime {
                n.attr.mtime = t;
            }
            n.expires = Instant::now() + self.cfg.options.stat_cache_ttl;
            n.checked = Instant::now();
        })
    }

    /// Writes new ownership/mode metadata: onto an open writer (applied at upload), by
    /// a server-side copy onto itself (files), or as the `dir/` marker (directories).
    async fn persist_meta(&self, i: &Inode, stored: StoredMeta) -> FsResult<()> {
        let mut pending_writer = false;
        for h in self.handles_of(i.ino) {
            if let Handle::Write { writer, .. } = &mut *h.lock().await {
                writer.put.metadata = stored.to_metadata();
                pending_writer |= writer.is_dirty();
            }
        }
        if pending_writer {
            return Ok(());
        }
        let put = self.put_options(&i.name, stored);
        match i.kind {
            FileKind::Dir if i.ino == ROOT_INO && self.cfg.prefix.is_empty() => Ok(()),
            FileKind::Dir => {
                let key = self.key(&i.path, FileKind::Dir);
                let put = PutOptions { content_type: None, ..put };
                self.store
                    .put_object(&self.cfg.bucket, &key, Bytes::new(), &put)
                    .await
                    .map_err(|e| store_errno("setattr", &e))
            }
            _ => {
                let key = self.key(&i.path, FileKind::File);
                self.store
                    .copy_object(&self.cfg.bucket, &key, &key, Some(&put))
                    .await
                    .map_err(|e| store_errno("setattr", &e))
            }
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

    /// Opens a directory for listing.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let i = self.dir_inode(ino)?;
        let key = self.key(&i.path, FileKind::Dir);
        let stream = DirStream::new(self.store.clone(), self.cfg.bucket.clone(), key, ino == ROOT_INO)
            .recording(self.index.clone(), ino)
            .reading_ahead();
        let fh = self.add_handle(Handle::Dir { ino, stream });
        self.log(JournalRecord::Open { fh, ino, kind: HandleKind::Dir });
        Ok(fh)
    }

    /// Whether the kernel may serve this directory from the entries it cached at the last
    /// listing: only while that listing is younger than `stat_cache_ttl` (with
    /// `list_attrs`, at least 10 s). The kernel drops its cache itself when entries are
    /// created or removed through this mount.
    pub fn dir_cache_fresh(&self, ino: u64) -> bool {
        let o = &self.cfg.options;
        // With list_attrs, a listing is trusted as long as the attributes it brought.
        let ttl = if o.list_attrs && !o.stat_cache_ttl.is_zero() {
            o.stat_cache_ttl.max(LISTING_TTL)
        } else {
            o.stat_cache_ttl
        };
        !ttl.is_zero() && self.listed.lock().get(&ino).is_some_and(|t| t.elapsed() < ttl)
    }

    /// Entries from readdir offset `offset` (0 = start; `.` and `..` are 0 and 1). Each
    /// returned entry carries the offset of the next one.
    pub async fn readdir(&self, ino: u64, fh: u64, offset: u64) -> FsResult<Vec<(u64, u64, DirEntry)>> {
        let h = self.handle(fh)?;
        let mut guard = h.lock().await;
        self.materialize(&mut guard).await?;
        let Handle::Dir { stream, .. } = &mut *guard else { return Err(Errno::EBADF) };
        let me = self.inode(ino)?;
        let mut out = Vec::new();
        if offset == 0 {
            out.push((ino, 1, DirEntry { name: ".".into(), kind: FileKind::Dir, size: 0, mtime: me.attr.mtime }));
        }
        if offset <= 1 {
            out.push((
                me.parent,
                2,
                DirEntry { name: "..".into(), kind: FileKind::Dir, size: 0, mtime: me.attr.mtime },
            ));
        }
        let (first, entries) = stream.entries_from(offset.saturating_sub(2)).await?;
        let now = Instant::now();
        let mut stale_files = Vec::new();
        let mut t = self.table.lock();
        for (n, e) in entries.iter().enumerate() {
            let child = t.assign(ino, &e.name, e.kind);
            if e.kind == FileKind::File && t.get(child).is_none_or(|i| i.expires <= now) {
                stale_files.push(e.name.clone());
            }
            out.push((child, first + n as u64 + 3, e.clone()));
        }
        drop(t);
        for name in stale_files {
            let key = self.key(&Self::child_path(&me, &name), FileKind::File);
            self.prefetch.queue(ino, fh, &name, key);
        }
        Ok(out)
    }

    /// readdirplus: entries with attributes from the listing itself, so `ls -l` costs one
    /// LIST per 1000 entries and no request per entry. Files this mount has not looked at
    /// get the mount's default mode and owner and are marked unverified; `open` checks them
    /// against the object's own metadata before any data moves, and `getattr` reads that
    /// metadata once the listing's attributes expire. Directories are returned uncached,
    /// so the kernel looks them up (with their marker's mode) before entering them.
    /// Returns (attributes, next offset, name, how long the kernel may cache the entry); the
    /// caller reports each entry it hands the kernel with [`Fs::entry_sent`].
    pub async fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> FsResult<Vec<(Attr, u64, String, std::time::Duration)>> {
        let entries = self.readdir(ino, fh, offset).await?;
        let me = self.inode(ino)?;
        let now = Instant::now();
        let ttl = self.cfg.options.stat_cache_ttl;
        let listing_ttl = ttl.max(LISTING_TTL);
        let listing_expiry = now + listing_ttl;
        let uncached = std::time::Duration::ZERO;
        let mut out = Vec::with_capacity(entries.len());
        let mut t = self.table.lock();
        for (child, next, e) in entries {
            if e.name == "." || e.name == ".." {
                let target = if e.name == "." { ino } else { me.parent };
                let attr = t.get(target).map(|i| i.attr).unwrap_or(me.attr);
                out.push((attr, next, e.name, uncached));
                continue;
            }
            let known = t.get(child).filter(|i| i.parent == ino && i.name == e.name && i.kind == e.kind).cloned();
            if let Some(i) = known.filter(|i| i.expires > now || e.kind == FileKind::Dir) {
                // As long as getattr would answer with these attributes anyway (an entry
                // the kernel was offered in an earlier call for this page keeps the
                // listing's lifetime).
                let keep = if e.kind == FileKind::Dir { uncached } else { ttl.max(i.expires - now) };
                out.push((i.attr, next, e.name, keep));
                continue;
            }
            let stored = StoredMeta::default();
            let attr = stored.attr(child, e.kind, e.size, e.mtime, &self.cfg.options);
            let dir = e.kind == FileKind::Dir;
            t.upsert(Inode {
                ino: child,
                parent: ino,
                name: e.name.clone(),
                path: Self::child_path(&me, &e.name),
                kind: e.kind,
                attr,
                stored,
                has_marker: false,
                verified: false,
                expires: if dir { now } else { listing_expiry },
                checked: now,
                lookups: 0,
            });
            // The kernel may keep listing attributes as long as getattr would answer with
            // them anyway; open re-checks access against the object itself.
            out.push((attr, next, e.name, if dir { uncached } else { listing_ttl }));
        }
        Ok(out)
    }

    /// The kernel took a readdirplus entry: it now holds a reference, as after a lookup.
    pub fn entry_sent(&self, ino: u64, name: &str) {
        if name != "." && name != ".." {
            self.table.lock().add_lookup(ino);
        }
    }

    /// Closes a directory handle, remembering when a listing ran to its end.
    pub fn releasedir(&self, ino: u64, fh: u64) {
        let Some(h) = self.handles.lock().remove(&fh) else { return };
        self.prefetch.cancel(fh);
        self.log(JournalRecord::Close { fh });
        let complete = matches!(h.try_lock().as_deref(), Ok(Handle::Dir { stream, .. }) if stream.complete());
        if complete {
            self.listed.lock().insert(ino, Instant::now());
        }
    }

    /// Opens a file. `flags` are the open(2) flags.
    pub async fn open(&self, ino: u64, flags: i32, caller: Caller) -> FsResult<u64> {
        let mut i = self.inode(ino)?;
        if i.kind == FileKind::Dir {
            return Err(Errno::EISDIR);
        }
        let acc = flags & libc::O_ACCMODE;
        if !i.verified && !self.has_writer(ino) {
            // The kernel checked permissions against attributes from a listing; check
            // again against the object's own mode and owner before any data moves.
            self.verify(&i).await?;
            i = self.inode(ino)?;
            if !caller.may(&i.attr, acc != libc::O_WRONLY, acc != libc::O_RDONLY) {
                return Err(Errno::EACCES);
            }
        }
        let key = self.key(&i.path, FileKind::File);
        if acc == libc::O_RDONLY {
            // Close-to-open: a stale entry is checked against the store before reading.
            let attr = self.revalidated(&i).await?;
            let o = &self.cfg.options;
            let reader = Reader::new(self.store.clone(), self.cfg.bucket.clone(), key, attr.size, o.read_ahead)
                .with_budget(self.wcfg.budget.clone());
            return Ok(self.add_handle(Handle::Read { ino, reader }));
        }
        self.writable()?;
        let put = self.put_options(&i.name, StoredMeta { mtime: Some(SystemTime::now()), ..i.stored });
        let stored_size = self.revalidated(&i).await?.size;
        let writer = if flags & libc::O_TRUNC != 0 {
            self.update_attr(ino, |n| n.attr.size = 0)?;
            Writer::new_stream(self.store.clone(), self.cfg.bucket.clone(), key, put, self.wcfg.clone())
        } else {
            Writer::existing(self.store.clone(), self.cfg.bucket.clone(), key, put, self.wcfg.clone(), stored_size)
        };
        Ok(self.add_handle(Handle::Write { ino, writer: Box::new(writer), base: stored_size }))
    }

    /// Creates and opens a new file.
    pub async fn create(&self, parent: u64, name: &str, mode: u32, caller: Caller) -> FsResult<(Attr, u64)> {
        self.writable()?;
        check_name(name)?;
        let p = self.dir_inode(parent)?;
        if parent == ROOT_INO && name == VOLUME_MARKER {
            return Err(Errno::EACCES);
        }
        let stored = StoredMeta {
            mode: Some(S_IFREG | (mode & 0o7777)),
            uid: Some(caller.uid),
            gid: Some(caller.gid),
            mtime: Some(SystemTime::now()),
            rdev: None,
        };
        let inode = self.make_inode(
            &p,
            name,
            Found { kind: FileKind::File, size: 0, mtime: SystemTime::now(), stored, has_marker: false },
        );
        let key = self.key(&inode.path, FileKind::File);
        let attr = inode.attr;
        let put = self.put_options(name, stored);
        self.table.lock().upsert(inode);
        self.table.lock().add_lookup(attr.ino);
        self.note(parent, name, Some(FileKind::File));
        let writer = Writer::new_stream(self.store.clone(), self.cfg.bucket.clone(), key, put, self.wcfg.clone());
        Ok((attr, self.add_handle(Handle::Write { ino: attr.ino, writer: Box::new(writer), base: 0 })))
    }

    /// Reads from an open file.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        let mut g = h.lock().await;
        self.materialize(&mut g).await?;
        match &mut *g {
            Handle::Read { reader, .. } => reader.read(offset, size).await,
            Handle::Write { writer, .. } => writer.read(offset, size).await,
            Handle::Dir { .. } => Err(Errno::EISDIR),
            Handle::Restored { .. } => Err(Errno::EIO),
        }
    }

    /// Writes to an open file.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let mut g = h.lock().await;
        self.materialize(&mut g).await?;
        let Handle::Write { ino, writer, base } = &mut *g else { return Err(Errno::EBADF) };
        self.check_quota(*base, writer.size().max(offset + data.len() as u64))?;
        if !writer.is_dirty() && !writer.is_detached() {
            // Before the data is taken: a successor must know this handle holds some.
            self.log(JournalRecord::Dirty { fh, dirty: true });
        }
        let had_upload = writer.upload_started();
        let n = writer.write(offset, data).await?;
        if !had_upload {
            if let Some((key, upload_id)) = writer.upload() {
                let (key, upload_id) = (key.to_string(), upload_id.to_string());
                self.log(JournalRecord::Upload { fh, key, upload_id });
            }
        }
        let size = writer.size();
        let ino = *ino;
        drop(g);
        self.update_attr(ino, |i| {
            i.attr.size = size;
            i.attr.mtime = SystemTime::now();
        })?;
        Ok(n)
    }

    /// close(2) of one descriptor, and fsync(2): uploads pending content and returns
    /// its error, if any.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        let mut g = h.lock().await;
        self.materialize(&mut g).await?;
        if let Handle::Write { ino, writer, base } = &mut *g {
            let was_dirty = writer.is_dirty();
            writer.commit().await?;
            if was_dirty {
                self.log(JournalRecord::Dirty { fh, dirty: false });
            }
            if writer.is_detached() {
                // Unlinked while open: no object, no name to record.
                return Ok(());
            }
            self.charge(writer.size() as i64 - *base as i64);
            *base = writer.size();
            let ino = *ino;
            drop(g);
            let mut place = None;
            self.update_attr(ino, |i| {
                i.expires = Instant::now() + self.cfg.options.stat_cache_ttl;
                i.checked = Instant::now();
                place = Some((i.parent, i.name.clone()));
            })?;
            // The object exists from now on: a listing that ran since the create did not see it.
            if let Some((parent, name)) = place {
                self.note(parent, &name, Some(FileKind::File));
            }
        }
        Ok(())
    }

    /// Last close of an open file: uploads anything still pending (errors can only be
    /// logged here; flush already returned them) and frees the handle.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = self.handles.lock().remove(&fh) else { return Ok(()) };
        let mut g = h.lock().await;
        if matches!(&*g, Handle::Restored { stream: Some(_), .. }) {
            // A handed-over upload still has to complete at this close.
            self.materialize(&mut g).await?;
        }
        self.log(JournalRecord::Close { fh });
        match &*g {
            Handle::Read { ino, .. } => self.open_files.closed(*ino, fh, false),
            Handle::Restored { ino, kind, dirty, .. } => {
                if *kind != HandleKind::Dir {
                    self.open_files.closed(*ino, fh, false);
                }
                if *dirty {
                    tracing::error!(ino, fh, "a file open for writing lost its unstored content when its FUSE server died; its close fails with EIO");
                    return Err(Errno::EIO);
                }
                return Ok(());
            }
            _ => {}
        }
        if let Handle::Write { ino, writer, base } = &mut *g {
            let res = writer.commit().await;
            if res.is_ok() && !writer.is_detached() {
                self.charge(writer.size() as i64 - *base as i64);
                *base = writer.size();
            }
            let ino = *ino;
            self.open_files.closed(ino, fh, true);
            if res.is_err() {
                writer.abort().await;
                tracing::error!(ino, "upload failed at release; the error was returned by flush/fsync");
            }
            return res;
        }
        Ok(())
    }

    /// mkdir: writes a `dir/` marker with the directory's mode and owner.
    pub async fn mkdir(&self, parent: u64, name: &str, mode: u32, caller: Caller) -> FsResult<Attr> {
        self.new_entry(parent, name, FileKind::Dir, S_IFDIR | (mode & 0o7777), caller, Bytes::new(), None).await
    }

    /// mknod of a FIFO, a socket or a device node: an empty object with the type in its
    /// mode and the device number in `rdev` (as s3fs stores them); the kernel serves the
    /// node itself. Regular files go through [`Fs::create`].
    pub async fn mknod(&self, parent: u64, name: &str, mode: u32, rdev: u32, caller: Caller) -> FsResult<Attr> {
        let kind = SpecialKind::from_mode(mode).ok_or(Errno::EINVAL)?;
        let rdev = matches!(kind, SpecialKind::CharDevice | SpecialKind::BlockDevice).then_some(rdev);
        let mode = kind.type_bits() | (mode & 0o7777);
        self.new_entry(parent, name, FileKind::Special(kind), mode, caller, Bytes::new(), rdev).await
    }

    /// Creates a directory marker, a symlink object or a special node (not a regular
    /// file: those stream through a writer), refusing a name that exists.
    #[allow(clippy::too_many_arguments)]
    async fn new_entry(
        &self,
        parent: u64,
        name: &str,
        kind: FileKind,
        mode: u32,
        caller: Caller,
        body: Bytes,
        rdev: Option<u32>,
    ) -> FsResult<Attr> {
        self.writable()?;
        check_name(name)?;
        let p = self.dir_inode(parent)?;
        if self.lookup_quiet(parent, name).await?.is_some() {
            return Err(Errno::EEXIST);
        }
        let now = SystemTime::now();
        let stored =
            StoredMeta { mode: Some(mode), uid: Some(caller.uid), gid: Some(caller.gid), mtime: Some(now), rdev };
        let found = Found { kind, size: body.len() as u64, mtime: now, stored, has_marker: kind == FileKind::Dir };
        let inode = self.make_inode(&p, name, found);
        let key = self.key(&inode.path, kind);
        let put = PutOptions { content_type: None, ..self.put_options(name, stored) };
        self.store.put_object(&self.cfg.bucket, &key, body, &put).await.map_err(|e| store_errno("create", &e))?;
        self.note(parent, name, Some(kind));
        let attr = inode.attr;
        let mut t = self.table.lock();
        t.upsert(inode);
        t.add_lookup(attr.ino);
        Ok(attr)
    }

    /// A lookup that does not count a kernel reference.
    async fn lookup_quiet(&self, parent: u64, name: &str) -> FsResult<Option<Inode>> {
        match self.lookup(parent, name).await {
            Ok(a) => {
                let mut t = self.table.lock();
                t.unref(a.ino, 1);
                Ok(t.get(a.ino).cloned())
            }
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps a directory that just lost its last entry, if it only existed implicitly.
    async fn keep_dir(&self, dir: &Inode) -> FsResult<()> {
        if dir.ino == ROOT_INO || dir.has_marker {
            return Ok(());
        }
        let key = self.key(&dir.path, FileKind::Dir);
        let req = ListRequest { prefix: key.clone(), max_keys: Some(1), ..Default::default() };
        let page = self.store.list(&self.cfg.bucket, &req).await.map_err(|e| store_errno("unlink", &e))?;
        if page.objects.is_empty() && page.common_prefixes.is_empty() {
            let put = PutOptions::default();
            self.store
                .put_object(&self.cfg.bucket, &key, Bytes::new(), &put)
                .await
                .map_err(|e| store_errno("unlink", &e))?;
            if let Some(i) = self.table.lock().get_mut(dir.ino) {
                i.has_marker = true;
            }
        }
        Ok(())
    }

    fn negative_until(&self) -> Option<Instant> {
        let ttl = self.cfg.options.stat_cache_ttl;
        (!ttl.is_zero()).then(|| Instant::now() + ttl)
    }

    /// unlink.
    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let p = self.dir_inode(parent)?;
        let i = self.lookup_quiet(parent, name).await?.ok_or(Errno::ENOENT)?;
        if i.kind == FileKind::Dir {
            return Err(Errno::EISDIR);
        }
        // Writers of the file stop uploading before the object goes: a close after the
        // unlink must not bring the name back (POSIX: the data lives on, nameless, until
        // the last close).
        let mut stored_size = i.attr.size;
        for h in self.handles_of(i.ino) {
            if let Handle::Write { writer, base, .. } = &mut *h.lock().await {
                writer.detach().await;
                stored_size = *base;
            }
        }
        let key = self.key(&i.path, FileKind::File);
        match self.store.delete_object(&self.cfg.bucket, &key).await {
            Ok(()) => {}
            // Created but never uploaded: nothing to delete.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(store_errno("unlink", &e)),
        }
        self.charge(-(stored_size as i64));
        self.table.lock().remove_name(parent, name, self.negative_until());
        self.note(parent, name, None);
        self.keep_dir(&p).await
    }

    /// rmdir: ENOTEMPTY unless only the marker is left.
    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let p = self.dir_inode(parent)?;
        let i = self.lookup_quiet(parent, name).await?.ok_or(Errno::ENOENT)?;
        if i.kind != FileKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let key = self.key(&i.path, FileKind::Dir);
        let req = ListRequest { prefix: key.clone(), max_keys: Some(2), ..Default::default() };
        let page = self.store.list(&self.cfg.bucket, &req).await.map_err(|e| store_errno("rmdir", &e))?;
        if page.objects.iter().any(|o| o.key != key) || !page.common_prefixes.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.store.delete_object(&self.cfg.bucket, &key).await.map_err(|e| store_errno("rmdir", &e))?;
        self.table.lock().remove_name(parent, name, self.negative_until());
        self.note(parent, name, None);
        self.keep_dir(&p).await
    }

    /// rename: files by server-side copy + delete; directories key by key (not atomic).
    pub async fn rename(&self, parent: u64, name: &str, newparent: u64, newname: &str, flags: u32) -> FsResult<()> {
        self.writable()?;
        check_name(newname)?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(Errno::EINVAL);
        }
        let p = self.dir_inode(parent)?;
        let np = self.dir_inode(newparent)?;
        let src = self.lookup_quiet(parent, name).await?.ok_or(Errno::ENOENT)?;
        let dst = self.lookup_quiet(newparent, newname).await?;
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(Errno::EEXIST);
            }
            if d.ino == src.ino {
                return Ok(());
            }
            match (src.kind == FileKind::Dir, d.kind == FileKind::Dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) => self.rmdir(newparent, newname).await?,
                (false, false) => {}
            }
        }
        let new_path = Self::child_path(&np, newname);
        if src.kind == FileKind::Dir {
            if new_path.starts_with(&format!("{}/", src.path)) {
                return Err(Errno::EINVAL);
            }
            let from = self.key(&src.path, FileKind::Dir);
            let to = self.key(&new_path, FileKind::Dir);
            let mut req = ListRequest::recursive(from.clone());
            loop {
                let page = self.store.list(&self.cfg.bucket, &req).await.map_err(|e| store_errno("rename", &e))?;
                let keys: Vec<String> = page.objects.into_iter().map(|o| o.key).collect();
                let placement = self.copy_placement();
                for k in &keys {
                    let dest = format!("{to}{}", &k[from.len()..]);
                    self.store
                        .copy_object(&self.cfg.bucket, k, &dest, placement.as_ref())
                        .await
                        .map_err(|e| store_errno("rename", &e))?;
                }
                let failed =
                    self.store.delete_objects(&self.cfg.bucket, &keys).await.map_err(|e| store_errno("rename", &e))?;
                if let Some((_, e)) = failed.first() {
                    return Err(store_errno("rename", e));
                }
                if page.next_continuation.is_none() {
                    break;
                }
                // Deleted keys are gone, so the listing restarts from the beginning.
                req.continuation = None;
            }
        } else {
            self.rename_file(&src, newname, &new_path).await?;
        }
        {
            let mut t = self.table.lock();
            t.remove_name(parent, name, self.negative_until());
            t.clear_negative(newparent, newname);
            if src.kind == FileKind::Dir {
                t.rename_subtree(&src.path, &new_path);
            }
        }
        self.note(parent, name, None);
        self.note(newparent, newname, Some(src.kind));
        let moved =
            Inode { parent: newparent, name: newname.to_string(), path: new_path, expires: Instant::now(), ..src };
        self.table.lock().upsert(moved);
        if parent != newparent || src.kind == FileKind::Dir {
            self.keep_dir(&p).await?;
        }
        Ok(())
    }

    /// Moves a file's object, and the pending content of its open handles with it: their
    /// uploads go to the new key, so a close after the rename never recreates the old
    /// name. The file's handles stay locked for the move, so no write slips between.
    async fn rename_file(&self, src: &Inode, newname: &str, new_path: &str) -> FsResult<()> {
        let from = self.key(&src.path, FileKind::File);
        let to = self.key(new_path, FileKind::File);
        let handles = self.handles_of(src.ino);
        let mut guards = Vec::with_capacity(handles.len());
        for h in &handles {
            guards.push(h.lock().await);
        }
        let mut pending = false;
        for g in guards.iter_mut() {
            if let Handle::Write { writer, base, .. } = &mut **g {
                // A started multipart upload is bound to its key: finish it where it is,
                // and the copy below moves it.
                if writer.upload_started() {
                    writer.commit().await?;
                    self.charge(writer.size() as i64 - *base as i64);
                    *base = writer.size();
                }
                pending |= writer.is_dirty();
            }
        }
        match self.store.copy_object(&self.cfg.bucket, &from, &to, self.copy_placement().as_ref()).await {
            Ok(()) => {
                self.store.delete_object(&self.cfg.bucket, &from).await.map_err(|e| store_errno("rename", &e))?;
            }
            // A new file whose content is still all in its writer: nothing stored to move.
            Err(e) if e.is_not_found() && pending => {}
            Err(e) => return Err(store_errno("rename", &e)),
        }
        for g in guards.iter_mut() {
            match &mut **g {
                Handle::Write { writer, .. } => {
                    let put =
                        PutOptions { metadata: writer.put.metadata.clone(), ..self.put_options(newname, src.stored) };
                    writer.retarget(to.clone(), put);
                }
                Handle::Read { reader, .. } => reader.retarget(to.clone()),
                // A restored handle finds its key from the inode's path when first used.
                Handle::Dir { .. } | Handle::Restored { .. } => {}
            }
        }
        Ok(())
    }

    /// symlink: an object holding the target, with S_IFLNK in its mode (as s3fs does).
    pub async fn symlink(&self, parent: u64, name: &str, target: &str, caller: Caller) -> FsResult<Attr> {
        let body = Bytes::copy_from_slice(target.as_bytes());
        self.new_entry(parent, name, FileKind::Symlink, S_IFLNK | 0o777, caller, body, None).await
    }

    /// readlink.
    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.kind != FileKind::Symlink {
            return Err(Errno::EINVAL);
        }
        let key = self.key(&i.path, FileKind::File);
        let resp =
            self.store.get_object(&self.cfg.bucket, &key, None).await.map_err(|e| store_errno("readlink", &e))?;
        Ok(collect_body(resp.body).await.map_err(|e| store_errno("readlink", &e))?.to_vec())
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
