use std::sync::Arc;

use async_trait::async_trait;
use s3vol_store::{CredentialSource, FileStore, ObjectStore, S3Config, S3Store, StaticCredentials};

use crate::error::{CsiError, CsiResult};
use crate::policy::StorePolicy;
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

/// The production factory: S3 endpoints through aws-sdk-s3, `file:///dir` endpoints as
/// local directories where the admin's [`StorePolicy`] allows them (by default nowhere:
/// a volume naming `file:///var/lib/kubelet` would otherwise serve the node's files).
#[derive(Default)]
pub struct DefaultStoreFactory {
    policy: StorePolicy,
}

impl DefaultStoreFactory {
    /// A factory opening `file://` stores only where `policy` allows.
    pub fn new(policy: StorePolicy) -> Self {
        DefaultStoreFactory { policy }
    }
}

#[async_trait]
impl StoreFactory for DefaultStoreFactory {
    async fn connect(
        &self,
        endpoint: &Endpoint,
        credentials: Option<StaticCredentials>,
    ) -> CsiResult<Arc<dyn ObjectStore>> {
        if let Some(url) = endpoint.url.as_deref().filter(|u| u.starts_with("file://")) {
            let dir = self.policy.file_store_dir(url)?;
            std::fs::create_dir_all(&dir).map_err(|e| {
                CsiError::FailedPrecondition(format!("endpoint {url}: cannot create the directory: {e}"))
            })?;
            return Ok(counted(Arc::new(FileStore::new(dir))));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Controller and node open every store here: a `file://` endpoint from a
    /// StorageClass, PV or secret is refused unless the admin named a root, and no
    /// directory is made for a refused one.
    #[tokio::test]
    async fn file_stores_open_only_below_the_admins_root() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        let at = |p: &std::path::Path| Endpoint { url: Some(format!("file://{}", p.display())), ..Default::default() };
        for factory in [
            DefaultStoreFactory::default(),
            DefaultStoreFactory::new(StorePolicy::new(Some(&d.path().join("root")), &[]).unwrap()),
        ] {
            let e = factory.connect(&at(&outside), None).await.err().expect("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
            assert!(!outside.exists(), "a refused file:// store made its directory");
        }
        let root = DefaultStoreFactory::new(StorePolicy::new(Some(&d.path().join("root")), &[]).unwrap());
        root.connect(&at(&d.path().join("root/a")), None).await.unwrap();
        assert!(d.path().join("root/a").is_dir());
    }
}
