//! Names to inodes: lookups against the store and the directory index, attribute
//! revalidation, and the kernel's forgets.

use super::*;

impl Fs {
    /// Asks the store what `name` in `parent` is: a HEAD of the key and a one-key LIST of
    /// `key/` in parallel (the LIST finds marker and implicit directories alike).
    pub(super) async fn probe(&self, parent: &Inode, name: &str) -> FsResult<Option<Inode>> {
        self.probe_known(parent, name, false).await
    }

    /// [`Fs::probe`]; `known_file`: the name is a file this mount already knows (a
    /// revalidation), so, as for a name a recent listing showed as a plain object (no
    /// `name/` prefix beside it), its metadata needs only a HEAD, not the LIST that
    /// detects directories. Gone, it gets the full question.
    async fn probe_known(&self, parent: &Inode, name: &str, known_file: bool) -> FsResult<Option<Inode>> {
        if known_file || self.index.kind(parent.ino, name) == Some(FileKind::File) {
            let path = Self::child_path(parent, name);
            // Fetched in the background while the directory was read (see AttrPrefetch).
            let (head, fetched) = match self.prefetch.take(parent.ino, name).await {
                Some((m, at)) => (Ok(m), Some(at)),
                None => (self.store.head_object(&self.cfg.bucket, &self.key(&path, FileKind::File)).await, None),
            };
            match head {
                Ok(m) => {
                    let mut inode = self.make_inode(parent, name, Found::object(&m));
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
        let list = {
            let (store, bucket) = (self.store.clone(), self.cfg.bucket.clone());
            tokio::spawn(async move { store.list(&bucket, &list_req).await })
        };
        let head = self.store.head_object(&self.cfg.bucket, &file_key).await;
        // A file found needs no wait for the LIST unless the name is known to be a
        // directory too, or the object is empty (tools that write a `name` placeholder
        // for a directory write it empty): the LIST ends in the background (DirChecks).
        let maybe_dir = self.index.kind(parent.ino, name) == Some(FileKind::Dir)
            || self.dir_checks.state(parent.ino, name) == Some(DirCheck::IsDir)
            || head.as_ref().is_ok_and(|m| m.size == 0)
            // Already answered: no reason to give a provisional answer.
            || list.is_finished();
        if let (false, Ok(m)) = (maybe_dir, &head) {
            let checks = self.dir_checks.clone();
            checks.start(parent.ino, name);
            let (dir, name_owned) = (parent.ino, name.to_string());
            tokio::spawn(async move {
                let is_dir = match list.await {
                    Ok(Ok(page)) => !page.is_empty(),
                    // The file answer stands; the next lookup after the TTL asks again.
                    _ => false,
                };
                checks.finish(dir, &name_owned, is_dir);
            });
            return Ok(Some(self.make_inode(parent, name, Found::object(m))));
        }
        self.dir_checks.clear(parent.ino, name);
        let list = match list.await {
            Ok(list) => list.map_err(|e| store_errno("lookup", &e))?,
            Err(e) => {
                tracing::warn!(error = %e, "directory check of a lookup did not finish");
                return Err(Errno::EIO);
            }
        };
        if !list.is_empty() {
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
                Found { kind: FileKind::Dir, size: 0, mtime, stored, has_marker, etag: String::new() },
            )));
        }
        match head {
            Ok(m) => Ok(Some(self.make_inode(parent, name, Found::object(&m)))),
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
            // A name answered as a file whose directory check found keys under `name/`:
            // forget the file answer; the probe below answers with the directory.
            if self.dir_checks.state(parent, name) == Some(DirCheck::IsDir) {
                t.remove_name(parent, name, None);
            }
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
            if let Some(after) = self.index.refresh_due(parent, name) {
                self.refresh_listing(&p, after);
            }
            return Err(Errno::ENOENT);
        }
        match self.probe(&p, name).await? {
            Some(inode) => {
                let attr = inode.attr;
                // What the store said, not a change of this mount: a directory check
                // the probe left running stays.
                self.index.record(parent, name, Some(inode.kind));
                self.prefetch.forget(parent, name);
                {
                    let mut t = self.table.lock();
                    t.upsert(inode);
                    t.add_lookup(attr.ino);
                }
                self.compact_journal_if_due();
                Ok(attr)
            }
            None => {
                let until = self.negative_until();
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
    pub(super) fn list_in_background(&self, dir: &Inode, name: &str) {
        if !self.index.missed(dir.ino, name) {
            return;
        }
        let (index, ino, name) = (self.index.clone(), dir.ino, name.to_string());
        self.record_pages_in_background(dir, move |stream| async move {
            if !index.has_first_page(ino) {
                stream().record_page().await?;
            }
            if index.wants_listing(ino, &name) {
                stream().after(&name).record_page().await?;
            }
            Ok(())
        });
    }

    /// Runs `pages` in the background with a maker of streams over `dir` that record into
    /// the directory index; a failure is logged and lookups ask the store meanwhile.
    fn record_pages_in_background<F, Fut>(&self, dir: &Inode, pages: F)
    where
        F: FnOnce(Box<dyn Fn() -> DirStream + Send>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = FsResult<()>> + Send,
    {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let key = self.key(&dir.path, FileKind::Dir);
        let (store, bucket, index) = (self.store.clone(), self.cfg.bucket.clone(), self.index.clone());
        let (ino, hide_marker) = (dir.ino, dir.ino == ROOT_INO);
        let stream = Box::new(move || {
            DirStream::new(store.clone(), bucket.clone(), key.clone(), hide_marker).recording(index.clone(), ino)
        });
        rt.spawn(async move {
            if let Err(e) = pages(stream).await {
                tracing::debug!(dir = ino, error = %e, "background listing failed; lookups ask the store");
            }
        });
    }

    /// Lists one page of `dir` from `after` again in the background (see
    /// [`DirIndex::refresh_due`]): a range answering a burst of misses is renewed before
    /// it expires instead of each miss after it paying a HEAD and a LIST.
    fn refresh_listing(&self, dir: &Inode, after: Option<String>) {
        self.record_pages_in_background(dir, move |stream| async move {
            match after {
                Some(after) => stream().after(&after).record_page().await,
                None => stream().record_page().await,
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
    pub(super) async fn verify(&self, i: &Inode) -> FsResult<Attr> {
        let parent = self.inode(i.parent)?;
        // A file's revalidation (every open after `open_cache`) needs its HEAD only.
        match self.probe_known(&parent, &i.name, i.kind == FileKind::File).await? {
            Some(fresh) if fresh.kind == i.kind || i.kind == FileKind::File => {
                let attr = Attr { ino: i.ino, ..fresh.attr };
                let mut t = self.table.lock();
                if let Some(cur) = t.get_mut(i.ino) {
                    cur.attr = attr;
                    cur.kind = fresh.kind;
                    cur.stored = fresh.stored;
                    cur.has_marker = fresh.has_marker;
                    cur.etag = fresh.etag;
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
    /// pending or the store confirmed them within `open_cache` (1 s by default), else the
    /// object's own (close-to-open: a file another client closed is seen at the next
    /// open, however long `stat` may cache it).
    pub(super) async fn revalidated(&self, i: &Inode) -> FsResult<Attr> {
        if self.has_writer(i.ino) || i.checked.elapsed() < self.cfg.options.open_cache {
            return Ok(i.attr);
        }
        self.verify(i).await
    }

    pub(super) fn update_attr(&self, ino: u64, f: impl FnOnce(&mut Inode)) -> FsResult<Attr> {
        let mut t = self.table.lock();
        let i = t.get_mut(ino).ok_or(Errno::ENOENT)?;
        // Whatever this mount changes, the version a HEAD named is no longer known.
        i.etag.clear();
        f(i);
        let o = &self.cfg.options;
        i.attr = i.stored.attr(ino, i.kind, i.attr.size, i.attr.mtime, o);
        Ok(i.attr)
    }
}
