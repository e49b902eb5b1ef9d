//! Snapshots and clones by server-side copy. A snapshot of the volume at
//! `<base><volume>/` is a copy of its objects under `<base>.s3vol-snapshots/<name>/`, with a
//! marker (`.s3vol-snapshot.json`) recording the source, time, size and whether the copy
//! finished; a retried CreateSnapshot finishes an interrupted copy. A volume made from a
//! snapshot or from another volume is created as usual, then filled by copy; its own
//! marker says whether the fill finished, so a retried CreateVolume completes it.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use s3vol_store::{ListRequest, ObjectStore};
use serde::{Deserialize, Serialize};

use crate::error::{CsiError, CsiResult};
use crate::provision::{dir_name_for, parent_prefix, read_json, write_json, Provisioner, MARKER_NAME, MIN_DIR_NAME};
use crate::snapshot_list::{index_snapshot, unindex_snapshot};
use crate::volume::{SecretValues, VolumeId, MAX_VOLUME_ID};

/// Name of a snapshot's marker object, relative to the snapshot prefix.
pub const SNAPSHOT_MARKER: &str = ".s3vol-snapshot.json";
/// Directory, beside the volumes, that holds their snapshots.
pub const SNAPSHOT_DIR: &str = ".s3vol-snapshots/";
/// Objects copied at once.
const COPY_CONCURRENCY: usize = 16;

/// What a snapshot's marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMarker {
    /// Format version.
    pub version: u32,
    /// The CSI snapshot name.
    pub name: String,
    /// Volume id it was taken of.
    pub source_volume_id: String,
    /// Creation time, seconds since the epoch.
    pub created_unix: i64,
    /// Bytes copied.
    pub size: i64,
    /// Whether the copy finished.
    pub ready: bool,
}

/// A snapshot as CreateSnapshot reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Snapshot id (the encoded location of its copy).
    pub id: String,
    /// What the marker says.
    pub marker: SnapshotMarker,
}

/// Where a new volume's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentSource {
    /// A snapshot id.
    Snapshot(String),
    /// A volume id (a clone).
    Volume(String),
}

impl ContentSource {
    /// How the volume's marker records it.
    pub fn describe(&self) -> String {
        match self {
            ContentSource::Snapshot(id) => format!("snapshot:{id}"),
            ContentSource::Volume(id) => format!("volume:{id}"),
        }
    }
}

/// The snapshot directory beside the volume at `prefix` (`a/b/vol/` → `a/b/.s3vol-snapshots/`).
fn snapshot_root(prefix: &str) -> String {
    format!("{}{SNAPSHOT_DIR}", parent_prefix(prefix))
}

fn snapshot_marker_key(prefix: &str) -> String {
    format!("{prefix}{SNAPSHOT_MARKER}")
}

pub(crate) async fn read_snapshot_marker(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
) -> CsiResult<Option<SnapshotMarker>> {
    read_json(store, bucket, &snapshot_marker_key(prefix), "snapshot marker").await
}

async fn write_snapshot_marker(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    m: &SnapshotMarker,
) -> CsiResult<()> {
    write_json(store, bucket, &snapshot_marker_key(prefix), m).await
}

/// Copies every object under `from` to the same name under `to` (both in `bucket`), but
/// the markers; returns the bytes copied. Copying again over a finished copy is harmless,
/// which is what makes an interrupted copy resumable.
pub(crate) async fn copy_prefix(store: &Arc<dyn ObjectStore>, bucket: &str, from: &str, to: &str) -> CsiResult<i64> {
    let mut req = ListRequest::recursive(from.to_string());
    let mut size = 0i64;
    loop {
        let page = store.list(bucket, &req).await?;
        let keys: Vec<(String, u64)> = page
            .objects
            .into_iter()
            .filter(|o| {
                let rel = &o.key[from.len()..];
                rel != MARKER_NAME && rel != SNAPSHOT_MARKER
            })
            .map(|o| (o.key, o.size))
            .collect();
        // Owned futures (no borrows across the await), as the gRPC service needs.
        let copies: Vec<_> = keys
            .iter()
            .map(|(k, _)| {
                let (store, bucket, src) = (store.clone(), bucket.to_string(), k.clone());
                let dst = format!("{to}{}", &k[from.len()..]);
                async move { store.copy_object(&bucket, &src, &dst, None).await }
            })
            .collect();
        futures::stream::iter(copies).buffer_unordered(COPY_CONCURRENCY).try_collect::<Vec<()>>().await?;
        size += keys.iter().map(|(_, s)| *s as i64).sum::<i64>();
        match page.next_continuation {
            Some(t) => req.continuation = Some(t),
            None => return Ok(size),
        }
    }
}

/// Deletes every object under `prefix` in `bucket`, `last` (a marker) at the end, so an
/// interrupted delete is retried by the sidecar.
async fn delete_prefix(store: &dyn ObjectStore, bucket: &str, prefix: &str, last: &str) -> CsiResult<()> {
    let req = ListRequest::recursive(prefix.to_string());
    loop {
        let page = store.list(bucket, &req).await?;
        let keys: Vec<String> = page.objects.into_iter().map(|o| o.key).filter(|k| k != last).collect();
        if keys.is_empty() {
            break;
        }
        Provisioner::delete_keys(store, bucket, &keys).await?;
    }
    store.delete_object(bucket, last).await?;
    Ok(())
}

impl Provisioner {
    /// CreateSnapshot: idempotent for the same name and source; ALREADY_EXISTS for the
    /// same name taken of another volume.
    pub async fn create_snapshot(
        &self,
        name: &str,
        source_volume_id: &str,
        secrets: &HashMap<String, String>,
    ) -> CsiResult<SnapshotInfo> {
        if name.is_empty() {
            return Err(CsiError::invalid("name is required"));
        }
        if source_volume_id.is_empty() {
            return Err(CsiError::invalid("source_volume_id is required"));
        }
        if name.contains('/') || name.contains('|') {
            return Err(CsiError::invalid(format!("snapshot name {name:?} may not contain '/' or '|'")));
        }
        let (store, vol, _) = self.lookup(source_volume_id, secrets).await?;
        if vol.prefix.is_empty() {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {source_volume_id:?} is a whole bucket: snapshots need volumes that are a prefix of a bucket (StorageClass parameter `bucket`)"
            )));
        }
        let root = snapshot_root(&vol.prefix);
        let probe = VolumeId { prefix: root.clone(), ..vol.clone() };
        let budget = MAX_VOLUME_ID.saturating_sub(probe.encoded_len() + 1);
        if budget < MIN_DIR_NAME {
            return Err(CsiError::invalid(format!(
                "the snapshot id of {name:?} would not fit in {MAX_VOLUME_ID} bytes: use a shorter prefix parameter"
            )));
        }
        let prefix = format!("{root}{}/", dir_name_for(name, budget));
        let id = VolumeId { prefix: prefix.clone(), ..vol.clone() }.encode()?;
        let mut marker = match read_snapshot_marker(store.as_ref(), &vol.bucket, &prefix).await? {
            Some(m) if m.name == name && m.source_volume_id == source_volume_id => {
                if m.ready {
                    return Ok(SnapshotInfo { id, marker: m });
                }
                // An interrupted copy: finish it (indexing it again costs one small PUT).
                index_snapshot(store.as_ref(), &vol.bucket, &id).await?;
                m
            }
            Some(m) => {
                return Err(CsiError::AlreadyExists(format!(
                    "snapshot {name:?} already exists, taken of volume {:?}",
                    m.source_volume_id
                )))
            }
            None => {
                let m = SnapshotMarker {
                    version: 1,
                    name: name.to_string(),
                    source_volume_id: source_volume_id.to_string(),
                    created_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
                    size: 0,
                    ready: false,
                };
                write_snapshot_marker(store.as_ref(), &vol.bucket, &prefix, &m).await?;
                index_snapshot(store.as_ref(), &vol.bucket, &id).await?;
                m
            }
        };
        marker.size = copy_prefix(&store, &vol.bucket, &vol.prefix, &prefix).await?;
        marker.ready = true;
        write_snapshot_marker(store.as_ref(), &vol.bucket, &prefix, &marker).await?;
        tracing::info!(snapshot = %name, volume_id = %source_volume_id, bytes = marker.size, "snapshot taken");
        Ok(SnapshotInfo { id, marker })
    }

    /// DeleteSnapshot: succeeds for ids that are not ours or already gone.
    pub async fn delete_snapshot(&self, snapshot_id: &str, secrets: &HashMap<String, String>) -> CsiResult<()> {
        if snapshot_id.is_empty() {
            return Err(CsiError::invalid("snapshot_id is required"));
        }
        let Some((store, id, _)) = self.find_snapshot(snapshot_id, secrets).await? else {
            tracing::info!(
                snapshot_id,
                "DeleteSnapshot of an id s3vol did not issue, or already deleted: nothing to do"
            );
            return Ok(());
        };
        // Out of the index first: a delete interrupted after this is retried by the
        // sidecar (the marker goes last), and no index entry outlives its snapshot.
        unindex_snapshot(store.as_ref(), &id.bucket, snapshot_id).await?;
        delete_prefix(store.as_ref(), &id.bucket, &id.prefix, &snapshot_marker_key(&id.prefix)).await?;
        tracing::info!(snapshot_id, "snapshot deleted");
        Ok(())
    }

    /// The snapshot `snapshot_id` names, with its store and marker; `None` for an id we
    /// did not issue or a snapshot that is gone.
    pub(crate) async fn find_snapshot(
        &self,
        snapshot_id: &str,
        secrets: &HashMap<String, String>,
    ) -> CsiResult<Option<(Arc<dyn ObjectStore>, VolumeId, SnapshotMarker)>> {
        let Some(id) = VolumeId::parse(snapshot_id).filter(|id| id.prefix.contains(SNAPSHOT_DIR)) else {
            return Ok(None);
        };
        let secret = SecretValues::from_map(secrets)?;
        let store = self.store_for_volume(&id, &secret).await?;
        Ok(read_snapshot_marker(store.as_ref(), &id.bucket, &id.prefix).await?.map(|m| (store, id, m)))
    }

    /// Checks a new volume's content source before anything is created: NOT_FOUND for a
    /// source that does not exist, INVALID_ARGUMENT for one on another endpoint or in
    /// another bucket (server-side copy works within a bucket of one store; a bucket of
    /// the same name elsewhere is other data). Returns the bucket and prefix to copy from.
    pub(crate) async fn resolve_source(
        &self,
        source: &ContentSource,
        bucket: &str,
        endpoint: Option<&str>,
        secrets: &HashMap<String, String>,
    ) -> CsiResult<(Arc<dyn ObjectStore>, String)> {
        let (store, id) = match source {
            ContentSource::Volume(v) => {
                let (store, id, _) = self.lookup(v, secrets).await?;
                (store, id)
            }
            ContentSource::Snapshot(s) => match self.find_snapshot(s, secrets).await? {
                Some((store, id, m)) if m.ready => (store, id),
                Some(_) => return Err(CsiError::Unavailable(format!("snapshot {s:?} is still being taken; retry"))),
                None => return Err(CsiError::NotFound(format!("snapshot {s:?} does not exist"))),
            },
        };
        if id.endpoint.as_deref() != endpoint {
            return Err(CsiError::invalid(format!(
                "volume_content_source {}: it is on endpoint {:?}, the new volume on {:?}; a volume made from a snapshot or a volume must be on the same store (StorageClass parameter `endpoint`)",
                source.describe(),
                id.endpoint.as_deref().unwrap_or("AWS"),
                endpoint.unwrap_or("AWS"),
            )));
        }
        if id.bucket != bucket {
            return Err(CsiError::invalid(format!(
                "volume_content_source {}: it is in bucket {:?}, the new volume in {bucket:?}; a volume made from a snapshot or a volume must be in the same bucket (StorageClass parameter `bucket`)",
                source.describe(),
                id.bucket
            )));
        }
        Ok((store, id.prefix))
    }
}
