//! A store that misbehaves on request, for tests of the layers above: reads whose body
//! breaks off, requests that fail with a given kind. The in-process S3 server injects
//! HTTP-level faults; this one reaches the same code paths without a network, so the
//! filesystem core's unit tests can show what a flaky network does to it.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;

use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::store::{GetResponse, ObjectStore};
use crate::types::{CompletedPart, ListPage, ListRequest, ObjectMeta, PutOptions};

/// What the next GETs do wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetFault {
    /// The request fails with this kind (a 500 after the client's retries: `Other`).
    Fail(ErrorKind),
    /// The body ends cleanly after half of its bytes (a proxy that closed early).
    Truncate,
    /// The body yields half of its bytes, then an error (a reset connection).
    BreakMidBody,
}

/// Wraps a store; GETs follow the queued faults, everything else passes through.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    get_faults: Mutex<Vec<GetFault>>,
    /// When shut, each HEAD waits for a permit: a store as slow as the test makes it.
    heads: Gate,
    /// The same for LISTs.
    lists: Gate,
    /// LISTs still to fail (after passing the gate) as a store that stays unavailable
    /// through the client's retries.
    list_failures: AtomicUsize,
}

/// Requests of one kind held until the test lets them through, and counted.
#[derive(Default)]
struct Gate {
    permits: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    waiting: AtomicUsize,
    done: AtomicUsize,
}

impl Gate {
    fn shut(&self) {
        *self.permits.lock() = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    fn admit(&self, n: usize) {
        if let Some(g) = self.permits.lock().as_ref() {
            g.add_permits(n);
        }
    }

    /// Runs `request` once the gate lets it through.
    async fn pass<T>(&self, request: impl std::future::Future<Output = T>) -> T {
        let gate = self.permits.lock().clone();
        if let Some(g) = gate {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let permit = g.acquire().await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if let Ok(p) = permit {
                p.forget();
            }
        }
        let res = request.await;
        self.done.fetch_add(1, Ordering::SeqCst);
        res
    }
}

impl FaultyStore {
    /// A store that behaves like `inner` until faults are queued.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultyStore {
            inner,
            get_faults: Mutex::new(Vec::new()),
            heads: Gate::default(),
            lists: Gate::default(),
            list_failures: AtomicUsize::new(0),
        }
    }

    /// The next `count` GETs each suffer `fault` (after those already queued).
    pub fn fail_gets(&self, fault: GetFault, count: usize) {
        let mut q = self.get_faults.lock();
        for _ in 0..count {
            q.insert(0, fault);
        }
    }

    /// From now on every HEAD waits until [`FaultyStore::admit_heads`] lets it through.
    pub fn gate_heads(&self) {
        self.heads.shut();
    }

    /// Lets `n` more gated HEADs through.
    pub fn admit_heads(&self, n: usize) {
        self.heads.admit(n);
    }

    /// HEADs waiting at the gate now (requests in flight on a slow store).
    pub fn heads_waiting(&self) -> usize {
        self.heads.waiting.load(Ordering::SeqCst)
    }

    /// HEADs answered so far.
    pub fn heads_done(&self) -> usize {
        self.heads.done.load(Ordering::SeqCst)
    }

    /// From now on every LIST waits until [`FaultyStore::admit_lists`] lets it through.
    pub fn gate_lists(&self) {
        self.lists.shut();
    }

    /// Lets `n` more gated LISTs through.
    pub fn admit_lists(&self, n: usize) {
        self.lists.admit(n);
    }

    /// The next `count` LISTs to pass the gate fail as unavailable.
    pub fn fail_lists(&self, count: usize) {
        self.list_failures.fetch_add(count, Ordering::SeqCst);
    }

    /// LISTs waiting at the gate now.
    pub fn lists_waiting(&self) -> usize {
        self.lists.waiting.load(Ordering::SeqCst)
    }

    /// LISTs answered so far.
    pub fn lists_done(&self) -> usize {
        self.lists.done.load(Ordering::SeqCst)
    }

    /// GET faults still queued.
    pub fn pending_get_faults(&self) -> usize {
        self.get_faults.lock().len()
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    async fn head_object(&self, bucket: &str, key: &str) -> StoreResult<ObjectMeta> {
        self.heads.pass(self.inner.head_object(bucket, key)).await
    }

    async fn get_object(&self, bucket: &str, key: &str, range: Option<Range<u64>>) -> StoreResult<GetResponse> {
        let fault = self.get_faults.lock().pop();
        match fault {
            None => self.inner.get_object(bucket, key, range).await,
            Some(GetFault::Fail(kind)) => {
                Err(StoreError::new(kind, format!("GET {bucket}/{key}: injected {kind:?} failure")))
            }
            Some(f @ (GetFault::Truncate | GetFault::BreakMidBody)) => {
                let resp = self.inner.get_object(bucket, key, range).await?;
                let full = crate::store::collect_body(resp.body).await?;
                let half = full.slice(..full.len() / 2);
                let mut parts: Vec<StoreResult<Bytes>> = vec![Ok(half)];
                if f == GetFault::BreakMidBody {
                    parts.push(Err(StoreError::new(
                        ErrorKind::Unavailable,
                        format!("GET {bucket}/{key}: body interrupted (injected)"),
                    )));
                }
                Ok(GetResponse { meta: resp.meta, body: futures::stream::iter(parts).boxed() })
            }
        }
    }

    async fn put_object(&self, bucket: &str, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<()> {
        self.inner.put_object(bucket, key, body, opts).await
    }

    async fn create_multipart(&self, bucket: &str, key: &str, opts: &PutOptions) -> StoreResult<String> {
        self.inner.create_multipart(bucket, key, opts).await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> StoreResult<CompletedPart> {
        self.inner.upload_part(bucket, key, upload_id, part_number, body).await
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> StoreResult<()> {
        self.inner.complete_multipart(bucket, key, upload_id, parts).await
    }

    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> StoreResult<()> {
        self.inner.abort_multipart(bucket, key, upload_id).await
    }

    async fn list(&self, bucket: &str, req: &ListRequest) -> StoreResult<ListPage> {
        self.lists
            .pass(async {
                let fail = self.list_failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                if fail.is_ok() {
                    return Err(StoreError::new(
                        ErrorKind::Unavailable,
                        format!("injected: LIST {bucket}/{}", req.prefix),
                    ));
                }
                self.inner.list(bucket, req).await
            })
            .await
    }

    async fn copy_object(
        &self,
        bucket: &str,
        src_key: &str,
        dst_key: &str,
        replace: Option<&PutOptions>,
    ) -> StoreResult<()> {
        self.inner.copy_object(bucket, src_key, dst_key, replace).await
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> StoreResult<()> {
        self.inner.delete_object(bucket, key).await
    }

    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> StoreResult<Vec<(String, StoreError)>> {
        self.inner.delete_objects(bucket, keys).await
    }

    async fn create_bucket(&self, bucket: &str) -> StoreResult<()> {
        self.inner.create_bucket(bucket).await
    }

    async fn head_bucket(&self, bucket: &str) -> StoreResult<()> {
        self.inner.head_bucket(bucket).await
    }

    async fn delete_bucket(&self, bucket: &str) -> StoreResult<()> {
        self.inner.delete_bucket(bucket).await
    }

    async fn list_buckets(&self) -> StoreResult<Vec<String>> {
        self.inner.list_buckets().await
    }
}
