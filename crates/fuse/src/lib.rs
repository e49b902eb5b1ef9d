//! The FUSE adapter: maps kernel requests onto `s3vol_fs::Fs`. The only crate that
//! imports fuser. Mounting is done here with mount(2) on an fd of /dev/fuse (no
//! fusermount, no libfuse), and a server can also be handed an fd another process
//! mounted (the CSI node plugin does that).
//!
//! # Layout
//! - mounting itself lives in `s3vol-mount` (re-exported here for the binary).
//! - `adapter`: [`FuseAdapter`], one fuser callback per operation, each run as a task on
//!   a tokio runtime so slow store calls never block the kernel channel.
//! - `serve`: running a session on an fd until the mount goes away.
//! - `resume`: serving a connection a predecessor initialised (crash recovery, upgrades).
//! - `drain`: [`DrainControl`], stopping a server without failing a request.
//! - `journal_file`: the state journal in a memfd the node plugin keeps.

mod adapter;
mod drain;
mod journal_file;
mod resume;
mod serve;

pub use adapter::FuseAdapter;
pub use drain::DrainControl;
pub use journal_file::FileJournal;
pub use resume::{notify_resend, serve_fd_resumed, Resend, ResumeError};
pub use s3vol_mount::{abort_connection, dup_fd, memfd};
pub use s3vol_mount::{mount_fuse, unmount, MountError};
pub use serve::serve_fd;
