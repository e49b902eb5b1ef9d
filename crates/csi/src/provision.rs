//! Creating, deleting, expanding and finding dynamic volumes against an object store.
//!
//! Ownership is recorded in a small marker object inside the volume
//! (`<prefix>.s3vol-volume.json`). DeleteVolume removes only what carries a marker, so
//! data of static or pre-existing volumes is never touched, and the marker carries the
//! parameters fingerprint that makes CreateVolume idempotent without a database.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use s3vol_store::{collect_body, ErrorKind, ListRequest, ObjectStore, PutOptions, StaticCredentials};
use serde::{Deserialize, Serialize};

use crate::connect::StoreFactory;
use crate::error::{CsiError, CsiResult};
use crate::snapshot::ContentSource;
use crate::volume::{
    bucket_name_for, provider_defaults, Endpoint, OnDelete, ProvisionParams, SecretValues, VolumeId, VolumeSpec,
    DEFAULT_CAPACITY, MAX_VOLUME_ID,
};

/// Name of the ownership marker object, relative to the volume prefix.
pub const MARKER_NAME: &str = s3vol_fs::VOLUME_MARKER;

/// What the marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// Format version.
    pub version: u32,
    /// The CSI volume name (PV name) it was created for.
    pub name: String,
    /// Fingerprint of the StorageClass parameters.
    pub fingerprint: String,
    /// Recorded capacity in bytes.
    pub capacity: i64,
    /// What DeleteVolume does.
    pub on_delete: OnDelete,
    /// Whether the volume is a whole bucket created for it.
    pub owns_bucket: bool,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Where the content came from (`snapshot:ID`, `volume:ID`), if not empty at birth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Whether the copy from `source` finished (a retried CreateVolume completes it).
    #[serde(default = "populated_by_default")]
    pub populated: bool,
}

fn populated_by_default() -> bool {
    true
}

/// A provisioned volume as CreateVolume reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedVolume {
    /// Volume id.
    pub id: String,
    /// Capacity in bytes.
    pub capacity: i64,
    /// Volume context for the node.
    pub context: HashMap<String, String>,
}

/// Requested capacity: `required` and `limit` as in CSI's CapacityRange (0 = unset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityRequest {
    /// At least this many bytes.
    pub required: i64,
    /// At most this many bytes.
    pub limit: i64,
}

impl CapacityRequest {
    /// The capacity to record, or OUT_OF_RANGE/INVALID_ARGUMENT for an impossible range.
    pub fn resolve(self) -> CsiResult<i64> {
        if self.required < 0 || self.limit < 0 {
            return Err(CsiError::invalid("capacity_range: negative bytes"));
        }
        if self.limit > 0 && self.required > self.limit {
            return Err(CsiError::invalid(format!(
                "capacity_range: required_bytes {} exceeds limit_bytes {}",
                self.required, self.limit
            )));
        }
        Ok(match (self.required, self.limit) {
            (0, 0) => DEFAULT_CAPACITY,
            (0, l) => l.min(DEFAULT_CAPACITY),
            (r, _) => r,
        })
    }

    /// Whether an existing capacity satisfies this request.
    pub fn accepts(self, capacity: i64) -> bool {
        capacity >= self.required && (self.limit == 0 || capacity <= self.limit)
    }
}

/// Does the controller's work against stores made by a [`StoreFactory`].
pub struct Provisioner {
    factory: Arc<dyn StoreFactory>,
    defaults: Endpoint,
}

/// Shortest per-volume directory name: a few characters of the name and a 12-digit hash.
pub(crate) const MIN_DIR_NAME: usize = 16;

/// The per-volume directory name: the volume name, or a cut of it with a hash when the
/// whole name would not fit in a volume id.
pub(crate) fn dir_name_for(name: &str, budget: usize) -> String {
    if name.len() <= budget {
        return name.to_string();
    }
    use sha2::{Digest, Sha256};
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..6]);
    let keep = budget.saturating_sub(hash.len() + 1).min(name.len());
    let mut cut = keep;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash}", &name[..cut])
}

/// A JSON marker object (`what` names it in errors), or `None` when there is none.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    what: &str,
) -> CsiResult<Option<T>> {
    match store.get_object(bucket, key, None).await {
        Ok(resp) => {
            let body = collect_body(resp.body).await?;
            serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| CsiError::Internal(format!("{what} {bucket}/{key} is unreadable: {e}")))
        }
        Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::NoSuchBucket) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes a JSON marker object.
pub(crate) async fn write_json<T: Serialize>(store: &dyn ObjectStore, bucket: &str, key: &str, m: &T) -> CsiResult<()> {
    let body = serde_json::to_vec_pretty(m).map_err(|e| CsiError::Internal(e.to_string()))?;
    let opts = PutOptions { content_type: Some("application/json".into()), ..Default::default() };
    store.put_object(bucket, key, Bytes::from(body), &opts).await?;
    Ok(())
}

/// The prefix that holds the volume at `prefix` (`a/b/vol/` → `a/b/`, `vol/` → ``): where
/// archives and snapshots go, beside the volumes.
pub(crate) fn parent_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/').rfind('/').map_or("", |i| &prefix[..=i])
}

fn marker_key(prefix: &str) -> String {
    format!("{prefix}{MARKER_NAME}")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl Provisioner {
    /// A provisioner; `defaults` fill in endpoint/region missing from parameters and secrets.
    pub fn new(factory: Arc<dyn StoreFactory>, defaults: Endpoint) -> Self {
        Provisioner { factory, defaults }
    }

    /// The store a new volume (or a listing by secret) talks to: StorageClass parameter,
    /// then secret, then the driver's defaults. The addressing style is the parameter's
    /// when `addressing_given`, else the one the endpoint so found implies (OSS and COS
    /// refuse path-style requests, wherever their endpoint was named).
    pub(crate) async fn store_for_new(
        &self,
        param: &Endpoint,
        addressing_given: bool,
        secret: &SecretValues,
    ) -> CsiResult<(Arc<dyn ObjectStore>, Endpoint)> {
        let url = param.url.clone().or_else(|| secret.endpoint.clone()).or_else(|| self.defaults.url.clone());
        let (implied_region, implied_addressing) = url.as_deref().map(provider_defaults).unwrap_or_default();
        let ep = Endpoint {
            region: param
                .region
                .clone()
                .or_else(|| secret.region.clone())
                .or(implied_region)
                .or_else(|| self.defaults.region.clone()),
            addressing: if addressing_given { param.addressing } else { implied_addressing.unwrap_or_default() },
            url,
        };
        let creds: Option<StaticCredentials> = secret.credentials.clone();
        Ok((self.factory.connect(&ep, creds).await?, ep))
    }

    /// The store of a volume (or snapshot) s3vol created: exactly where its id says, as
    /// CreateVolume reached it. A secret's endpoint or region never redirects the call
    /// (it would delete, expand or copy at another store, or with the wrong addressing).
    pub(crate) async fn store_for_volume(
        &self,
        id: &VolumeId,
        secret: &SecretValues,
    ) -> CsiResult<Arc<dyn ObjectStore>> {
        let mut ep = id.location();
        // An id without an endpoint was made where the driver's default was the store.
        if ep.url.is_none() {
            ep.url = self.defaults.url.clone();
        }
        if ep.region.is_none() {
            ep.region = self.defaults.region.clone();
        }
        if secret.endpoint.is_some() && secret.endpoint != ep.url {
            tracing::info!(
                secret_endpoint = secret.endpoint.as_deref().unwrap_or(""),
                recorded = ep.url.as_deref().unwrap_or("AWS"),
                "the secret names another endpoint than the volume id records; using the recorded one"
            );
        }
        self.factory.connect(&ep, secret.credentials.clone()).await
    }

    /// The ownership marker of the volume at `bucket`/`prefix`, if it is one we created
    /// (it records the current capacity, expansions included).
    pub async fn read_marker(store: &dyn ObjectStore, bucket: &str, prefix: &str) -> CsiResult<Option<Marker>> {
        read_json(store, bucket, &marker_key(prefix), "ownership marker").await
    }

    async fn write_marker(store: &dyn ObjectStore, bucket: &str, prefix: &str, m: &Marker) -> CsiResult<()> {
        write_json(store, bucket, &marker_key(prefix), m).await
    }

    async fn is_empty(store: &dyn ObjectStore, bucket: &str, prefix: &str) -> CsiResult<bool> {
        let req = ListRequest { prefix: prefix.to_string(), max_keys: Some(1), ..Default::default() };
        let page = store.list(bucket, &req).await?;
        Ok(page.is_empty())
    }

    /// CreateVolume: idempotent for the same name and parameters, ALREADY_EXISTS for the
    /// same name with other parameters or for data we did not create.
    pub async fn create(
        &self,
        name: &str,
        capacity: CapacityRequest,
        params: &HashMap<String, String>,
        secrets: &HashMap<String, String>,
        source: Option<&ContentSource>,
    ) -> CsiResult<ProvisionedVolume> {
        let p = ProvisionParams::parse(params)?;
        let secret = SecretValues::from_map(secrets)?;
        let cap = capacity.resolve()?;
        let (store, ep) = self.store_for_new(&p.endpoint, params.contains_key("addressingStyle"), &secret).await?;
        if name.contains('/') || name.contains('|') {
            return Err(CsiError::invalid(format!("volume name {name:?} may not contain '/' or '|'")));
        }
        let (bucket, prefix, owns_bucket) = match &p.bucket {
            Some(b) => {
                // The id carries bucket, prefix, region and endpoint, and must never lose
                // one (DeleteVolume needs them all): the per-volume directory name is what
                // gives way, down to a cut of the name with a hash.
                let probe = VolumeId {
                    bucket: b.clone(),
                    prefix: format!("{}/", p.base_prefix),
                    region: ep.region.clone(),
                    endpoint: ep.url.clone(),
                    addressing: ep.addressing,
                };
                let budget = MAX_VOLUME_ID.saturating_sub(probe.encoded_len());
                if budget < MIN_DIR_NAME {
                    return Err(CsiError::invalid(format!(
                        "bucket {b:?}, prefix {:?}, region {:?} and endpoint {:?} leave {budget} of the {MAX_VOLUME_ID} bytes of a volume id for the volume's directory (at least {MIN_DIR_NAME} needed): use a shorter prefix parameter",
                        p.base_prefix,
                        ep.region.as_deref().unwrap_or(""),
                        ep.url.as_deref().unwrap_or(""),
                    )));
                }
                (b.clone(), format!("{}{}/", p.base_prefix, dir_name_for(name, budget)), false)
            }
            None => (bucket_name_for(name)?, String::new(), true),
        };
        let id = VolumeId {
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            region: ep.region.clone(),
            endpoint: ep.url.clone(),
            addressing: ep.addressing,
        }
        .encode()?;
        let fingerprint = p.fingerprint();
        let spec = VolumeSpec {
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            endpoint: ep.clone(),
            mount_options: p.mount_options.clone(),
            read_only: false,
            capacity: Some(cap),
            hard_quota: p.hard_quota,
            server_resources: p.server_resources.clone(),
            pod_identity: p.pod_identity.clone(),
        };

        // The source must exist (and be in this bucket) before anything is made.
        let copy_from = match source {
            Some(src) => Some(self.resolve_source(src, &bucket, ep.url.as_deref(), secrets).await?.1),
            None => None,
        };
        let source_text = source.map(ContentSource::describe);
        match Self::read_marker(store.as_ref(), &bucket, &prefix).await? {
            Some(m) if m.name == name && m.fingerprint == fingerprint && m.source != source_text => {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {name:?} already exists with another content source ({})",
                    m.source.as_deref().unwrap_or("none")
                )))
            }
            Some(m) if m.name == name && m.fingerprint == fingerprint && !m.populated => {
                // A copy interrupted by a restart: finish it.
                let from = copy_from.as_deref().unwrap_or_default();
                crate::snapshot::copy_prefix(&store, &bucket, from, &prefix).await?;
                Self::write_marker(store.as_ref(), &bucket, &prefix, &Marker { populated: true, ..m.clone() }).await?;
                let spec = VolumeSpec { capacity: Some(m.capacity), ..spec };
                return Ok(ProvisionedVolume { id, capacity: m.capacity, context: spec.to_context() });
            }
            Some(m) if m.name == name && m.fingerprint == fingerprint => {
                if !capacity.accepts(m.capacity) {
                    return Err(CsiError::AlreadyExists(format!(
                        "volume {name:?} exists with capacity {} bytes, incompatible with the requested range",
                        m.capacity
                    )));
                }
                let spec = VolumeSpec { capacity: Some(m.capacity), ..spec };
                return Ok(ProvisionedVolume { id, capacity: m.capacity, context: spec.to_context() });
            }
            Some(m) if m.name == name => {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {name:?} already exists with different parameters"
                )))
            }
            Some(m) => {
                return Err(CsiError::AlreadyExists(format!(
                    "{bucket}/{prefix} already holds volume {:?}, not {name:?}",
                    m.name
                )))
            }
            None => {}
        }

        if owns_bucket {
            match store.create_bucket(&bucket).await {
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::Conflict => {}
                Err(e) => return Err(CsiError::from(e.context(format!("creating bucket {bucket} for volume {name}")))),
            }
        } else {
            match store.head_bucket(&bucket).await {
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::NoSuchBucket => {
                    return Err(CsiError::FailedPrecondition(format!(
                        "parameter bucket={bucket:?}: the bucket does not exist on {}; create it or leave `bucket` unset for a bucket per volume",
                        store.describe()
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !Self::is_empty(store.as_ref(), &bucket, &prefix).await? {
            return Err(CsiError::AlreadyExists(format!(
                "{bucket}/{prefix} already holds data that s3vol did not create; refusing to adopt it (use a static PV for existing data)"
            )));
        }
        let marker = Marker {
            version: 1,
            name: name.to_string(),
            fingerprint,
            capacity: cap,
            on_delete: p.on_delete,
            owns_bucket,
            created: now_rfc3339(),
            source: source_text,
            populated: copy_from.is_none(),
        };
        Self::write_marker(store.as_ref(), &bucket, &prefix, &marker).await?;
        if let Some(from) = &copy_from {
            // Marked unpopulated first: a restart mid-copy is finished by the retry.
            let bytes = crate::snapshot::copy_prefix(&store, &bucket, from, &prefix).await?;
            Self::write_marker(store.as_ref(), &bucket, &prefix, &Marker { populated: true, ..marker.clone() }).await?;
            tracing::info!(volume = %name, from = %from, bytes, "volume filled from its content source");
        }
        tracing::info!(volume = %name, %bucket, %prefix, capacity = cap, "volume created");
        Ok(ProvisionedVolume { id, capacity: cap, context: spec.to_context() })
    }

    /// DeleteVolume: succeeds for ids that are not ours or already gone; otherwise applies
    /// the volume's `onDelete` policy.
    pub async fn delete(&self, volume_id: &str, secrets: &HashMap<String, String>) -> CsiResult<()> {
        let Some(id) = VolumeId::parse(volume_id) else {
            tracing::info!(volume_id, "DeleteVolume of an id s3vol did not issue: nothing to do");
            return Ok(());
        };
        let secret = SecretValues::from_map(secrets)?;
        let store = self.store_for_volume(&id, &secret).await?;
        let Some(marker) = Self::read_marker(store.as_ref(), &id.bucket, &id.prefix).await? else {
            tracing::info!(
                volume_id,
                "no ownership marker: volume already deleted or not created by s3vol; leaving data alone"
            );
            return Ok(());
        };
        if marker.on_delete == OnDelete::Retain {
            tracing::info!(volume_id, "onDelete=retain: data kept");
            return Ok(());
        }
        let archive_root = format!("{}_archived/", parent_prefix(&id.prefix));
        let archive_to = format!("{archive_root}{}/{}/", marker.name, time::OffsetDateTime::now_utc().unix_timestamp());
        let marker_k = marker_key(&id.prefix);
        // Deleting while paging would skip keys, so each batch lists from the start again;
        // the continuation token is followed only past keys that are kept (earlier archives).
        let mut req = ListRequest::recursive(id.prefix.clone());
        loop {
            let page = store.list(&id.bucket, &req).await?;
            let keys: Vec<String> = page
                .objects
                .into_iter()
                .map(|o| o.key)
                .filter(|k| *k != marker_k && !k.starts_with(&archive_root))
                .collect();
            if keys.is_empty() {
                match page.next_continuation {
                    Some(t) => {
                        req.continuation = Some(t);
                        continue;
                    }
                    None => break,
                }
            }
            if marker.on_delete == OnDelete::Archive {
                for k in &keys {
                    store.copy_object(&id.bucket, k, &format!("{archive_to}{}", &k[id.prefix.len()..]), None).await?;
                }
            }
            Self::delete_keys(store.as_ref(), &id.bucket, &keys).await?;
            req.continuation = None;
        }
        // The marker goes last, so an interrupted delete is retried by the sidecar.
        store.delete_object(&id.bucket, &marker_key(&id.prefix)).await?;
        if marker.owns_bucket && marker.on_delete == OnDelete::Delete {
            match store.delete_bucket(&id.bucket).await {
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::NoSuchBucket => {}
                Err(e) => return Err(CsiError::from(e.context(format!("deleting bucket {}", id.bucket)))),
            }
        }
        tracing::info!(volume_id, policy = ?marker.on_delete, "volume deleted");
        Ok(())
    }

    /// Deletes `keys` with multi-object deletes, failing on the first key the store kept.
    pub(crate) async fn delete_keys(store: &dyn ObjectStore, bucket: &str, keys: &[String]) -> CsiResult<()> {
        let failed = store.delete_objects(bucket, keys).await?;
        if let Some((k, e)) = failed.first() {
            return Err(CsiError::Internal(format!("{} objects could not be deleted, first {k}: {e}", failed.len())));
        }
        Ok(())
    }

    /// ControllerExpandVolume: records the new capacity (never shrinks).
    pub async fn expand(
        &self,
        volume_id: &str,
        capacity: CapacityRequest,
        secrets: &HashMap<String, String>,
    ) -> CsiResult<i64> {
        let (store, id, marker) = self.lookup(volume_id, secrets).await?;
        let wanted = capacity.resolve()?;
        if wanted <= marker.capacity {
            return Ok(marker.capacity);
        }
        let m = Marker { capacity: wanted, ..marker };
        Self::write_marker(store.as_ref(), &id.bucket, &id.prefix, &m).await?;
        tracing::info!(volume_id, capacity = wanted, "volume expanded");
        Ok(wanted)
    }

    /// Finds a volume we created, or NOT_FOUND.
    pub async fn lookup(
        &self,
        volume_id: &str,
        secrets: &HashMap<String, String>,
    ) -> CsiResult<(Arc<dyn ObjectStore>, VolumeId, Marker)> {
        let id = VolumeId::parse(volume_id).ok_or_else(|| {
            CsiError::NotFound(format!("volume {volume_id:?} does not exist (not an s3vol volume id)"))
        })?;
        let secret = SecretValues::from_map(secrets)?;
        let store = self.store_for_volume(&id, &secret).await?;
        let marker = Self::read_marker(store.as_ref(), &id.bucket, &id.prefix)
            .await?
            .ok_or_else(|| CsiError::NotFound(format!("volume {volume_id:?} does not exist (no ownership marker)")))?;
        Ok((store, id, marker))
    }
}
