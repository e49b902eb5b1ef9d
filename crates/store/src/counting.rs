use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{StoreError, StoreResult};
use crate::store::{GetResponse, ObjectStore};
use crate::types::{CompletedPart, ListPage, ListRequest, ObjectMeta, PutOptions};

/// Requests made per operation, readable by tests and logged at unmount.
#[derive(Clone, Default)]
pub struct RequestCounts {
    inner: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl RequestCounts {
    /// Requests of `op` so far (`GetObject`, `ListObjectsV2`...).
    pub fn get(&self, op: &str) -> u64 {
        self.inner.lock().get(op).copied().unwrap_or(0)
    }

    /// All counts.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.inner.lock().clone()
    }

    /// Sum over all operations.
    pub fn total(&self) -> u64 {
        self.inner.lock().values().sum()
    }
}

/// Wraps a store to count every request by operation and outcome, in
/// [`RequestCounts`] and as Prometheus metrics (`s3vol_store_requests_total`,
/// `s3vol_store_request_seconds`, `s3vol_store_bytes_total`).
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counts: RequestCounts,
    volume: String,
}

impl CountingStore {
    /// Counts requests of `inner`, labelled with `volume`.
    pub fn new(inner: Arc<dyn ObjectStore>, volume: impl Into<String>) -> Self {
        CountingStore { inner, counts: RequestCounts::default(), volume: volume.into() }
    }

    /// The counters.
    pub fn counts(&self) -> RequestCounts {
        self.counts.clone()
    }

    fn record<T>(&self, op: &'static str, start: Instant, res: &StoreResult<T>) {
        *self.counts.inner.lock().entry(op).or_default() += 1;
        let status = match res {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{:?}", e.kind),
        };
        metrics::counter!("s3vol_store_requests_total", "op" => op, "status" => status, "volume" => self.volume.clone()).increment(1);
        metrics::histogram!("s3vol_store_request_seconds", "op" => op).record(start.elapsed().as_secs_f64());
    }

    fn bytes(&self, dir: &'static str, n: u64) {
        metrics::counter!("s3vol_store_bytes_total", "direction" => dir, "volume" => self.volume.clone()).increment(n);
    }
}

macro_rules! counted {
    ($self:ident, $op:literal, $call:expr) => {{
        let start = Instant::now();
        let res = $call.await;
        $self.record($op, start, &res);
        res
    }};
}

#[async_trait]
impl ObjectStore for CountingStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn head_object(&self, bucket: &str, key: &str) -> StoreResult<ObjectMeta> {
        counted!(self, "HeadObject", self.inner.head_object(bucket, key))
    }

    async fn get_object(&self, bucket: &str, key: &str, range: Option<Range<u64>>) -> StoreResult<GetResponse> {
        if let Some(r) = &range {
            self.bytes("read", r.end.saturating_sub(r.start));
        }
        counted!(self, "GetObject", self.inner.get_object(bucket, key, range))
    }

    async fn put_object(&self, bucket: &str, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<()> {
        self.bytes("write", body.len() as u64);
        counted!(self, "PutObject", self.inner.put_object(bucket, key, body, opts))
    }

    async fn create_multipart(&self, bucket: &str, key: &str, opts: &PutOptions) -> StoreResult<String> {
        counted!(self, "CreateMultipartUpload", self.inner.create_multipart(bucket, key, opts))
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> StoreResult<CompletedPart> {
        self.bytes("write", body.len() as u64);
        counted!(self, "UploadPart", self.inner.upload_part(bucket, key, upload_id, part_number, body))
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> StoreResult<()> {
        counted!(self, "CompleteMultipartUpload", self.inner.complete_multipart(bucket, key, upload_id, parts))
    }

    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> StoreResult<()> {
        counted!(self, "AbortMultipartUpload", self.inner.abort_multipart(bucket, key, upload_id))
    }

    async fn list(&self, bucket: &str, req: &ListRequest) -> StoreResult<ListPage> {
        counted!(self, "ListObjectsV2", self.inner.list(bucket, req))
    }

    async fn copy_object(
        &self,
        bucket: &str,
        src_key: &str,
        dst_key: &str,
        replace: Option<&PutOptions>,
    ) -> StoreResult<()> {
        counted!(self, "CopyObject", self.inner.copy_object(bucket, src_key, dst_key, replace))
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> StoreResult<()> {
        counted!(self, "DeleteObject", self.inner.delete_object(bucket, key))
    }

    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> StoreResult<Vec<(String, StoreError)>> {
        counted!(self, "DeleteObjects", self.inner.delete_objects(bucket, keys))
    }

    async fn create_bucket(&self, bucket: &str) -> StoreResult<()> {
        counted!(self, "CreateBucket", self.inner.create_bucket(bucket))
    }

    async fn head_bucket(&self, bucket: &str) -> StoreResult<()> {
        counted!(self, "HeadBucket", self.inner.head_bucket(bucket))
    }

    async fn delete_bucket(&self, bucket: &str) -> StoreResult<()> {
        counted!(self, "DeleteBucket", self.inner.delete_bucket(bucket))
    }

    async fn list_buckets(&self) -> StoreResult<Vec<String>> {
        counted!(self, "ListBuckets", self.inner.list_buckets())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn counts_by_operation() {
        let s = CountingStore::new(Arc::new(MemoryStore::with_buckets(&["b"])), "v");
        s.put_object("b", "k", Bytes::from_static(b"x"), &PutOptions::default()).await.unwrap();
        s.head_object("b", "k").await.unwrap();
        s.head_object("b", "missing").await.unwrap_err();
        s.list("b", &ListRequest::recursive("")).await.unwrap();
        let c = s.counts();
        assert_eq!((c.get("PutObject"), c.get("HeadObject"), c.get("ListObjectsV2"), c.total()), (1, 2, 1, 4));
    }
}
