use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::listing;
use crate::store::{clamp_range, GetResponse, ObjectStore};
use crate::types::{CompletedPart, ListPage, ListRequest, ListedObject, ObjectMeta, PutOptions};

#[derive(Clone)]
struct StoredObject {
    data: Bytes,
    meta: ObjectMeta,
}

struct Upload {
    bucket: String,
    key: String,
    opts: PutOptions,
    parts: BTreeMap<i32, Bytes>,
}

#[derive(Default)]
struct State {
    buckets: HashMap<String, BTreeMap<String, StoredObject>>,
    uploads: HashMap<String, Upload>,
}

/// An in-process object store with S3's observable behaviour, for unit tests of the
/// layers above. Counts requests so tests can assert how many calls an operation made.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    next_id: AtomicU64,
    requests: AtomicU64,
}

impl MemoryStore {
    /// An empty store with no buckets.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with these buckets already created.
    pub fn with_buckets(names: &[&str]) -> Self {
        let s = Self::new();
        {
            let mut st = s.state.lock();
            for n in names {
                st.buckets.insert(n.to_string(), BTreeMap::new());
            }
        }
        s
    }

    /// Total requests served so far.
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Keys in a bucket, for assertions.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.state.lock().buckets.get(bucket).map(|b| b.keys().cloned().collect()).unwrap_or_default()
    }

    /// Multipart uploads started and neither completed nor aborted, for assertions
    /// that nothing is left behind.
    pub fn open_uploads(&self) -> usize {
        self.state.lock().uploads.len()
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn store(&self, bucket: &str, key: &str, data: Bytes, opts: &PutOptions) -> StoreResult<()> {
        let mut st = self.state.lock();
        let b = st.buckets.get_mut(bucket).ok_or_else(|| StoreError::no_such_bucket(bucket))?;
        let etag = md5_hex(&data);
        let meta = ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
            last_modified: SystemTime::now(),
            etag,
            metadata: opts.metadata.clone(),
            content_type: opts.content_type.clone(),
        };
        b.insert(key.to_string(), StoredObject { data, meta });
        Ok(())
    }

    fn object(&self, bucket: &str, key: &str) -> StoreResult<StoredObject> {
        let st = self.state.lock();
        let b = st.buckets.get(bucket).ok_or_else(|| StoreError::no_such_bucket(bucket))?;
        b.get(key).cloned().ok_or_else(|| StoreError::not_found(key))
    }
}

/// Hex MD5, the ETag S3 gives a single-part object.
pub(crate) fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(data))
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn head_object(&self, bucket: &str, key: &str) -> StoreResult<ObjectMeta> {
        self.count();
        Ok(self.object(bucket, key)?.meta)
    }

    async fn get_object(&self, bucket: &str, key: &str, range: Option<Range<u64>>) -> StoreResult<GetResponse> {
        self.count();
        let obj = self.object(bucket, key)?;
        let r = clamp_range(range, obj.meta.size, key)?;
        let chunk = obj.data.slice(r.start as usize..r.end as usize);
        Ok(GetResponse { meta: obj.meta, body: Box::pin(futures::stream::once(async move { Ok(chunk) })) })
    }

    async fn put_object(&self, bucket: &str, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<()> {
        self.count();
        self.store(bucket, key, body, opts)
    }

    async fn create_multipart(&self, bucket: &str, key: &str, opts: &PutOptions) -> StoreResult<String> {
        self.count();
        let mut st = self.state.lock();
        if !st.buckets.contains_key(bucket) {
            return Err(StoreError::no_such_bucket(bucket));
        }
        let id = format!("upload-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        st.uploads.insert(
            id.clone(),
            Upload { bucket: bucket.into(), key: key.into(), opts: opts.clone(), parts: BTreeMap::new() },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        _bucket: &str,
        _key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> StoreResult<CompletedPart> {
        self.count();
        let etag = md5_hex(&body);
        let mut st = self.state.lock();
        let up = st.uploads.get_mut(upload_id).ok_or_else(|| no_such_upload(upload_id))?;
        up.parts.insert(part_number, body);
        Ok(CompletedPart { part_number, etag })
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> StoreResult<()> {
        self.count();
        let up = self.state.lock().uploads.remove(upload_id).ok_or_else(|| no_such_upload(upload_id))?;
        if up.bucket != bucket || up.key != key {
            return Err(no_such_upload(upload_id));
        }
        let mut data = BytesMut::new();
        for p in &parts {
            let body = up.parts.get(&p.part_number).ok_or_else(|| {
                StoreError::with_code(
                    ErrorKind::InvalidArgument,
                    "InvalidPart",
                    format!("part {} was not uploaded", p.part_number),
                )
            })?;
            data.extend_from_slice(body);
        }
        self.store(bucket, key, data.freeze(), &up.opts)
    }

    async fn abort_multipart(&self, _bucket: &str, _key: &str, upload_id: &str) -> StoreResult<()> {
        self.count();
        self.state.lock().uploads.remove(upload_id);
        Ok(())
    }

    async fn list(&self, bucket: &str, req: &ListRequest) -> StoreResult<ListPage> {
        self.count();
        let st = self.state.lock();
        let b = st.buckets.get(bucket).ok_or_else(|| StoreError::no_such_bucket(bucket))?;
        let listed: Vec<ListedObject> = b
            .range(req.prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&req.prefix))
            .map(|(k, o)| ListedObject {
                key: k.clone(),
                size: o.meta.size,
                last_modified: o.meta.last_modified,
                etag: o.meta.etag.clone(),
            })
            .collect();
        Ok(listing::page(&listed, req))
    }

    async fn copy_object(
        &self,
        bucket: &str,
        src_key: &str,
        dst_key: &str,
        replace: Option<&PutOptions>,
    ) -> StoreResult<()> {
        self.count();
        let obj = self.object(bucket, src_key)?;
        let kept = PutOptions {
            metadata: obj.meta.metadata.clone(),
            content_type: obj.meta.content_type.clone(),
            ..Default::default()
        };
        let opts = match replace {
            Some(o) if o.keep_metadata => {
                PutOptions { storage_class: o.storage_class.clone(), sse: o.sse.clone(), ..kept }
            }
            Some(o) => o.clone(),
            None => kept,
        };
        self.store(bucket, dst_key, obj.data, &opts)
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> StoreResult<()> {
        self.count();
        let mut st = self.state.lock();
        let b = st.buckets.get_mut(bucket).ok_or_else(|| StoreError::no_such_bucket(bucket))?;
        b.remove(key);
        Ok(())
    }

    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> StoreResult<Vec<(String, StoreError)>> {
        self.count();
        let mut st = self.state.lock();
        let b = st.buckets.get_mut(bucket).ok_or_else(|| StoreError::no_such_bucket(bucket))?;
        for k in keys {
            b.remove(k);
        }
        Ok(Vec::new())
    }

    async fn create_bucket(&self, bucket: &str) -> StoreResult<()> {
        self.count();
        let mut st = self.state.lock();
        if st.buckets.contains_key(bucket) {
            return Err(StoreError::with_code(
                ErrorKind::Conflict,
                "BucketAlreadyOwnedByYou",
                format!("bucket {bucket:?} already exists"),
            ));
        }
        st.buckets.insert(bucket.into(), BTreeMap::new());
        Ok(())
    }

    async fn list_buckets(&self) -> StoreResult<Vec<String>> {
        self.count();
        let mut names: Vec<String> = self.state.lock().buckets.keys().cloned().collect();
        names.sort();
        Ok(names)
    }

    async fn head_bucket(&self, bucket: &str) -> StoreResult<()> {
        self.count();
        if self.state.lock().buckets.contains_key(bucket) {
            Ok(())
        } else {
            Err(StoreError::no_such_bucket(bucket))
        }
    }

    async fn delete_bucket(&self, bucket: &str) -> StoreResult<()> {
        self.count();
        let mut st = self.state.lock();
        match st.buckets.get(bucket) {
            None => Err(StoreError::no_such_bucket(bucket)),
            Some(b) if !b.is_empty() => Err(StoreError::with_code(
                ErrorKind::Conflict,
                "BucketNotEmpty",
                format!("bucket {bucket:?} is not empty"),
            )),
            Some(_) => {
                st.buckets.remove(bucket);
                Ok(())
            }
        }
    }
}

fn no_such_upload(id: &str) -> StoreError {
    StoreError::with_code(ErrorKind::NotFound, "NoSuchUpload", format!("multipart upload {id} does not exist"))
}
