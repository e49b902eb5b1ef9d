//! The CSI driver: Identity, Controller and Node services over gRPC on a unix socket.
//!
//! This crate decides what a volume is and where its data lives; it never imports fuser.
//! The node half starts FUSE servers through the [`node::launcher::Launcher`] seam.
//!
//! # Layout
//! - `pb`: the CSI protobuf (package `csi.v1`), generated at build time from `proto/csi.proto`.
//! - `error`: [`CsiError`], mapped once onto gRPC status codes.
//! - `volume`: volume ids, StorageClass parameters, static-PV attributes, secrets (with
//!   the attribute names of other drivers accepted as aliases).
//! - `connect`: [`connect::StoreFactory`], turning a connection description into an `ObjectStore`.
//! - `policy`: [`policy::StorePolicy`], the admin's limits on `file://` stores and on the
//!   endpoints inline volumes may name.
//! - `provision`: create / delete / expand / look up volumes against a store, with the ownership marker.
//! - `inflight`: per-volume operation guard (ABORTED for a call already in flight).
//! - `identity`, `controller`, `node`: the three gRPC services (`node` also holds the
//!   FUSE server control protocol, the launcher and the node state registry).
//! - `metrics_layer`: CSI call counters.
//! - `server`: serving them on a unix socket until a shutdown future resolves.

pub mod connect;
pub mod controller;
pub mod error;
pub mod identity;
pub mod inflight;
pub mod metrics_layer;
pub mod node;
pub mod pod_identity;
pub mod policy;

pub mod provision;
pub mod server;
pub mod snapshot;
pub mod snapshot_list;
pub mod volume;

/// Generated CSI types, clients and servers.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("csi.v1");
}

pub use error::CsiError;

/// Default driver name, as registered with kubelet.
pub const DEFAULT_DRIVER_NAME: &str = "s3vol.csi.io";
