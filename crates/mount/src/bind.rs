use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::MsFlags;

/// From the kernel's uapi `linux/mount.h` (not all in the libc crate).
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Bind-mounts `source` on `target`, read-only when asked.
///
/// A read-only bind is created read-only before it is attached (open_tree, mount_setattr,
/// move_mount; Linux 5.12+): the copies that mount propagation makes (the node plugin's
/// bind in its container reaching the host's kubelet dir) are then read-only too. The
/// classic way, a bind followed by a read-only remount, changes only the mount in the
/// caller's namespace: propagation does not carry the remount, and the host's copy stays
/// writable. It is the fallback on older kernels.
pub fn bind_mount(source: &Path, target: &Path, read_only: bool) -> nix::Result<()> {
    if read_only {
        match bind_read_only_attached(source, target) {
            Err(nix::Error::ENOSYS) => {}
            other => return other,
        }
    }
    nix::mount::mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    if read_only {
        let flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if let Err(e) = nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            return Err(e);
        }
    }
    Ok(())
}

fn cstr(p: &Path) -> nix::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL)
}

/// A detached clone of `source`, made read-only, then attached at `target`.
fn bind_read_only_attached(source: &Path, target: &Path) -> nix::Result<()> {
    let (src, dst) = (cstr(source)?, cstr(target)?);
    let empty = c"";
    // SAFETY: open_tree reads a NUL-terminated path we own and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&tree);
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr` (size given) and an empty path relative to `raw`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            raw,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: move_mount reads two NUL-terminated paths we own; `raw` is the detached tree.
    let rc = unsafe {
        libc::syscall(libc::SYS_move_mount, raw, empty.as_ptr(), libc::AT_FDCWD, dst.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}
