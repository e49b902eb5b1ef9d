//! Why a FUSE server could not start or serve a volume.

use std::path::PathBuf;

/// A failure of the server itself (a volume it cannot serve is answered over the control
/// socket with this error's text).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The control socket could not be created.
    #[error("binding the control socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The volume's mount options do not parse.
    #[error("mount options: {0}")]
    Options(String),
    /// The store client could not be built.
    #[error(transparent)]
    Store(#[from] crate::OpenStoreError),
    /// A local resource (runtime, journal, descriptor, thread) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The live connection could not be taken over.
    #[error("resuming the session: {0}")]
    Resume(#[from] s3vol_fuse::ResumeError),
    /// The read cache's directory cannot be used.
    #[error(transparent)]
    ReadCache(#[from] s3vol_fs::ReadCacheError),
    /// The hard quota needs the volume's usage, and measuring it failed.
    #[error("measuring usage for the hard quota: errno {0}")]
    Quota(i32),
}

impl ServerError {
    /// Wraps an I/O failure with what was being done.
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| ServerError::Io { what, source }
    }
}
