//! Directory listing, streamed page by page over ListObjectsV2 with `/` as delimiter:
//! only one page of entries is held at a time, however large the directory.

use std::sync::Arc;

use s3vol_store::{ErrorKind, ListPage, ListRequest, ObjectStore, StoreError, StoreResult};

use crate::attr::FileKind;
use crate::dir_index::DirIndex;
use crate::error::{store_errno, FsResult};

/// Name of the ownership marker s3vol's provisioner writes at a volume root; hidden.
pub const VOLUME_MARKER: &str = ".s3vol-volume.json";

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Name in the directory.
    pub name: String,
    /// Type as the listing shows it (symlinks show as files until looked up).
    pub kind: FileKind,
    /// Size from the listing (0 for directories).
    pub size: u64,
    /// Modification time from the listing (the listing time for directories).
    pub mtime: std::time::SystemTime,
}

/// An open directory: a window of entries and the listing position after it.
pub struct DirStream {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    /// Directory key, empty or ending in `/`.
    dir_key: String,
    hide_marker: bool,
    /// Index (readdir offset) of `entries[0]`.
    base: u64,
    entries: Vec<DirEntry>,
    token: Option<String>,
    started: bool,
    done: bool,
    /// Where pages are recorded (directory inode), and the id of this listing there.
    index: Option<(Arc<DirIndex>, u64)>,
    build: Option<u64>,
    /// List from after this name (a range of the directory), not from its start.
    after: Option<String>,
    /// The last page's last key or common prefix, relative to the directory.
    last_upto: Option<String>,
    /// Whether the next page is requested as soon as one arrives (a reader going through
    /// the whole directory: the LIST overlaps with what the reader does with the page).
    read_ahead: bool,
    /// The next page's request in flight, with the continuation token it continues from.
    pending: Option<(String, tokio::task::JoinHandle<StoreResult<ListPage>>)>,
}

impl Drop for DirStream {
    fn drop(&mut self) {
        if let Some((_, h)) = self.pending.take() {
            h.abort();
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/') && n.len() <= 255
}

impl DirStream {
    /// A listing of `dir_key`; `hide_marker` at a volume root.
    pub fn new(store: Arc<dyn ObjectStore>, bucket: String, dir_key: String, hide_marker: bool) -> Self {
        DirStream {
            store,
            bucket,
            dir_key,
            hide_marker,
            base: 0,
            entries: Vec::new(),
            token: None,
            started: false,
            done: false,
            index: None,
            build: None,
            after: None,
            last_upto: None,
            read_ahead: false,
            pending: None,
        }
    }

    /// Requests each next page while the reader takes the current one.
    pub fn reading_ahead(mut self) -> Self {
        self.read_ahead = true;
        self
    }

    /// Lists from after `name` on, not from the directory's start.
    pub fn after(mut self, name: &str) -> Self {
        self.after = Some(name.to_string());
        self
    }

    /// Records every page in `index` as the listing of directory `dir`, so a listing that
    /// reaches the end makes the directory's content known.
    pub fn recording(mut self, index: Arc<DirIndex>, dir: u64) -> Self {
        self.index = Some((index, dir));
        self
    }

    async fn next_page(&mut self) -> FsResult<()> {
        let mut req = ListRequest::directory(self.dir_key.clone());
        req.continuation = self.token.take();
        let first_page = req.continuation.is_none();
        if first_page {
            req.start_after = self.after.as_ref().map(|n| format!("{}{n}", self.dir_key));
            // Registered before the request: changes made while it is in flight are
            // journaled, and no second listing of the directory starts meanwhile.
            if let Some((index, dir)) = &self.index {
                self.build = index.begin(*dir, self.after.as_deref());
            }
        }
        let ahead = match self.pending.take() {
            Some((token, h)) if req.continuation.as_deref() == Some(token.as_str()) => Some(h),
            Some((_, h)) => {
                h.abort();
                None
            }
            None => None,
        };
        let page = match ahead {
            Some(h) => match h.await {
                Ok(res) => res,
                Err(e) => Err(StoreError::new(ErrorKind::Other, format!("listing read-ahead task: {e}"))),
            },
            None => self.store.list(&self.bucket, &req).await,
        };
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                // The reader may ask again: the same page then, from the same place (not
                // the directory's first page at this page's offsets).
                self.token = req.continuation;
                return Err(store_errno("readdir", &e));
            }
        };
        self.started = true;
        let plen = self.dir_key.len();
        // The page's last key or common prefix, relative to the directory: where it stops.
        let last_object = page.objects.last().map(|o| &o.key[plen.min(o.key.len())..]);
        let last_prefix = page.common_prefixes.last().map(|p| &p[plen.min(p.len())..]);
        let upto = last_object.max(last_prefix).map(str::to_string);
        let mut out: Vec<DirEntry> = Vec::with_capacity(page.objects.len() + page.common_prefixes.len());
        for p in &page.common_prefixes {
            let name = p[plen..].trim_end_matches('/');
            if valid_name(name) {
                out.push(DirEntry {
                    name: name.to_string(),
                    kind: FileKind::Dir,
                    size: 0,
                    mtime: std::time::SystemTime::now(),
                });
            }
        }
        for o in &page.objects {
            let name = &o.key[plen..];
            if !valid_name(name) || (self.hide_marker && name == VOLUME_MARKER) {
                continue;
            }
            // A directory shadows a file of the same name.
            if out.iter().any(|e| e.kind == FileKind::Dir && e.name == name) {
                continue;
            }
            out.push(DirEntry { name: name.to_string(), kind: FileKind::File, size: o.size, mtime: o.last_modified });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        self.base += self.entries.len() as u64;
        self.token = page.next_continuation;
        self.done = self.token.is_none();
        if let (true, Some(token), Ok(rt)) = (self.read_ahead, &self.token, tokio::runtime::Handle::try_current()) {
            let mut next = ListRequest::directory(self.dir_key.clone());
            next.continuation = Some(token.clone());
            let (store, bucket) = (self.store.clone(), self.bucket.clone());
            self.pending = Some((token.clone(), rt.spawn(async move { store.list(&bucket, &next).await })));
        }
        if let Some((index, dir)) = &self.index {
            if let Some(id) = self.build {
                let recorded = index.add_page(*dir, id, out.iter().map(|e| (e.name.as_str(), e.kind)));
                if recorded && self.done {
                    index.finish(*dir, id, None);
                }
                if !recorded || self.done {
                    self.build = None;
                }
            }
        }
        self.entries = out;
        self.last_upto = upto;
        Ok(())
    }

    /// Lists one page into the index it records to and ends the listing there: the
    /// names from the start-after name up to the page's last key are then known.
    pub async fn record_page(&mut self) -> FsResult<()> {
        self.next_page().await?;
        if let (Some((index, dir)), Some(id)) = (&self.index, self.build.take()) {
            index.finish(*dir, id, self.last_upto.as_deref());
        }
        Ok(())
    }

    /// Whether the listing reached its end without a rewind since it started.
    pub fn complete(&self) -> bool {
        self.started && self.done
    }

    /// Entries from listing index `index` on (at least one, unless the listing is over).
    pub async fn entries_from(&mut self, index: u64) -> FsResult<(u64, &[DirEntry])> {
        if index < self.base || !self.started {
            // A rewind (or the first call): list from the start again.
            self.base = 0;
            self.entries.clear();
            self.token = None;
            self.done = false;
            if let Some((_, h)) = self.pending.take() {
                h.abort();
            }
            self.next_page().await?;
        }
        while index >= self.base + self.entries.len() as u64 && !self.done {
            self.next_page().await?;
        }
        let skip = (index.saturating_sub(self.base) as usize).min(self.entries.len());
        Ok((self.base + skip as u64, &self.entries[skip..]))
    }
}
