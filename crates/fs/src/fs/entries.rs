//! Names made and removed: mkdir, mknod, symlink, unlink, rmdir and rename.

use super::*;

impl Fs {
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
    pub(super) async fn new_entry(
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
        let found = Found {
            kind,
            size: body.len() as u64,
            mtime: now,
            stored,
            has_marker: kind == FileKind::Dir,
            etag: String::new(),
        };
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
    pub(super) async fn lookup_quiet(&self, parent: u64, name: &str) -> FsResult<Option<Inode>> {
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
    pub(super) async fn keep_dir(&self, dir: &Inode) -> FsResult<()> {
        if dir.ino == ROOT_INO || dir.has_marker {
            return Ok(());
        }
        let key = self.key(&dir.path, FileKind::Dir);
        let req = ListRequest { prefix: key.clone(), max_keys: Some(1), ..Default::default() };
        let page = self.store.list(&self.cfg.bucket, &req).await.map_err(|e| store_errno("unlink", &e))?;
        if page.is_empty() {
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

    /// Until when "no such name" is believed without asking: `negative_ttl` from now
    /// (`None` when it is zero), never longer, so other clients' new names show.
    pub(super) fn negative_until(&self) -> Option<Instant> {
        let ttl = self.cfg.options.negative_ttl;
        (!ttl.is_zero() && !self.cfg.options.stat_cache_ttl.is_zero()).then(|| Instant::now() + ttl)
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
    pub(super) async fn rename_file(&self, src: &Inode, newname: &str, new_path: &str) -> FsResult<()> {
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
}
