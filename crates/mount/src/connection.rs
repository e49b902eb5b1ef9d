//! Keeping a FUSE connection alive across the processes that serve it: the node plugin
//! holds a duplicate of every volume's /dev/fuse descriptor (while any descriptor of it is
//! open, the kernel keeps the connection and its queued requests) and a memfd holding the
//! server's state journal. When even that is not enough (a kernel that cannot resend
//! requests), the connection is aborted so that nothing waits on it forever.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A duplicate of `fd` (close-on-exec), to hand the connection on while keeping it.
pub fn dup_fd(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one that we then own.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A new memfd (in memory, close-on-exec) named after `what`, for a state journal.
pub fn memfd(what: &str) -> std::io::Result<OwnedFd> {
    let name: String = format!("s3vol-{what}").chars().filter(|c| *c != '\0').take(200).collect();
    nix::sys::memfd::memfd_create(name.as_str(), nix::sys::memfd::MFdFlags::MFD_CLOEXEC).map_err(std::io::Error::from)
}

/// Aborts the FUSE connection mounted at `mountpoint` (`/sys/fs/fuse/connections/N/abort`):
/// every request waiting on it fails and the mount answers ENOTCONN until it is replaced.
pub fn abort_connection(mountpoint: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    std::fs::write(format!("/sys/fs/fuse/connections/{}/abort", libc::minor(dev)), b"1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn a_duplicate_shares_the_file() {
        let fd = memfd("test").unwrap();
        let dup = dup_fd(&fd).unwrap();
        assert_ne!(fd.as_raw_fd(), dup.as_raw_fd());
        std::fs::File::from(fd).write_all(b"journal").unwrap();
        let mut f = std::fs::File::from(dup);
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "journal");
    }
}
