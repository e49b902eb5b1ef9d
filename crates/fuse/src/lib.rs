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

mod adapter;
mod serve;

pub use adapter::FuseAdapter;
pub use s3vol_mount::{mount_fuse, unmount, MountError};
pub use serve::serve_fd;
