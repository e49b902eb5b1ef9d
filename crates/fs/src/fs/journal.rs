//! The state journal: what a successor server needs (node ids, open handles, uploads
//! under way), its compaction, and taking a predecessor's state over.

use super::*;

impl Fs {
    pub(super) fn log(&self, rec: JournalRecord) {
        if let Some(j) = &self.journal {
            let _shared = self.journal_gate.read();
            j.append(&rec);
        }
    }

    /// Replaces the journal's history by the live state once it asked for it (a mount
    /// that looked up millions of names would otherwise keep every one of them).
    pub(super) fn compact_journal_if_due(&self) {
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
    pub(super) async fn materialize(&self, h: &mut Handle) -> FsResult<()> {
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
                Handle::Read { ino, reader: self.reader(ino, key, attr.size) }
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
}
