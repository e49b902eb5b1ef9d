use std::sync::Arc;

use async_trait::async_trait;
use s3vol_store::{CredentialSource, FileStore, ObjectStore, S3Config, S3Store, StaticCredentials};

use crate::error::{CsiError, CsiResult};
use crate::volume::Endpoint;

/// Turns "where and with which keys" into a store. The seam lets tests hand the driver
/// in-memory stores and lets the node keep one client per mounted volume.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// A store for `endpoint`; `credentials: None` = the default AWS credential chain.
    async fn connect(
        &self,
        endpoint: &Endpoint,
        credentials: Option<StaticCredentials>,
    ) -> CsiResult<Arc<dyn ObjectStore>>;
}

/// The production factory: S3 endpoints through aws-sdk-s3, `file:///dir` endpoints
/// as local directories.
#[derive(Default)]
pub struct DefaultStoreFactory;

#[async_trait]
impl StoreFactory for DefaultStoreFactory {
    async fn connect(
        &self,
        endpoint: &Endpoint,
        credentials: Option<StaticCredentials>,
    ) -> CsiResult<Arc<dyn ObjectStore>> {
        if let Some(path) = endpoint.url.as_deref().and_then(|u| u.strip_prefix("file://")) {
            std::fs::create_dir_all(path).map_err(|e| {
                CsiError::FailedPrecondition(format!("endpoint file://{path}: cannot create the directory: {e}"))
            })?;
            return Ok(counted(Arc::new(FileStore::new(path))));
        }
        let source = match credentials {
            Some(c) => CredentialSource::fixed(c),
            None => CredentialSource::DefaultChain,
        };
        let mut cfg = S3Config::new(endpoint.url.clone(), endpoint.region(), source);
        cfg.addressing = endpoint.addressing;
        Ok(counted(Arc::new(S3Store::new(cfg).await?)))
    }
}

/// The driver's own store calls (provisioning, deletion, reachability checks) are counted
/// in the `s3vol_store_*` metrics under `volume="csi-driver"`.
fn counted(store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    Arc::new(s3vol_store::CountingStore::new(store, DRIVER_METRICS_LABEL.to_string()))
}

/// The `volume` label of the driver's own store calls.
pub const DRIVER_METRICS_LABEL: &str = "csi-driver";
