use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest, Md5};
use parking_lot::Mutex;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::control::Control;

#[derive(Clone)]
struct Obj {
    data: Bytes,
    etag: String,
    metadata: HashMap<String, String>,
    content_type: Option<String>,
    modified: SystemTime,
}

struct Upload {
    bucket: String,
    key: String,
    metadata: HashMap<String, String>,
    content_type: Option<String>,
    parts: BTreeMap<i32, (Bytes, String)>,
}

/// A listing page before it is put into a V1 or V2 answer.
#[derive(Default)]
struct ListedPage {
    contents: Vec<Object>,
    prefixes: Vec<String>,
    truncated: bool,
    last: Option<String>,
}

#[derive(Default)]
struct Data {
    buckets: BTreeMap<String, BTreeMap<String, Obj>>,
    uploads: HashMap<String, Upload>,
}

/// The in-memory S3 semantics behind [`crate::TestS3`]. Keys are opaque strings, so
/// `dir/` markers, `a` beside `a/b`, and keys with any bytes behave as on AWS.
#[derive(Clone)]
pub struct Backend {
    data: Arc<Mutex<Data>>,
    control: Control,
    next_upload: Arc<AtomicU64>,
}

type R<T> = S3Result<S3Response<T>>;

fn ok<T>(t: T) -> R<T> {
    Ok(S3Response::new(t))
}

fn no_bucket(b: &str) -> S3Error {
    S3Error::with_message(S3ErrorCode::NoSuchBucket, format!("The specified bucket does not exist: {b}"))
}

fn no_key(k: &str) -> S3Error {
    S3Error::with_message(S3ErrorCode::NoSuchKey, format!("The specified key does not exist: {k}"))
}

fn no_upload(id: &str) -> S3Error {
    S3Error::with_message(S3ErrorCode::NoSuchUpload, format!("The specified upload does not exist: {id}"))
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

async fn read_body(body: Option<StreamingBlob>) -> S3Result<Bytes> {
    let mut buf = BytesMut::new();
    if let Some(mut b) = body {
        while let Some(chunk) = b.next().await {
            let chunk = chunk.map_err(|e| S3Error::with_message(S3ErrorCode::IncompleteBody, e.to_string()))?;
            buf.extend_from_slice(&chunk);
        }
    }
    Ok(buf.freeze())
}

fn blob(data: Bytes) -> StreamingBlob {
    StreamingBlob::wrap(futures::stream::iter(vec![Ok::<_, std::io::Error>(data)]))
}

/// Inclusive byte range `[first, last]` of an object of `size` bytes, or InvalidRange.
fn resolve_range(r: &Range, size: u64) -> S3Result<(u64, u64)> {
    let bad = || S3Error::with_message(S3ErrorCode::InvalidRange, "The requested range is not satisfiable");
    match *r {
        Range::Int { first, last } => {
            if first >= size {
                return Err(bad());
            }
            Ok((first, last.map_or(size - 1, |l| l.min(size - 1))))
        }
        Range::Suffix { length } => {
            if length == 0 || size == 0 {
                return Err(bad());
            }
            Ok((size.saturating_sub(length), size - 1))
        }
    }
}

impl Backend {
    /// An empty backend whose requests are counted and faulted through `control`.
    pub fn new(control: Control) -> Self {
        Backend { data: Arc::default(), control, next_upload: Arc::new(AtomicU64::new(1)) }
    }

    /// Creates a bucket directly (test setup, not counted).
    pub fn create_bucket(&self, name: &str) {
        self.data.lock().buckets.entry(name.into()).or_default();
    }

    /// Puts an object directly (test setup for "written by another tool"), with user metadata.
    pub fn put(&self, bucket: &str, key: &str, data: &[u8], metadata: &[(&str, &str)]) {
        let obj = Obj {
            data: Bytes::copy_from_slice(data),
            etag: md5_hex(data),
            metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            content_type: None,
            modified: SystemTime::now(),
        };
        self.data.lock().buckets.entry(bucket.into()).or_default().insert(key.into(), obj);
    }

    /// Deletes an object directly (another client removing it).
    pub fn delete(&self, bucket: &str, key: &str) {
        if let Some(b) = self.data.lock().buckets.get_mut(bucket) {
            b.remove(key);
        }
    }

    /// An object's bytes, if it exists.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Bytes> {
        self.data.lock().buckets.get(bucket)?.get(key).map(|o| o.data.clone())
    }

    /// An object's user metadata, if it exists.
    pub fn metadata(&self, bucket: &str, key: &str) -> Option<HashMap<String, String>> {
        self.data.lock().buckets.get(bucket)?.get(key).map(|o| o.metadata.clone())
    }

    /// All keys of a bucket, in order.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.data.lock().buckets.get(bucket).map(|b| b.keys().cloned().collect()).unwrap_or_default()
    }

    /// Whether a bucket exists.
    pub fn has_bucket(&self, bucket: &str) -> bool {
        self.data.lock().buckets.contains_key(bucket)
    }

    /// Number of multipart uploads neither completed nor aborted.
    pub fn pending_uploads(&self) -> usize {
        self.data.lock().uploads.len()
    }

    /// One listing page after `resume` (a key or a common prefix already returned), the
    /// same for ListObjects and ListObjectsV2.
    fn list_page(
        &self,
        bucket: &str,
        prefix: Option<&str>,
        delimiter: Option<&str>,
        max: usize,
        resume: Option<&str>,
    ) -> S3Result<ListedPage> {
        let d = self.data.lock();
        let b = d.buckets.get(bucket).ok_or_else(|| no_bucket(bucket))?;
        let prefix = prefix.unwrap_or_default();
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let mut page = ListedPage::default();
        let start = resume.unwrap_or(prefix).to_string();
        for (key, o) in b.range(start..) {
            if !key.starts_with(prefix) {
                if key.as_str() > prefix {
                    break;
                }
                continue;
            }
            if resume
                .is_some_and(|r| key.as_str() <= r || (r.ends_with(delimiter.unwrap_or("\0")) && key.starts_with(r)))
            {
                continue;
            }
            let rolled = delimiter
                .and_then(|dl| key[prefix.len()..].find(dl).map(|p| key[..prefix.len() + p + dl.len()].to_string()));
            if let Some(cp) = &rolled {
                if page.prefixes.last() == Some(cp) {
                    continue;
                }
            }
            if page.contents.len() + page.prefixes.len() == max {
                page.truncated = true;
                break;
            }
            match rolled {
                Some(cp) => {
                    page.last = Some(cp.clone());
                    page.prefixes.push(cp);
                }
                None => {
                    page.last = Some(key.clone());
                    page.contents.push(Object {
                        key: Some(key.clone()),
                        size: Some(o.data.len() as i64),
                        e_tag: Some(ETag::Strong(o.etag.clone())),
                        last_modified: Some(Timestamp::from(o.modified)),
                        ..Default::default()
                    });
                }
            }
        }
        Ok(page)
    }

    /// Counts uploads whose body was sent unsigned (`x-amz-content-sha256: UNSIGNED-PAYLOAD`).
    fn note_payload_signing(&self, headers: &http::HeaderMap) {
        if headers.get("x-amz-content-sha256").is_some_and(|v| v == "UNSIGNED-PAYLOAD") {
            self.control.note("UnsignedPayload");
        }
    }

    async fn enter(&self, op: &str) -> S3Result<()> {
        let lat = self.control.latency(op);
        if !lat.is_zero() {
            tokio::time::sleep(lat).await;
        }
        self.control.enter(op)
    }

    fn store(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        metadata: HashMap<String, String>,
        content_type: Option<String>,
        etag: String,
    ) -> S3Result<String> {
        let mut d = self.data.lock();
        let b = d.buckets.get_mut(bucket).ok_or_else(|| no_bucket(bucket))?;
        b.insert(key.into(), Obj { data, etag: etag.clone(), metadata, content_type, modified: SystemTime::now() });
        Ok(etag)
    }

    fn object(&self, bucket: &str, key: &str) -> S3Result<Obj> {
        let d = self.data.lock();
        let b = d.buckets.get(bucket).ok_or_else(|| no_bucket(bucket))?;
        b.get(key).cloned().ok_or_else(|| no_key(key))
    }
}

#[async_trait::async_trait]
impl S3 for Backend {
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> R<CreateBucketOutput> {
        self.enter("CreateBucket").await?;
        let mut d = self.data.lock();
        let name = req.input.bucket;
        if d.buckets.contains_key(&name) {
            return Err(S3Error::with_message(
                S3ErrorCode::BucketAlreadyOwnedByYou,
                format!("bucket {name} already exists"),
            ));
        }
        d.buckets.insert(name, BTreeMap::new());
        ok(CreateBucketOutput::default())
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> R<HeadBucketOutput> {
        self.enter("HeadBucket").await?;
        if !self.data.lock().buckets.contains_key(&req.input.bucket) {
            return Err(no_bucket(&req.input.bucket));
        }
        ok(HeadBucketOutput::default())
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> R<DeleteBucketOutput> {
        self.enter("DeleteBucket").await?;
        let mut d = self.data.lock();
        let name = req.input.bucket;
        match d.buckets.get(&name) {
            None => return Err(no_bucket(&name)),
            Some(b) if !b.is_empty() => {
                return Err(S3Error::with_message(
                    S3ErrorCode::BucketNotEmpty,
                    "The bucket you tried to delete is not empty",
                ))
            }
            Some(_) => {}
        }
        d.buckets.remove(&name);
        ok(DeleteBucketOutput::default())
    }

    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> R<ListBucketsOutput> {
        self.enter("ListBuckets").await?;
        let d = self.data.lock();
        let buckets = d.buckets.keys().map(|n| Bucket { name: Some(n.clone()), ..Default::default() }).collect();
        ok(ListBucketsOutput { buckets: Some(buckets), ..Default::default() })
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> R<PutObjectOutput> {
        self.enter("PutObject").await?;
        self.note_payload_signing(&req.headers);
        let i = req.input;
        let data = read_body(i.body).await?;
        let etag = md5_hex(&data);
        self.store(
            &i.bucket,
            &i.key,
            data,
            i.metadata.unwrap_or_default(),
            i.content_type.map(|c| c.to_string()),
            etag.clone(),
        )?;
        ok(PutObjectOutput { e_tag: Some(ETag::Strong(etag)), ..Default::default() })
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> R<HeadObjectOutput> {
        self.enter("HeadObject").await?;
        let o = self.object(&req.input.bucket, &req.input.key)?;
        ok(HeadObjectOutput {
            content_length: Some(o.data.len() as i64),
            e_tag: Some(ETag::Strong(o.etag)),
            last_modified: Some(Timestamp::from(o.modified)),
            metadata: Some(o.metadata),
            content_type: o.content_type.and_then(|c| c.parse().ok()),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        })
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> R<GetObjectOutput> {
        self.enter("GetObject").await?;
        let i = req.input;
        let o = self.object(&i.bucket, &i.key)?;
        let size = o.data.len() as u64;
        let (data, content_range) = match &i.range {
            None => (o.data.clone(), None),
            Some(r) => {
                let (first, last) = resolve_range(r, size)?;
                (o.data.slice(first as usize..=last as usize), Some(format!("bytes {first}-{last}/{size}")))
            }
        };
        ok(GetObjectOutput {
            content_length: Some(data.len() as i64),
            content_range,
            body: Some(blob(data)),
            e_tag: Some(ETag::Strong(o.etag)),
            last_modified: Some(Timestamp::from(o.modified)),
            metadata: Some(o.metadata),
            content_type: o.content_type.and_then(|c| c.parse().ok()),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        })
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> R<DeleteObjectOutput> {
        self.enter("DeleteObject").await?;
        let mut d = self.data.lock();
        let b = d.buckets.get_mut(&req.input.bucket).ok_or_else(|| no_bucket(&req.input.bucket))?;
        b.remove(&req.input.key);
        ok(DeleteObjectOutput::default())
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> R<DeleteObjectsOutput> {
        self.enter("DeleteObjects").await?;
        let i = req.input;
        if i.delete.objects.len() > 1000 {
            return Err(S3Error::with_message(S3ErrorCode::MalformedXML, "more than 1000 keys in one DeleteObjects"));
        }
        let mut d = self.data.lock();
        let b = d.buckets.get_mut(&i.bucket).ok_or_else(|| no_bucket(&i.bucket))?;
        let quiet = i.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        for id in i.delete.objects {
            b.remove(&id.key);
            if !quiet {
                deleted.push(DeletedObject { key: Some(id.key), ..Default::default() });
            }
        }
        ok(DeleteObjectsOutput { deleted: Some(deleted), ..Default::default() })
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> R<CopyObjectOutput> {
        self.enter("CopyObject").await?;
        let i = req.input;
        let CopySource::Bucket { bucket, key, .. } = &i.copy_source else {
            return Err(S3Error::with_message(S3ErrorCode::NotImplemented, "access point copy sources"));
        };
        let src = self.object(bucket, key)?;
        let max = self.control.max_copy_size();
        if src.data.len() as u64 > max {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                format!("The specified copy source is larger than the maximum allowable size for a copy source: {max}"),
            ));
        }
        let replace = i.metadata_directive.as_ref().is_some_and(|m| m.as_str() == MetadataDirective::REPLACE);
        let (metadata, content_type) = if replace {
            (i.metadata.unwrap_or_default(), i.content_type.map(|c| c.to_string()))
        } else {
            (src.metadata.clone(), src.content_type.clone())
        };
        let etag = self.store(&i.bucket, &i.key, src.data, metadata, content_type, src.etag)?;
        ok(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(Timestamp::from(SystemTime::now())),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> R<ListObjectsV2Output> {
        self.enter("ListObjectsV2").await?;
        let i = req.input;
        let max = i.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        // The token is the last key or common prefix returned; start_after applies only
        // on the first page, as on AWS.
        let resume = i.continuation_token.clone().or_else(|| i.start_after.clone());
        let page = self.list_page(&i.bucket, i.prefix.as_deref(), i.delimiter.as_deref(), max, resume.as_deref())?;
        let key_count = (page.contents.len() + page.prefixes.len()) as i32;
        ok(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: i.prefix,
            delimiter: i.delimiter,
            max_keys: Some(max as i32),
            key_count: Some(key_count),
            is_truncated: Some(page.truncated),
            continuation_token: i.continuation_token,
            next_continuation_token: if page.truncated { page.last } else { None },
            start_after: i.start_after,
            contents: Some(page.contents),
            common_prefixes: Some(page.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
            ..Default::default()
        })
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> R<ListObjectsOutput> {
        self.enter("ListObjects").await?;
        let i = req.input;
        let max = i.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let page = self.list_page(&i.bucket, i.prefix.as_deref(), i.delimiter.as_deref(), max, i.marker.as_deref())?;
        // As on AWS, NextMarker is only sent when a delimiter was given; without one the
        // client continues after the last key.
        let next_marker = if page.truncated && i.delimiter.is_some() { page.last } else { None };
        ok(ListObjectsOutput {
            name: Some(i.bucket),
            prefix: i.prefix,
            delimiter: i.delimiter,
            marker: i.marker,
            max_keys: Some(max as i32),
            is_truncated: Some(page.truncated),
            next_marker,
            contents: Some(page.contents),
            common_prefixes: Some(page.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
            ..Default::default()
        })
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> R<CreateMultipartUploadOutput> {
        self.enter("CreateMultipartUpload").await?;
        let i = req.input;
        if !self.data.lock().buckets.contains_key(&i.bucket) {
            return Err(no_bucket(&i.bucket));
        }
        let id = format!("mpu-{}", self.next_upload.fetch_add(1, Ordering::Relaxed));
        self.data.lock().uploads.insert(
            id.clone(),
            Upload {
                bucket: i.bucket.clone(),
                key: i.key.clone(),
                metadata: i.metadata.unwrap_or_default(),
                content_type: i.content_type.map(|c| c.to_string()),
                parts: BTreeMap::new(),
            },
        );
        ok(CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(id),
            ..Default::default()
        })
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> R<UploadPartOutput> {
        self.enter("UploadPart").await?;
        self.note_payload_signing(&req.headers);
        let i = req.input;
        let data = read_body(i.body).await?;
        let etag = md5_hex(&data);
        let mut d = self.data.lock();
        let up = d.uploads.get_mut(&i.upload_id).ok_or_else(|| no_upload(&i.upload_id))?;
        up.parts.insert(i.part_number, (data, etag.clone()));
        ok(UploadPartOutput { e_tag: Some(ETag::Strong(etag)), ..Default::default() })
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> R<CompleteMultipartUploadOutput> {
        self.enter("CompleteMultipartUpload").await?;
        let i = req.input;
        let up = self.data.lock().uploads.remove(&i.upload_id).ok_or_else(|| no_upload(&i.upload_id))?;
        if up.bucket != i.bucket || up.key != i.key {
            return Err(no_upload(&i.upload_id));
        }
        let wanted = i.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        let mut data = BytesMut::new();
        let mut md5s = Vec::new();
        let mut prev = 0;
        for (n, p) in wanted.iter().enumerate() {
            let num = p.part_number.unwrap_or(0);
            let (bytes, etag) = up.parts.get(&num).ok_or_else(|| {
                S3Error::with_message(S3ErrorCode::InvalidPart, format!("part {num} was not uploaded"))
            })?;
            if num <= prev {
                return Err(S3Error::with_message(S3ErrorCode::InvalidPartOrder, "parts must be in ascending order"));
            }
            if p.e_tag.as_ref().is_some_and(|e| e.value().trim_matches('"') != etag) {
                return Err(S3Error::with_message(S3ErrorCode::InvalidPart, format!("part {num}: ETag mismatch")));
            }
            if n + 1 < wanted.len() && bytes.len() < 5 * 1024 * 1024 {
                return Err(S3Error::with_message(
                    S3ErrorCode::EntityTooSmall,
                    format!("part {num} is smaller than 5 MiB and not the last"),
                ));
            }
            prev = num;
            md5s.extend_from_slice(&hex::decode(etag).unwrap_or_default());
            data.extend_from_slice(bytes);
        }
        let etag = format!("{}-{}", md5_hex(&md5s), wanted.len());
        self.store(&i.bucket, &i.key, data.freeze(), up.metadata, up.content_type, etag.clone())?;
        ok(CompleteMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        })
    }

    async fn upload_part_copy(&self, req: S3Request<UploadPartCopyInput>) -> R<UploadPartCopyOutput> {
        self.enter("UploadPartCopy").await?;
        let i = req.input;
        let CopySource::Bucket { bucket, key, .. } = &i.copy_source else {
            return Err(S3Error::with_message(S3ErrorCode::NotImplemented, "access point copy sources"));
        };
        let src = self.object(bucket, key)?;
        let size = src.data.len() as u64;
        let (first, last) = match i.copy_source_range.as_deref() {
            None => (0, size.saturating_sub(1)),
            Some(r) => {
                let bad = || {
                    S3Error::with_message(S3ErrorCode::InvalidArgument, format!("bad x-amz-copy-source-range {r:?}"))
                };
                let (a, b) = r.strip_prefix("bytes=").and_then(|x| x.split_once('-')).ok_or_else(bad)?;
                let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b >= size {
                    return Err(bad());
                }
                (a, b)
            }
        };
        let data = src.data.slice(first as usize..=last as usize);
        let etag = md5_hex(&data);
        let mut d = self.data.lock();
        let up = d.uploads.get_mut(&i.upload_id).ok_or_else(|| no_upload(&i.upload_id))?;
        up.parts.insert(i.part_number, (data, etag.clone()));
        ok(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult { e_tag: Some(ETag::Strong(etag)), ..Default::default() }),
            ..Default::default()
        })
    }

    async fn abort_multipart_upload(&self, req: S3Request<AbortMultipartUploadInput>) -> R<AbortMultipartUploadOutput> {
        self.enter("AbortMultipartUpload").await?;
        if self.data.lock().uploads.remove(&req.input.upload_id).is_none() {
            return Err(no_upload(&req.input.upload_id));
        }
        ok(AbortMultipartUploadOutput::default())
    }
}
