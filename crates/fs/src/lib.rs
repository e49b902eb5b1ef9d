//! The s3vol filesystem core: POSIX semantics over an `ObjectStore`, with no FUSE and
//! no gRPC in it, so it is tested directly against the in-memory store.
//!
//! # Layout
//! - `options`: [`MountOptions`], the typed option set of a mount.

mod options;

pub use options::{MountOptions, OptionError};
