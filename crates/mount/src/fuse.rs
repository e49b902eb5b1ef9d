use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

/// Why a FUSE mount could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// /dev/fuse could not be opened (module not loaded, no device in the container).
    #[error("cannot open /dev/fuse: {0} (is the fuse module loaded and /dev/fuse available?)")]
    Device(nix::Error),
    /// The mount point is missing or not a directory.
    #[error("mount point {path}: {source}")]
    MountPoint {
        /// Path.
        path: String,
        /// Cause.
        source: nix::Error,
    },
    /// mount(2) failed.
    #[error("mount(2) of {path} failed: {source} (mounting needs root or CAP_SYS_ADMIN)")]
    Mount {
        /// Path.
        path: String,
        /// Cause.
        source: nix::Error,
    },
}

/// Opens /dev/fuse and mounts it at `mountpoint` with mount(2). Returns the device fd
/// the FUSE server must serve. `allow_other` lets other users in (pods); permissions are
/// always checked by the kernel against the modes we report (`default_permissions`).
pub fn mount_fuse(mountpoint: &Path, fsname: &str, allow_other: bool, read_only: bool) -> Result<OwnedFd, MountError> {
    let path = mountpoint.display().to_string();
    let st =
        nix::sys::stat::stat(mountpoint).map_err(|source| MountError::MountPoint { path: path.clone(), source })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(MountError::MountPoint { path, source: nix::Error::ENOTDIR });
    }
    let fd =
        nix::fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).map_err(MountError::Device)?;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions",
        fd.as_raw_fd(),
        st.st_mode & libc::S_IFMT,
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(Some(fsname), mountpoint, Some("fuse.s3vol"), flags, Some(data.as_str()))
        .map_err(|source| MountError::Mount { path, source })?;
    Ok(fd)
}

/// Unmounts, falling back to a lazy (detached) unmount when the mount is busy.
pub fn unmount(mountpoint: &Path) -> nix::Result<()> {
    match nix::mount::umount2(mountpoint, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::Error::EBUSY) => nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH),
        Err(e) => Err(e),
    }
}
