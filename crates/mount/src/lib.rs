//! mount(2) plumbing shared by the FUSE server and the CSI node plugin, with no FUSE
//! protocol in it: opening /dev/fuse and mounting it, bind mounts, unmounts that fall
//! back to lazy, and reading the mount table.
//!
//! # Layout
//! - `fuse`: [`mount_fuse`], [`unmount`].
//! - `bind`: [`bind_mount`], read-only remounts.
//! - `table`: [`is_mount_point`], [`mount_health`].

mod bind;
mod fuse;
mod table;

pub use bind::bind_mount;
pub use fuse::{mount_fuse, unmount, MountError};
pub use table::{is_mount_point, mount_health, MountHealth};
