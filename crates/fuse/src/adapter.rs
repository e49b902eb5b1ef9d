use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use fuser::consts::{
    FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE, FUSE_ASYNC_READ, FUSE_ATOMIC_O_TRUNC, FUSE_BIG_WRITES, FUSE_DO_READDIRPLUS,
    FUSE_PARALLEL_DIROPS,
};
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, Notifier, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use s3vol_fs::{Attr, Caller, Errno, FileKind, Fs, SetAttr, SpecialKind};

use crate::drain::DrainControl;

/// Largest single read/write the kernel sends us.
const MAX_IO: u32 = 1 << 20;

/// fuser's view of an `Fs`. Every request becomes a task on the runtime and replies
/// when done, so the single kernel-channel thread never waits on the network.
pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    /// The connection was initialised by a predecessor; the INIT this session sees is
    /// synthetic (see `resume`).
    resumed: bool,
    /// Admits requests until a graceful handover begins.
    drain: DrainControl,
    /// The session's way to tell the kernel its cached attributes are stale (set once
    /// the session exists).
    notifier: Arc<OnceLock<Notifier>>,
}

impl FuseAdapter {
    /// An adapter running operations on `rt`.
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle) -> Self {
        FuseAdapter { fs, rt, resumed: false, drain: DrainControl::default(), notifier: Arc::default() }
    }

    /// Where the session's [`Notifier`] goes once the session is made from this adapter.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// The same adapter, drained through `drain` at a graceful handover.
    pub fn drained_by(self, drain: DrainControl) -> Self {
        FuseAdapter { drain, ..self }
    }

    /// The same adapter for a connection another server initialised.
    pub fn resumed(self) -> Self {
        FuseAdapter { resumed: true, ..self }
    }

    /// Runs one request. Most finish without waiting for the store (a cached lookup, a
    /// write into the part buffer, a read from prefetched data): those run right here on
    /// the session thread and answer the kernel without waking a worker thread. A request
    /// that has to wait continues as a task on the runtime, so the session thread never
    /// waits for the network.
    fn run<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(running) = self.drain.admit() else {
            // Draining for a handover: leave the request unanswered (dropping the future
            // would drop its reply, which answers EIO). The kernel keeps it for the
            // successor, which asks for it again with FUSE_NOTIFY_RESEND.
            std::mem::forget(fut);
            return;
        };
        let fut = async move {
            fut.await;
            drop(running);
        };
        let _in_runtime = self.rt.enter();
        let mut fut = Box::pin(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // A panic in one request must fail that request, not the session thread (which
        // would end the mount with ENOTCONN for everyone). The future, and with it the
        // unsent reply, is dropped: fuser answers a dropped reply with EIO. Requests that
        // continue on the runtime are isolated the same way by the task boundary.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::future::Future::poll(fut.as_mut(), &mut cx)
        })) {
            Ok(std::task::Poll::Ready(())) => {}
            Ok(std::task::Poll::Pending) => {
                // Polled again by the runtime at once, with a waker that counts.
                self.rt.spawn(fut);
            }
            Err(_) => tracing::error!("a FUSE request panicked; it was answered with EIO"),
        }
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Special(SpecialKind::Fifo) => FileType::NamedPipe,
        FileKind::Special(SpecialKind::Socket) => FileType::Socket,
        FileKind::Special(SpecialKind::CharDevice) => FileType::CharDevice,
        FileKind::Special(SpecialKind::BlockDevice) => FileType::BlockDevice,
    }
}

fn to_file_attr(a: &Attr) -> FileAttr {
    let kind = file_type(a.kind);
    FileAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind,
        perm: a.perm as u16,
        nlink: if a.kind == FileKind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn name_of(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

fn caller(req: &Request<'_>) -> Caller {
    Caller { uid: req.uid(), gid: req.gid(), pid: req.pid() }
}

fn time_of(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::Now => SystemTime::now(),
        TimeOrNow::SpecificTime(t) => t,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let mut caps = FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_ASYNC_READ | FUSE_PARALLEL_DIROPS;
        if self.fs.options().list_attrs {
            caps |= FUSE_DO_READDIRPLUS;
        }
        let _ = config.add_capabilities(caps);
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        if self.resumed {
            tracing::info!("FUSE session resumed on a live connection");
        } else {
            tracing::info!("FUSE session initialised");
        }
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let fs = self.fs.clone();
        let name = name_of(name);
        self.run(async move {
            let looked_up = match name {
                Ok(name) => fs.lookup(parent, &name).await.map(|a| (a, fs.entry_ttl(parent, &name))),
                Err(e) => Err(e),
            };
            match looked_up {
                Ok((a, ttl)) => reply.entry(&ttl, &to_file_attr(&a), 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.fs.forget(ino, nlookup);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let fs = self.fs.clone();
        self.run(async move {
            match fs.getattr(ino).await {
                Ok(a) => reply.attr(&fs.ttl(), &to_file_attr(&a)),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let fs = self.fs.clone();
        let set = SetAttr { mode, uid, gid, size, mtime: mtime.map(time_of) };
        self.run(async move {
            match fs.setattr(ino, set, fh).await {
                Ok(a) => reply.attr(&fs.ttl(), &to_file_attr(&a)),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let fs = self.fs.clone();
        self.run(async move {
            match fs.readlink(ino).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let fs = self.fs.clone();
        let name = name_of(name);
        let who = caller(req);
        if mode & libc::S_IFMT != libc::S_IFREG {
            // FIFOs, sockets, device nodes: stored as the node alone.
            self.run(async move {
                match async { fs.mknod(parent, &name?, mode, rdev, who).await }.await {
                    Ok(a) => reply.entry(&fs.ttl(), &to_file_attr(&a), 0),
                    Err(e) => reply.error(e.0),
                }
            });
            return;
        }
        self.run(async move {
            let res = async {
                let (attr, fh) = fs.create(parent, &name?, mode, who).await?;
                fs.flush(fh).await?;
                fs.release(fh).await?;
                Ok::<_, Errno>(attr)
            }
            .await;
            match res {
                Ok(a) => reply.entry(&fs.ttl(), &to_file_attr(&a), 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn mkdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let fs = self.fs.clone();
        let name = name_of(name);
        let who = caller(req);
        self.run(async move {
            match async { fs.mkdir(parent, &name?, mode, who).await }.await {
                Ok(a) => reply.entry(&fs.ttl(), &to_file_attr(&a), 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        let name = name_of(name);
        self.run(async move {
            match async { fs.unlink(parent, &name?).await }.await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        let name = name_of(name);
        self.run(async move {
            match async { fs.rmdir(parent, &name?).await }.await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let fs = self.fs.clone();
        let name = name_of(link_name);
        let target = target.as_os_str().to_str().map(str::to_string);
        let who = caller(req);
        self.run(async move {
            let res = async { fs.symlink(parent, &name?, &target.ok_or(Errno::EINVAL)?, who).await }.await;
            match res {
                Ok(a) => reply.entry(&fs.ttl(), &to_file_attr(&a), 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        let (name, newname) = (name_of(name), name_of(newname));
        self.run(async move {
            match async { fs.rename(parent, &name?, newparent, &newname?, flags).await }.await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn link(&mut self, _req: &Request<'_>, _ino: u64, _newparent: u64, _newname: &OsStr, reply: ReplyEntry) {
        // Objects cannot share content: hard links are not supported (SEMANTICS.md).
        reply.error(libc::EOPNOTSUPP);
    }

    fn open(&mut self, req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let who = caller(req);
        let notifier = self.notifier.clone();
        self.run(async move {
            let before = fs.cached_attr(ino);
            match fs.open(ino, flags, who).await {
                Ok(fh) => {
                    // Close-to-open found another client's new object: the kernel's size
                    // and times (cached for stat_cache_ttl) must not clip or date its reads.
                    let after = fs.cached_attr(ino);
                    let changed = before.zip(after).is_some_and(|(b, a)| b.size != a.size || b.mtime != a.mtime);
                    if let Some(n) = notifier.get().filter(|_| changed) {
                        if let Err(e) = n.inval_inode(ino, -1, 0) {
                            tracing::debug!(ino, error = %e, "attribute invalidation not delivered");
                        }
                    }
                    reply.opened(fh, 0)
                }
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.run(async move {
            match fs.read(fh, offset.max(0) as u64, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let fs = self.fs.clone();
        let data = data.to_vec();
        self.run(async move {
            match fs.write(fh, offset.max(0) as u64, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.run(async move {
            match fs.flush(fh).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.run(async move {
            match fs.release(fh).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.run(async move {
            match fs.flush(fh).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.run(async move {
            match fs.opendir(ino).await {
                Ok(fh) => {
                    // Let the kernel cache the entries; keep what it cached from the last
                    // listing only while that listing is fresh.
                    let keep = if fs.dir_cache_fresh(ino) { FOPEN_KEEP_CACHE } else { 0 };
                    reply.opened(fh, FOPEN_CACHE_DIR | keep)
                }
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let fs = self.fs.clone();
        self.run(async move {
            match fs.readdir(ino, fh, offset.max(0) as u64).await {
                Ok(entries) => {
                    for (child, next, e) in entries {
                        let kind = file_type(e.kind);
                        if reply.add(child, next as i64, kind, OsStr::from_bytes(e.name.as_bytes())) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn readdirplus(&mut self, _req: &Request<'_>, ino: u64, fh: u64, offset: i64, mut reply: ReplyDirectoryPlus) {
        let fs = self.fs.clone();
        self.run(async move {
            match fs.readdirplus(ino, fh, offset.max(0) as u64).await {
                Ok(entries) => {
                    for (attr, next, name, ttl) in entries {
                        if reply.add(
                            attr.ino,
                            next as i64,
                            OsStr::from_bytes(name.as_bytes()),
                            &ttl,
                            &to_file_attr(&attr),
                            0,
                        ) {
                            // The kernel's buffer is full; it asks again from the last
                            // entry it took.
                            break;
                        }
                        fs.entry_sent(attr.ino, &name);
                    }
                    reply.ok();
                }
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn releasedir(&mut self, _req: &Request<'_>, ino: u64, fh: u64, _flags: i32, reply: ReplyEmpty) {
        self.fs.releasedir(ino, fh);
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize);
    }

    // ENOSYS (not EOPNOTSUPP): the kernel then stops asking for the rest of the mount and
    // answers EOPNOTSUPP itself, which saves `ls -l` a round trip per entry (it reads
    // security and ACL attributes of every file).
    fn getxattr(&mut self, _req: &Request<'_>, _ino: u64, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(libc::ENOSYS);
    }

    fn listxattr(&mut self, _req: &Request<'_>, _ino: u64, _size: u32, reply: ReplyXattr) {
        reply.error(libc::ENOSYS);
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let fs = self.fs.clone();
        let name = name_of(name);
        let who = caller(req);
        self.run(async move {
            match async { fs.create(parent, &name?, mode, who).await }.await {
                Ok((a, fh)) => reply.created(&fs.ttl(), &to_file_attr(&a), 0, fh, 0),
                Err(e) => reply.error(e.0),
            }
        });
    }
}
