//! The s3vol filesystem core: POSIX semantics over an `ObjectStore`, with no FUSE and
//! no gRPC in it, so it is tested directly against the in-memory store. The FUSE
//! adapter (crate `s3vol-fuse`) is a thin mapping of kernel requests onto [`Fs`].
//!
//! # Layout
//! - `options`: [`MountOptions`], the typed option set of a mount.
//! - `foreign_options`: option strings of other mount tools, mapped or ignored.
//! - `attr`: attributes and the s3fs-compatible metadata headers they are kept in.
//! - `inode`: the inode table, attribute cache and negative cache.
//! - `dir`: directory listings streamed page by page.
//! - `dir_check`: directory checks finishing after a lookup answered with a file.
//! - `dir_index`: what listings and this mount's changes showed each directory to hold.
//! - `read`: the prefetching reader.
//! - `read_cache`, `cached_fetch`: the node-local read cache of object data, and reads through it.
//! - `write`: streaming multipart uploads and the staging cache.
//! - `open_files`: the handles open on each inode, for unlink, rename and setattr.
//! - `journal`: the node ids and handles a successor server needs, recorded as they are given out.
//! - `fs`: [`Fs`], the operations.
//! - `error`: [`Errno`] and the store-error mapping.
//! - `mime`: Content-Type by extension.

mod attr;
mod budget;
mod cached_fetch;
mod chunk_buf;
mod dir;
mod dir_check;
mod dir_index;
mod error;
mod foreign_options;
mod fs;
mod inode;
mod journal;
mod mime;
mod open_files;
mod options;
mod prefetch;
mod read;
mod read_cache;
mod staging;
mod write;

pub use attr::{Attr, FileKind, SpecialKind, StoredMeta};
pub use budget::{MemoryBudget, Reservation};
pub use dir::{DirEntry, VOLUME_MARKER};
pub use error::{Errno, FsResult};
pub use foreign_options::{translate_foreign, Translated};
pub use fs::{Caller, Drained, Fs, FsConfig, Restored, SetAttr, StatFs};
pub use inode::ROOT_INO;
pub use journal::{decode_all, encode, HandleKind, JournalRecord, MemoryJournal, StateJournal, COMPACT_MIN_BYTES};
pub use options::{MountOptions, OptionError};
pub use read_cache::{ObjectVersion, ReadCache, ReadCacheConfig, ReadCacheError, ReadCacheStats};
pub use write::StreamState;
