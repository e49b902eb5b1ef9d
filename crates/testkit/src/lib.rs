//! An S3 server for tests: a real HTTP endpoint on 127.0.0.1 (s3s does the protocol,
//! SigV4 and XML), with an in-memory backend written here that behaves like AWS S3.
//!
//! Tests get the production S3 client talking over real sockets, plus knobs no real
//! store offers: access keys added and revoked at run time, injected failures
//! (500, 503 SlowDown, latency, dropped connections) and per-operation request counters.
//!
//! # Layout
//! - `backend`: [`Backend`], the S3 semantics (objects, `dir/` markers, ranges, paging, multipart).
//! - `control`: [`Control`], keys, faults and counters shared by the server and the test.
//! - `server`: [`TestS3`], the listener and connection loop.
//! - `kube_api`: [`FakeKubeApi`], a Kubernetes API that knows only Pods, for the mount-pod launcher.
//! - `sts`: [`FakeSts`], AssumeRoleWithWebIdentity minting keys the server accepts.
//! - `storm`: [`Storm`], faults drawn at random per request (errors, spikes, cut, stalled or
//!   reset bodies, wrong ETags), for the fault-storm suite.
//! - `skip`: [`skip_or_fail`], tests that cannot run here fail unless told otherwise.

mod backend;
mod control;
mod kube_api;
mod server;
mod skip;
mod storm;
mod sts;

pub use backend::Backend;
pub use control::{Control, Fault};
pub use kube_api::{ApiCall, FakeKubeApi, NoRuntime, PodRuntime};
pub use server::TestS3;
pub use skip::skip_or_fail;
pub use storm::Storm;
pub use sts::{Exchange, FakeSts};

/// Access key every [`TestS3`] accepts from the start.
pub const ACCESS_KEY: &str = "testkey";
/// Secret of [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "testsecret";
