//! The per-volume FUSE server (`s3vol fuse-server`), as a library: the node plugin (or a
//! mount pod) starts it with a control socket; over that socket it receives the mounted
//! /dev/fuse descriptor, the state journal and the volume's configuration (credentials
//! included), serves until the mount goes away, and takes credential rotations, drains
//! and take-over requests while it runs. It depends on the filesystem, the FUSE adapter
//! and the store, never on the CSI crate: the data plane runs without the control plane.
//!
//! # Layout
//! - `control`: [`run`], the control-socket loop and what each request does.
//! - `serve`: starting (or resuming) the session of one volume.
//! - `open_store`: [`open_store`], the store client of a mount, shared with `s3vol mount`.
//! - `error`: [`ServerError`].

mod control;
mod error;
mod open_store;
mod serve;

pub use control::{run, MetricsRender};
pub use error::ServerError;
pub use open_store::{open_store, OpenStoreError, StoreTarget};
