//! File handles: open, create, read, write, flush and release.

use super::*;

impl Fs {
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
            // With a read cache, a file whose version is unknown (this mount wrote it) is
            // asked for it once, whatever `open_cache` says, so its reads can be cached.
            let attr = if self.read_cache.is_some() && i.etag.is_empty() && !self.has_writer(ino) {
                self.verify(&i).await?
            } else {
                self.revalidated(&i).await?
            };
            let reader = self.reader(ino, key, attr.size);
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

    /// A reader of `size` bytes of `key` (inode `ino`), within the mount's memory budget and
    /// chunk buffers, through the read cache as the version the inode last learned (none
    /// when this mount changed the object since).
    pub(super) fn reader(&self, ino: u64, key: String, size: u64) -> Reader {
        let etag = self.inode(ino).map(|n| n.etag).unwrap_or_default();
        Reader::new(self.store.clone(), self.cfg.bucket.clone(), key, size, self.cfg.options.read_ahead)
            .with_budget(self.wcfg.budget.clone())
            .with_chunk_pool(self.chunk_pool.clone())
            .with_read_cache(self.read_cache.as_ref(), &etag)
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
            Found {
                kind: FileKind::File,
                size: 0,
                mtime: SystemTime::now(),
                stored,
                has_marker: false,
                etag: String::new(),
            },
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
}
