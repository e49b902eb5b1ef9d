use s3vol_store::{ErrorKind, StoreError};

/// A POSIX error number, what every filesystem operation fails with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("errno {0}")]
pub struct Errno(pub i32);

impl Errno {
    /// No such file or directory.
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    /// I/O error (the store failed).
    pub const EIO: Errno = Errno(libc::EIO);
    /// Permission denied (the store refused our credentials).
    pub const EACCES: Errno = Errno(libc::EACCES);
    /// Exists already.
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    /// Not a directory.
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    /// Is a directory.
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    /// Directory not empty.
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// Read-only filesystem.
    pub const EROFS: Errno = Errno(libc::EROFS);
    /// Operation not supported.
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    /// No space (quota or staging cache full).
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    /// File too large for the staging cache.
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    /// Bad file handle.
    pub const EBADF: Errno = Errno(libc::EBADF);
    /// Name too long.
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    /// Stale file handle: a node id this server does not know.
    pub const ESTALE: Errno = Errno(libc::ESTALE);
    /// Try again (store throttling or unreachable).
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
}

/// Maps a store failure onto the errno an application can act on; logs the cause,
/// because the errno alone loses it.
pub fn store_errno(op: &str, e: &StoreError) -> Errno {
    let errno = match e.kind {
        ErrorKind::NotFound => Errno::ENOENT,
        ErrorKind::AccessDenied => Errno::EACCES,
        ErrorKind::Conflict => Errno::EEXIST,
        ErrorKind::InvalidArgument => Errno::EINVAL,
        ErrorKind::NotImplemented => Errno::EOPNOTSUPP,
        _ => Errno::EIO,
    };
    if errno != Errno::ENOENT {
        tracing::warn!(op, error = %e, errno = errno.0, "store request failed");
    }
    errno
}

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, Errno>;
