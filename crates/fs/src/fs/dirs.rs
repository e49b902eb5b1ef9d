//! Directory handles: listings for readdir and readdirplus.

use super::*;

impl Fs {
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
                etag: String::new(),
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
}
