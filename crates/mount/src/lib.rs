//! mount(2) plumbing shared by the FUSE server and the CSI node plugin, with no FUSE
//! protocol in it: opening /dev/fuse and mounting it, bind mounts, unmounts that fall
//! back to lazy, and reading the mount table.
//!
//! # Layout
//! - `fuse`: [`mount_fuse`], [`unmount`].
//! - `bind`: [`bind_mount`], read-only remounts.
//! - `table`: [`is_mount_point`], [`mount_health`].
//! - `subdir`: [`open_subdir`], a bind source inside a mount, never through a symlink.
//! - `connection`: keeping a connection's descriptor and journal across servers.

mod bind;
mod connection;
mod fuse;
mod subdir;
mod table;

pub use bind::bind_mount;
pub use connection::{abort_connection, dup_fd, memfd};
pub use fuse::{mount_fuse, unmount, MountError};
pub use subdir::{open_subdir, SubdirError};
pub use table::{is_mount_point, mount_health, mounted_at, MountHealth, MountedFs};
