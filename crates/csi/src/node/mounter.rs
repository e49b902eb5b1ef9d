//! The node's mount operations behind a trait: the real one makes mount(2) calls (root
//! only), the in-memory one ([`FakeMounter`]) lets the volume lifecycle be tested as any
//! user. Every call may block (mount(2), FUSE INIT, the mount table), so the manager runs
//! them on the blocking pool, never on the async workers.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
pub use s3vol_mount::MountHealth;

/// What the node plugin does to mounts.
pub trait Mounter: Send + Sync + 'static {
    /// Mounts a FUSE filesystem at `target` (allow_other) and returns its connection.
    fn mount_fuse(&self, target: &Path, fsname: &str, read_only: bool) -> std::io::Result<OwnedFd>;

    /// Binds `source` at `target`, read-only in every mount namespace when asked.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> std::io::Result<()>;

    /// Binds the directory `sub` inside the mount `source` at `target`, never through a
    /// symbolic link; missing directories are created when `create`. A sub-path that is
    /// not a real directory is an `InvalidInput` error naming it.
    fn bind_subdir(
        &self,
        source: &Path,
        sub: &Path,
        target: &Path,
        read_only: bool,
        create: bool,
    ) -> std::io::Result<()>;

    /// Unmounts `path` if it is a mount point; a busy or broken mount is detached lazily.
    fn unmount(&self, path: &Path) -> std::io::Result<()>;

    /// Detaches `path` lazily, whatever its state (repairs); errors are ignored.
    fn detach(&self, path: &Path);

    /// Whether `path` is a mount point.
    fn is_mount_point(&self, path: &Path) -> bool;

    /// Whether the mount at `path` answers.
    fn health(&self, path: &Path) -> MountHealth;

    /// Aborts the FUSE connection mounted at `path` (its requests fail at once).
    fn abort_connection(&self, path: &Path) -> std::io::Result<()>;
}

/// mount(2) and friends, through `s3vol_mount`.
pub struct SystemMounter;

impl Mounter for SystemMounter {
    fn mount_fuse(&self, target: &Path, fsname: &str, read_only: bool) -> std::io::Result<OwnedFd> {
        s3vol_mount::mount_fuse(target, fsname, true, read_only).map_err(std::io::Error::other)
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> std::io::Result<()> {
        s3vol_mount::bind_mount(source, target, read_only).map_err(std::io::Error::from)
    }

    fn bind_subdir(
        &self,
        source: &Path,
        sub: &Path,
        target: &Path,
        read_only: bool,
        create: bool,
    ) -> std::io::Result<()> {
        let dir = s3vol_mount::open_subdir(source, sub, create).map_err(subdir_error)?;
        // The descriptor's magic link names the directory reached without following links.
        let via = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir)));
        s3vol_mount::bind_mount(&via, target, read_only).map_err(std::io::Error::from)
    }

    fn unmount(&self, path: &Path) -> std::io::Result<()> {
        if !s3vol_mount::is_mount_point(path) {
            return Ok(());
        }
        match s3vol_mount::unmount(path) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
            Err(_) => nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(std::io::Error::from),
        }
    }

    fn detach(&self, path: &Path) {
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    }

    fn is_mount_point(&self, path: &Path) -> bool {
        s3vol_mount::is_mount_point(path)
    }

    fn health(&self, path: &Path) -> MountHealth {
        s3vol_mount::mount_health(path)
    }

    fn abort_connection(&self, path: &Path) -> std::io::Result<()> {
        s3vol_mount::abort_connection(path)
    }
}

/// A sub-path the caller named wrongly is its error (`InvalidInput`); a failing mount is not.
fn subdir_error(e: s3vol_mount::SubdirError) -> std::io::Error {
    let kind = match &e {
        s3vol_mount::SubdirError::Io { source, .. } => source.kind(),
        _ => std::io::ErrorKind::InvalidInput,
    };
    std::io::Error::new(kind, e.to_string())
}

/// A bind needs its source mounted (NotFound otherwise, as mount(2) would fail).
fn mounted(table: &HashMap<PathBuf, FakeMount>, source: &Path) -> std::io::Result<()> {
    if table.contains_key(source) {
        Ok(())
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} is not mounted", source.display())))
    }
}

/// What the fake knows of one mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeMount {
    /// A FUSE mount (its connection was aborted when `aborted`).
    Fuse { fsname: String, read_only: bool, aborted: bool },
    /// A bind of `source`.
    Bind { source: PathBuf, read_only: bool },
}

/// Mounts kept in memory: a table of mount points, and memfds for connections. Lets the
/// lifecycle tests run without root; [`FakeMounter::mounts`] shows what a real node
/// would have mounted.
#[derive(Default)]
pub struct FakeMounter {
    table: Mutex<HashMap<PathBuf, FakeMount>>,
    /// While set, [`Mounter::health`] blocks, as a stat of a mount whose server died after
    /// reading the request does until a successor answers it.
    health_gate: Arc<(Mutex<bool>, parking_lot::Condvar)>,
    /// Mounts made on a path that already had one: a real node would stack them (a
    /// double mount), so a lifecycle that does this is wrong.
    stacked: std::sync::atomic::AtomicU32,
}

impl FakeMounter {
    /// The mount table, sorted by path.
    pub fn mounts(&self) -> Vec<(PathBuf, FakeMount)> {
        let mut v: Vec<_> = self.table.lock().iter().map(|(p, m)| (p.clone(), m.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// From now on health checks of mounts block until [`FakeMounter::release_health`].
    pub fn hold_health(&self) {
        *self.health_gate.0.lock() = true;
    }

    /// Lets blocked health checks return.
    pub fn release_health(&self) {
        *self.health_gate.0.lock() = false;
        self.health_gate.1.notify_all();
    }

    /// How many mounts were made over an existing one.
    pub fn stacked_mounts(&self) -> u32 {
        self.stacked.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn insert(&self, table: &mut HashMap<PathBuf, FakeMount>, target: &Path, m: FakeMount) {
        if table.insert(target.to_path_buf(), m).is_some() {
            self.stacked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Forgets every mount, as a node reboot does.
    pub fn reboot(&self) {
        self.table.lock().clear();
    }
}

impl Mounter for FakeMounter {
    fn mount_fuse(&self, target: &Path, fsname: &str, read_only: bool) -> std::io::Result<OwnedFd> {
        if !target.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not a directory", target.display()),
            ));
        }
        let conn = s3vol_mount::memfd("fake-fuse-connection")?;
        let m = FakeMount::Fuse { fsname: fsname.to_string(), read_only, aborted: false };
        self.insert(&mut self.table.lock(), target, m);
        Ok(conn)
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> std::io::Result<()> {
        let mut t = self.table.lock();
        mounted(&t, source)?;
        self.insert(&mut t, target, FakeMount::Bind { source: source.to_path_buf(), read_only });
        Ok(())
    }

    /// Resolves the sub-path in the (real, unmounted) staging directory with the same
    /// rules as the real mounter, then records a bind of it.
    fn bind_subdir(
        &self,
        source: &Path,
        sub: &Path,
        target: &Path,
        read_only: bool,
        create: bool,
    ) -> std::io::Result<()> {
        mounted(&self.table.lock(), source)?;
        s3vol_mount::open_subdir(source, sub, create).map_err(subdir_error)?;
        let m = FakeMount::Bind { source: source.join(sub), read_only };
        self.insert(&mut self.table.lock(), target, m);
        Ok(())
    }

    fn unmount(&self, path: &Path) -> std::io::Result<()> {
        self.table.lock().remove(path);
        Ok(())
    }

    fn detach(&self, path: &Path) {
        self.table.lock().remove(path);
    }

    fn is_mount_point(&self, path: &Path) -> bool {
        self.table.lock().contains_key(path)
    }

    fn health(&self, path: &Path) -> MountHealth {
        {
            let mut held = self.health_gate.0.lock();
            while *held {
                self.health_gate.1.wait(&mut held);
            }
        }
        match self.table.lock().get(path) {
            Some(FakeMount::Fuse { aborted: false, .. }) => MountHealth::Healthy,
            Some(_) => MountHealth::Broken("connection aborted".into()),
            None => MountHealth::NotMounted,
        }
    }

    fn abort_connection(&self, path: &Path) -> std::io::Result<()> {
        if let Some(FakeMount::Fuse { aborted, .. }) = self.table.lock().get_mut(path) {
            *aborted = true;
        }
        Ok(())
    }
}
