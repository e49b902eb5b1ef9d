//! Every call after CreateVolume reaches the store exactly as CreateVolume did, on each
//! store flavour: AWS with virtual-hosted requests, Alibaba OSS and Tencent COS (which
//! refuse path-style requests). The stores are in-memory, one per endpoint, behind a
//! factory that refuses what the real store refuses: a path-style request to a store
//! that takes only virtual-hosted ones (OSS answers SecondLevelDomainForbidden).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use s3vol_csi::connect::StoreFactory;
use s3vol_csi::error::{CsiError, CsiResult};
use s3vol_csi::provision::{CapacityRequest, Provisioner};
use s3vol_csi::volume::{Endpoint, VolumeId};
use s3vol_store::{AddressingStyle, ListRequest, MemoryStore, ObjectStore, PutOptions, StaticCredentials};

/// One in-memory store per endpoint; `virtual_only` endpoints refuse path-style requests.
#[derive(Default)]
struct Flavours {
    stores: Mutex<HashMap<String, Arc<MemoryStore>>>,
    virtual_only: Vec<String>,
}

impl Flavours {
    fn store(&self, url: &str) -> Arc<MemoryStore> {
        self.stores
            .lock()
            .entry(url.to_string())
            .or_insert_with(|| Arc::new(MemoryStore::with_buckets(&["shared"])))
            .clone()
    }
}

#[async_trait]
impl StoreFactory for Flavours {
    async fn connect(&self, ep: &Endpoint, _: Option<StaticCredentials>) -> CsiResult<Arc<dyn ObjectStore>> {
        let url = ep.url.clone().unwrap_or_else(|| "aws".into());
        if ep.addressing == AddressingStyle::Path && self.virtual_only.contains(&url) {
            return Err(CsiError::FailedPrecondition(format!(
                "{url}: SecondLevelDomainForbidden (path-style request to a virtual-hosted-only store)"
            )));
        }
        Ok(self.store(&url))
    }
}

fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn keys(store: &MemoryStore, prefix: &str) -> Vec<String> {
    let page = store.list("shared", &ListRequest::recursive(prefix.to_string())).await.unwrap();
    page.objects.into_iter().map(|o| o.key).collect()
}

/// Creates a volume with `params` and `secret`, fills it, expands it, then deletes it with
/// `delete_secret`: the data must be gone from the store at `url`, and no other store
/// may have been written.
async fn create_expand_delete(
    url: &str,
    virtual_only: bool,
    params: &[(&str, &str)],
    secret: &[(&str, &str)],
    delete_secret: &[(&str, &str)],
) -> VolumeId {
    let flavours = Arc::new(Flavours {
        virtual_only: if virtual_only { vec![url.to_string()] } else { Vec::new() },
        ..Default::default()
    });
    let p = Provisioner::new(flavours.clone(), Endpoint::default());
    let (params, secret, delete_secret) = (map(params), map(secret), map(delete_secret));
    let v = p.create("pvc-1", CapacityRequest::default(), &params, &secret, None).await.unwrap();
    let id = VolumeId::parse(&v.id).unwrap();
    let store = flavours.store(url);
    for i in 0..3 {
        let key = format!("{}f{i}", id.prefix);
        store.put_object("shared", &key, Bytes::from_static(b"data"), &PutOptions::default()).await.unwrap();
    }
    assert_eq!(keys(&store, &id.prefix).await.len(), 4, "three files and the marker at {url}");
    let grown = CapacityRequest { required: 5 << 30, limit: 0 };
    assert_eq!(p.expand(&v.id, grown, &delete_secret).await.unwrap(), 5 << 30);
    p.delete(&v.id, &delete_secret).await.unwrap();
    assert!(keys(&store, &id.prefix).await.is_empty(), "the volume's data at {url} was not deleted ({})", v.id);
    let others: Vec<String> = flavours.stores.lock().keys().filter(|u| *u != url).cloned().collect();
    for other in others {
        assert!(keys(&flavours.store(&other), "").await.is_empty(), "{other} was written");
    }
    id
}

#[tokio::test]
async fn aws_with_virtual_hosted_requests() {
    let url = "https://s3.eu-west-1.amazonaws.com";
    let id = create_expand_delete(
        url,
        true,
        &[("bucket", "shared"), ("endpoint", url), ("region", "eu-west-1"), ("addressingStyle", "virtual")],
        &[("accessKeyID", "a"), ("secretAccessKey", "s")],
        &[("accessKeyID", "a"), ("secretAccessKey", "s")],
    )
    .await;
    assert_eq!(id.addressing, AddressingStyle::Virtual);
}

/// The OSS driver's users keep the endpoint in the StorageClass; the delete secret names
/// another endpoint (a secret shared with other tools): the recorded one still wins.
#[tokio::test]
async fn alibaba_oss_named_in_the_storage_class() {
    let url = "https://oss-cn-hangzhou.aliyuncs.com";
    let id = create_expand_delete(
        url,
        true,
        &[("bucket", "shared"), ("endpoint", "oss-cn-hangzhou.aliyuncs.com")],
        &[("akId", "a"), ("akSecret", "s")],
        &[("akId", "a"), ("akSecret", "s"), ("endpoint", "https://oss-cn-beijing.aliyuncs.com")],
    )
    .await;
    assert_eq!((id.addressing, id.region.as_deref()), (AddressingStyle::Virtual, Some("cn-hangzhou")));
}

/// k8s-csi-s3's users keep the endpoint in the secret: create, expand and delete all take
/// the addressing style the COS endpoint implies.
#[tokio::test]
async fn tencent_cos_named_in_the_secret() {
    let url = "https://cos.ap-guangzhou.myqcloud.com";
    let secret = [("accessKeyID", "a"), ("secretAccessKey", "s"), ("endpoint", url)];
    let id = create_expand_delete(url, true, &[("bucket", "shared")], &secret, &secret).await;
    assert_eq!((id.addressing, id.region.as_deref()), (AddressingStyle::Virtual, Some("ap-guangzhou")));
}
