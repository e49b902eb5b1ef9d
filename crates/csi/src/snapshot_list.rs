//! ListSnapshots. Snapshots live in the stores, next to their volumes, so the plugin
//! keeps no database of them; instead every bucket that holds snapshots has an index
//! (`.s3vol-snapshot-index/`, one small object per snapshot naming its id) written by
//! CreateSnapshot and removed first by DeleteSnapshot. A list filtered by snapshot id reads that
//! snapshot's marker; by source volume, the index of the volume's bucket; unfiltered, the
//! index of every bucket the list secret's keys can see (ListBuckets). Every entry is
//! checked against its snapshot's marker, so an entry whose snapshot is gone (a copy
//! removed by hand) is never reported.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use s3vol_store::{ErrorKind, ListRequest, ObjectStore};
use serde::{Deserialize, Serialize};

use crate::error::{CsiError, CsiResult};
use crate::provision::{read_json, write_json, Provisioner};
use crate::snapshot::{read_snapshot_marker, SnapshotInfo, SNAPSHOT_DIR};
use crate::volume::{Endpoint, SecretValues, VolumeId};

/// Directory at the root of a bucket that indexes the bucket's snapshots.
pub const SNAPSHOT_INDEX: &str = ".s3vol-snapshot-index/";
/// Markers read at once while listing.
const READ_CONCURRENCY: usize = 16;

/// One index object's content.
#[derive(Debug, Serialize, Deserialize)]
struct IndexEntry {
    snapshot_id: String,
}

fn index_key(snapshot_id: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("{SNAPSHOT_INDEX}{}.json", hex::encode(&Sha256::digest(snapshot_id.as_bytes())[..16]))
}

/// Records a new snapshot in its bucket's index.
pub(crate) async fn index_snapshot(store: &dyn ObjectStore, bucket: &str, snapshot_id: &str) -> CsiResult<()> {
    write_json(store, bucket, &index_key(snapshot_id), &IndexEntry { snapshot_id: snapshot_id.to_string() }).await
}

/// Removes a snapshot from its bucket's index (gone already is fine).
pub(crate) async fn unindex_snapshot(store: &dyn ObjectStore, bucket: &str, snapshot_id: &str) -> CsiResult<()> {
    match store.delete_object(bucket, &index_key(snapshot_id)).await {
        Err(e) if e.kind != ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// What ListSnapshots asks for.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    /// Only this snapshot.
    pub snapshot_id: String,
    /// Only snapshots of this volume.
    pub source_volume_id: String,
    /// Page size (0 = all).
    pub max_entries: i32,
    /// Where the previous page ended (from its `next_token`).
    pub starting_token: String,
}

/// One page of snapshots, in snapshot-id order.
#[derive(Debug, Default)]
pub struct ListPage {
    /// The snapshots.
    pub entries: Vec<SnapshotInfo>,
    /// Token for the next page; empty at the end.
    pub next_token: String,
}

impl Provisioner {
    /// ListSnapshots: see the module documentation for where each filter looks.
    pub async fn list_snapshots(&self, q: &ListQuery, secrets: &HashMap<String, String>) -> CsiResult<ListPage> {
        if q.max_entries < 0 {
            return Err(CsiError::invalid(format!("max_entries {} is negative", q.max_entries)));
        }
        let start: usize = match q.starting_token.as_str() {
            "" => 0,
            t => t.parse().map_err(|_| CsiError::Aborted(format!("starting_token {t:?} is not one we issued")))?,
        };
        let secret = SecretValues::from_map(secrets)?;
        let mut all = if !q.snapshot_id.is_empty() {
            self.find_snapshot(&q.snapshot_id, secrets)
                .await?
                .map(|(_, _, marker)| SnapshotInfo { id: q.snapshot_id.clone(), marker })
                .into_iter()
                .filter(|s| q.source_volume_id.is_empty() || s.marker.source_volume_id == q.source_volume_id)
                .collect()
        } else if !q.source_volume_id.is_empty() {
            match VolumeId::parse(&q.source_volume_id) {
                None => Vec::new(), // not a volume of ours: it has no snapshots
                Some(vol) => {
                    let store = self.store_for_volume(&vol, &secret).await?;
                    let mut found = indexed_snapshots(&store, &vol.bucket).await?;
                    found.retain(|s| s.marker.source_volume_id == q.source_volume_id);
                    found
                }
            }
        } else {
            let (store, ep) = self.store_for_new(&Endpoint::default(), false, &secret).await?;
            let buckets = store.list_buckets().await.map_err(|e| match CsiError::from(e) {
                CsiError::PermissionDenied(m) => CsiError::PermissionDenied(format!(
                    "{m}: listing every snapshot needs ListBuckets on {} with the keys of the snapshotter's list secret (csi.storage.k8s.io/snapshotter-list-secret-name)",
                    ep.url.as_deref().unwrap_or("AWS S3")
                )),
                other => other,
            })?;
            let mut found = Vec::new();
            for bucket in buckets {
                match indexed_snapshots(&store, &bucket).await {
                    Ok(mut s) => found.append(&mut s),
                    // A bucket these keys may see but not read, or one deleted meanwhile.
                    Err(CsiError::PermissionDenied(m))
                    | Err(CsiError::NotFound(m))
                    | Err(CsiError::FailedPrecondition(m)) => {
                        tracing::debug!(bucket, reason = %m, "ListSnapshots: bucket skipped");
                    }
                    Err(e) => return Err(e),
                }
            }
            found
        };
        all.sort_by(|a, b| a.id.cmp(&b.id));
        if start > all.len() {
            return Err(CsiError::Aborted(format!(
                "starting_token {:?} is past the end of the list ({} snapshots)",
                q.starting_token,
                all.len()
            )));
        }
        let mut entries = all.split_off(start);
        let mut next_token = String::new();
        if q.max_entries > 0 && entries.len() > q.max_entries as usize {
            entries.truncate(q.max_entries as usize);
            next_token = (start + entries.len()).to_string();
        }
        Ok(ListPage { entries, next_token })
    }
}

/// The snapshots the index of `bucket` names, each checked against its marker.
async fn indexed_snapshots(store: &Arc<dyn ObjectStore>, bucket: &str) -> CsiResult<Vec<SnapshotInfo>> {
    let mut req = ListRequest::recursive(SNAPSHOT_INDEX.to_string());
    let mut keys = Vec::new();
    loop {
        let page = store.list(bucket, &req).await?;
        keys.extend(page.objects.into_iter().map(|o| o.key));
        match page.next_continuation {
            Some(t) => req.continuation = Some(t),
            None => break,
        }
    }
    let reads: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let (store, bucket) = (store.clone(), bucket.to_string());
            async move {
                let Some(entry) =
                    read_json::<IndexEntry>(store.as_ref(), &bucket, &key, "snapshot index entry").await?
                else {
                    return Ok(None);
                };
                let Some(id) = VolumeId::parse(&entry.snapshot_id).filter(|id| id.prefix.contains(SNAPSHOT_DIR)) else {
                    return Ok(None);
                };
                let marker = read_snapshot_marker(store.as_ref(), &id.bucket, &id.prefix).await?;
                Ok::<_, CsiError>(marker.map(|marker| SnapshotInfo { id: entry.snapshot_id, marker }))
            }
        })
        .collect();
    let found: Vec<CsiResult<Option<SnapshotInfo>>> =
        futures::stream::iter(reads).buffer_unordered(READ_CONCURRENCY).collect().await;
    found.into_iter().filter_map(Result::transpose).collect()
}
