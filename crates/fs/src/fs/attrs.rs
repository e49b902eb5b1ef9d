//! chmod, chown, utimens and truncate: attributes kept as object metadata.

use super::*;

impl Fs {
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
    pub(super) async fn persist_meta(&self, i: &Inode, stored: StoredMeta) -> FsResult<()> {
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
}
