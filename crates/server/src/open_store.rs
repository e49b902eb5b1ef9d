//! The one place a mount's store client is built, for `s3vol mount` and for the FUSE
//! servers the node plugin starts: the same endpoint handling and the same options
//! (listing version, retries, timeouts) whichever way a volume is mounted.

use std::sync::Arc;

use s3vol_fs::MountOptions;
use s3vol_store::{CredentialSource, FileStore, ObjectStore, S3Config, S3Store, StoreError};

/// Where the store is and how to sign for it.
pub struct StoreTarget<'a> {
    /// `file:///dir` for a local directory, an S3 URL, or `None` for AWS in `region`.
    pub endpoint: Option<&'a str>,
    /// Signing region.
    pub region: &'a str,
    /// `path` or `virtual`.
    pub addressing: &'a str,
    /// Where keys come from.
    pub credentials: CredentialSource,
}

/// Why a store client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    /// The directory of a `file://` store cannot be created.
    #[error("cannot create {dir}: {source}")]
    Directory {
        /// The directory.
        dir: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The addressing style is neither `path` nor `virtual`.
    #[error("--addressing-style: {0}")]
    Addressing(String),
    /// The S3 client could not be set up (credentials, TLS, endpoint).
    #[error(transparent)]
    S3(#[from] StoreError),
}

/// A store client for a mount with `options`.
pub async fn open_store(
    target: StoreTarget<'_>,
    options: &MountOptions,
) -> Result<Arc<dyn ObjectStore>, OpenStoreError> {
    if let Some(dir) = target.endpoint.and_then(|e| e.strip_prefix("file://")) {
        std::fs::create_dir_all(dir).map_err(|source| OpenStoreError::Directory { dir: dir.to_string(), source })?;
        return Ok(Arc::new(FileStore::new(dir)));
    }
    let mut cfg = S3Config::new(target.endpoint.map(str::to_string), target.region.to_string(), target.credentials);
    cfg.addressing = target.addressing.parse().map_err(OpenStoreError::Addressing)?;
    options.tune_store(&mut cfg);
    Ok(Arc::new(S3Store::new(cfg).await?))
}
