//! Object-store client layer of s3vol.
//!
//! Everything above this crate talks to storage through [`ObjectStore`], so the
//! filesystem core and the CSI driver can be tested against [`MemoryStore`] and run on a
//! laptop against [`FileStore`] with no S3 at all.
//!
//! # Layout
//! - `error`: [`StoreError`], the one typed error every backend maps into.
//! - `types`: metadata, listing and upload value types shared by all backends.
//! - `store`: the [`ObjectStore`] trait and its provided helpers.
//! - `memory`: [`MemoryStore`], in-process, for tests.
//! - `file`: [`FileStore`], a local directory (`file://`), the embedded default.
//! - `s3`: [`S3Store`], aws-sdk-s3 against any S3-compatible endpoint.
//! - `oss`: reading Alibaba OSS's `x-oss-meta-*` metadata headers.
//! - `counting`: [`CountingStore`], per-operation request counters and metrics.
//! - `faulty`: [`FaultyStore`], injected read failures for tests of the layers above.
//! - `credentials`: [`CredentialSource`], static keys that can be rotated in place.
//! - `location`: [`Location`], parsing `s3://bucket/prefix` and `file:///dir` URLs.
//! - `sts`, `alibaba_sts`: service-account tokens exchanged for temporary keys
//!   (`AssumeRoleWithWebIdentity`; Alibaba RRSA's `AssumeRoleWithOIDC`).
//! - `tls`: [`tls_connector`], the system's CAs for calls outside the AWS SDK.

mod alibaba_sts;
mod counting;
mod credentials;
mod error;
mod faulty;
mod file;
mod listing;
mod location;
mod memory;
mod oss;
mod s3;
mod store;
mod sts;
mod tls;
mod types;

pub use alibaba_sts::{assume_role_with_oidc, OidcRequest};
pub use counting::{CountingStore, RequestCounts};
pub use credentials::{CredentialSource, StaticCredentials};
pub use error::{ErrorKind, StoreError, StoreResult};
pub use faulty::{FaultyStore, GetFault};
pub use file::FileStore;
pub use location::{normalize_prefix, Location, StoreKind};
pub use memory::MemoryStore;
pub use s3::{signs_payload, AddressingStyle, S3Config, S3Store};
pub use store::{collect_body, BodyStream, GetResponse, ObjectStore};
pub use sts::{assume_role_with_web_identity, TemporaryCredentials, WebIdentityRequest};
pub use tls::tls_connector;
pub use types::{CompletedPart, ListPage, ListRequest, ListedObject, ObjectMeta, PutOptions};
