use std::ops::Range;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::types::{CompletedPart, ListPage, ListRequest, ObjectMeta, PutOptions};

/// A streaming object body; chunks arrive as the store sends them.
pub type BodyStream = BoxStream<'static, StoreResult<Bytes>>;

/// The answer to a GET: what the object is, and its (possibly ranged) body.
pub struct GetResponse {
    /// Metadata of the whole object (size is the full object size, not the range).
    pub meta: ObjectMeta,
    /// The requested bytes.
    pub body: BodyStream,
}

/// The seam between s3vol and any object storage.
///
/// Every call names its bucket, because the provisioner works across buckets. Keys are
/// plain strings; directories are a convention of the layers above.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// A short human description (`s3 http://host:9000`, `file /data`) for error messages.
    fn describe(&self) -> String;

    /// Metadata of one object; `NotFound` when missing.
    async fn head_object(&self, bucket: &str, key: &str) -> StoreResult<ObjectMeta>;

    /// Reads an object, or the byte range `range` of it (clamped to the object's end).
    async fn get_object(&self, bucket: &str, key: &str, range: Option<Range<u64>>) -> StoreResult<GetResponse>;

    /// Writes a whole object in one request.
    async fn put_object(&self, bucket: &str, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<()>;

    /// Starts a multipart upload and returns its upload id.
    async fn create_multipart(&self, bucket: &str, key: &str, opts: &PutOptions) -> StoreResult<String>;

    /// Uploads part `part_number` (1-based) of an upload.
    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> StoreResult<CompletedPart>;

    /// Completes an upload from its parts, in part-number order.
    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> StoreResult<()>;

    /// Abandons an upload and frees its parts.
    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> StoreResult<()>;

    /// One page of ListObjectsV2.
    async fn list(&self, bucket: &str, req: &ListRequest) -> StoreResult<ListPage>;

    /// Server-side copy. `metadata: Some` replaces the user metadata, `None` keeps it.
    async fn copy_object(
        &self,
        bucket: &str,
        src_key: &str,
        dst_key: &str,
        replace: Option<&PutOptions>,
    ) -> StoreResult<()>;

    /// Deletes one object; deleting a missing key succeeds (as in S3).
    async fn delete_object(&self, bucket: &str, key: &str) -> StoreResult<()>;

    /// Deletes many objects, returning the keys that failed. Backends without a
    /// multi-object delete keep this default, which deletes one by one.
    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> StoreResult<Vec<(String, StoreError)>> {
        let mut failed = Vec::new();
        for key in keys {
            if let Err(e) = self.delete_object(bucket, key).await {
                failed.push((key.clone(), e));
            }
        }
        Ok(failed)
    }

    /// Creates a bucket; `Conflict` when it already exists.
    async fn create_bucket(&self, bucket: &str) -> StoreResult<()>;

    /// Checks a bucket exists and is accessible.
    async fn head_bucket(&self, bucket: &str) -> StoreResult<()>;

    /// Deletes an empty bucket.
    async fn delete_bucket(&self, bucket: &str) -> StoreResult<()>;

    /// The buckets these credentials own, by name (what an unfiltered ListSnapshots
    /// searches); keys scoped to some buckets may be refused (`AccessDenied`).
    async fn list_buckets(&self) -> StoreResult<Vec<String>>;
}

/// Reads a whole body into memory; for small objects (markers, tests) only.
pub async fn collect_body(mut body: BodyStream) -> StoreResult<Bytes> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf.freeze())
}

/// Clamps a requested range to an object of `size` bytes, the way S3 does: a start past
/// the end is an error (416), an end past the end is cut.
pub(crate) fn clamp_range(range: Option<Range<u64>>, size: u64, key: &str) -> StoreResult<Range<u64>> {
    match range {
        None => Ok(0..size),
        Some(r) if r.start >= size && !(size == 0 && r.start == 0) => Err(StoreError::with_code(
            ErrorKind::InvalidArgument,
            "InvalidRange",
            format!("{key}: range {}..{} starts past the end ({size} bytes)", r.start, r.end),
        )),
        Some(r) => Ok(r.start..r.end.min(size).max(r.start)),
    }
}
