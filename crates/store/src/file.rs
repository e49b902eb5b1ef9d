use std::io::ErrorKind as IoKind;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::listing;
use crate::store::{clamp_range, GetResponse, ObjectStore};
use crate::types::{CompletedPart, ListPage, ListRequest, ListedObject, ObjectMeta, PutOptions};

/// Name of the per-bucket folder holding metadata sidecars and multipart parts; never listed.
const RESERVED: &str = ".s3vol";
/// Read chunk size for streaming GETs.
const CHUNK: usize = 1 << 20;

/// A local directory used as an object store: the embedded default, so s3vol runs with
/// no S3 at all. Buckets are sub-directories of the root (the empty bucket name is the
/// root itself); keys are paths; `dir/` markers are directories; user metadata lives in
/// sidecar files under `.s3vol/`.
///
/// Unlike S3, a key cannot be both an object and a prefix (`a` and `a/b`); such a write
/// fails with `Conflict`.
pub struct FileStore {
    root: PathBuf,
    next_id: AtomicU64,
}

impl FileStore {
    /// A store rooted at `root`, which must exist.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStore { root: root.into(), next_id: AtomicU64::new(0) }
    }

    fn bucket_dir(&self, bucket: &str) -> StoreResult<PathBuf> {
        if bucket.is_empty() {
            return Ok(self.root.clone());
        }
        if bucket.contains('/') || bucket == "." || bucket == ".." || bucket == RESERVED {
            return Err(StoreError::with_code(
                ErrorKind::InvalidArgument,
                "InvalidBucketName",
                format!("invalid bucket name {bucket:?}"),
            ));
        }
        Ok(self.root.join(bucket))
    }

    async fn existing_bucket(&self, bucket: &str) -> StoreResult<PathBuf> {
        let dir = self.bucket_dir(bucket)?;
        match tokio::fs::metadata(&dir).await {
            Ok(m) if m.is_dir() => Ok(dir),
            _ => Err(StoreError::no_such_bucket(bucket)),
        }
    }

    fn object_path(dir: &Path, key: &str) -> StoreResult<PathBuf> {
        let rel = Path::new(key.trim_end_matches('/'));
        let bad = key.is_empty()
            || key.starts_with('/')
            || key.contains("//")
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
            || rel.components().next().is_some_and(|c| c.as_os_str() == RESERVED);
        if bad {
            return Err(StoreError::with_code(
                ErrorKind::InvalidArgument,
                "InvalidKey",
                format!("key {key:?} cannot be stored in a local directory"),
            ));
        }
        Ok(dir.join(rel))
    }

    fn meta_path(dir: &Path, key: &str) -> PathBuf {
        dir.join(RESERVED).join("meta").join(format!("{key}.meta"))
    }

    async fn write_object(&self, bucket: &str, key: &str, data: &[u8], opts: &PutOptions) -> StoreResult<()> {
        let dir = self.existing_bucket(bucket).await?;
        let path = Self::object_path(&dir, key)?;
        if key.ends_with('/') {
            mkdirs(&path, key).await?;
        } else {
            if let Some(parent) = path.parent() {
                mkdirs(parent, key).await?;
            }
            if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_dir()) {
                return Err(conflict(key));
            }
            let tmp = dir.join(RESERVED).join(format!("tmp-{}", self.next_id.fetch_add(1, Ordering::Relaxed)));
            tokio::fs::create_dir_all(tmp.parent().expect("tmp has a parent")).await?;
            tokio::fs::write(&tmp, data).await?;
            tokio::fs::rename(&tmp, &path).await?;
        }
        let meta = Self::meta_path(&dir, key);
        tokio::fs::create_dir_all(meta.parent().expect("meta has a parent")).await?;
        tokio::fs::write(&meta, encode_meta(opts)).await?;
        Ok(())
    }

    async fn read_meta(dir: &Path, key: &str) -> PutOptions {
        match tokio::fs::read_to_string(Self::meta_path(dir, key)).await {
            Ok(s) => decode_meta(&s),
            Err(_) => PutOptions::default(),
        }
    }

    async fn meta_of(&self, bucket: &str, key: &str) -> StoreResult<ObjectMeta> {
        let dir = self.existing_bucket(bucket).await?;
        let path = Self::object_path(&dir, key)?;
        let m = tokio::fs::metadata(&path).await.map_err(|_| StoreError::not_found(key))?;
        // `dir/` is an object only as a directory; `dir` is an object only as a file.
        if m.is_dir() != key.ends_with('/') {
            return Err(StoreError::not_found(key));
        }
        if m.is_dir() && !tokio::fs::try_exists(Self::meta_path(&dir, key)).await.unwrap_or(false) {
            // A directory that only exists because of its children is not a marker,
            // unless it is empty (then it is all that's left of a marker).
            if tokio::fs::read_dir(&path).await?.next_entry().await?.is_some() {
                return Err(StoreError::not_found(key));
            }
        }
        let opts = Self::read_meta(&dir, key).await;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: if m.is_dir() { 0 } else { m.len() },
            last_modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            etag: file_etag(&m),
            metadata: opts.metadata,
            content_type: opts.content_type,
        })
    }

    /// Removes empty directories above `path` that are not markers, the way implicit
    /// prefixes vanish in S3 with their last object.
    async fn prune(&self, dir: &Path, path: &Path) {
        let mut cur = path.parent().map(Path::to_path_buf);
        while let Some(p) = cur {
            if p == dir {
                break;
            }
            let Ok(rel) = p.strip_prefix(dir) else { break };
            let marker = format!("{}/", rel.to_string_lossy());
            if tokio::fs::try_exists(Self::meta_path(dir, &marker)).await.unwrap_or(true) {
                break;
            }
            if tokio::fs::remove_dir(&p).await.is_err() {
                break;
            }
            cur = p.parent().map(Path::to_path_buf);
        }
    }
}

async fn mkdirs(path: &Path, key: &str) -> StoreResult<()> {
    match tokio::fs::create_dir_all(path).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), IoKind::AlreadyExists | IoKind::NotADirectory) => Err(conflict(key)),
        Err(e) => Err(e.into()),
    }
}

fn conflict(key: &str) -> StoreError {
    StoreError::new(
        ErrorKind::Conflict,
        format!("{key}: a local directory store cannot hold a key that is both an object and a prefix"),
    )
}

fn file_etag(m: &std::fs::Metadata) -> String {
    let mtime = m.modified().ok().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).unwrap_or_default();
    format!("{:x}-{:x}", m.len(), mtime.as_nanos())
}

fn encode_meta(opts: &PutOptions) -> String {
    let mut out = String::new();
    if let Some(ct) = &opts.content_type {
        out.push_str(&format!("content-type={}\n", urlencoding::encode(ct)));
    }
    for (k, v) in &opts.metadata {
        out.push_str(&format!("meta.{}={}\n", urlencoding::encode(k), urlencoding::encode(v)));
    }
    out
}

fn decode_meta(s: &str) -> PutOptions {
    let mut opts = PutOptions::default();
    for line in s.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = urlencoding::decode(v).map(|c| c.into_owned()).unwrap_or_default();
        if k == "content-type" {
            opts.content_type = Some(v);
        } else if let Some(name) = k.strip_prefix("meta.") {
            let name = urlencoding::decode(name).map(|c| c.into_owned()).unwrap_or_default();
            opts.metadata.insert(name, v);
        }
    }
    opts
}

/// Collects every key under `path` (recursively, or one level when `one_level`), with
/// the key prefix `base`, into `out`.
fn walk(root: &Path, path: &Path, base: &str, one_level: bool, out: &mut Vec<ListedObject>) -> std::io::Result<()> {
    let rd = match std::fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if matches!(e.kind(), IoKind::NotFound | IoKind::NotADirectory) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if base.is_empty() && name == RESERVED {
            continue;
        }
        let m = entry.metadata()?;
        let key = format!("{base}{name}");
        if m.is_dir() {
            let dir_key = format!("{key}/");
            // A directory is a `dir/` key when listed one level deep, when it is empty, or
            // when it has a marker (its metadata sidecar), as a marker object would be.
            let marker = FileStore::meta_path(root, &dir_key).exists();
            let empty = std::fs::read_dir(entry.path())?.next().is_none();
            if one_level || empty || marker {
                out.push(listed(dir_key.clone(), &m, 0));
            }
            if !one_level {
                walk(root, &entry.path(), &dir_key, false, out)?;
            }
        } else {
            out.push(listed(key, &m, m.len()));
        }
    }
    Ok(())
}

fn listed(key: String, m: &std::fs::Metadata, size: u64) -> ListedObject {
    ListedObject { key, size, last_modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH), etag: file_etag(m) }
}

#[async_trait]
impl ObjectStore for FileStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn head_object(&self, bucket: &str, key: &str) -> StoreResult<ObjectMeta> {
        self.meta_of(bucket, key).await
    }

    async fn get_object(&self, bucket: &str, key: &str, range: Option<Range<u64>>) -> StoreResult<GetResponse> {
        let meta = self.meta_of(bucket, key).await?;
        let r = clamp_range(range, meta.size, key)?;
        if key.ends_with('/') {
            return Ok(GetResponse { meta, body: Box::pin(futures::stream::empty()) });
        }
        let dir = self.existing_bucket(bucket).await?;
        let mut file = tokio::fs::File::open(Self::object_path(&dir, key)?).await?;
        file.seek(std::io::SeekFrom::Start(r.start)).await?;
        let remaining = r.end - r.start;
        let body = futures::stream::unfold((file, remaining), |(mut f, left)| async move {
            if left == 0 {
                return None;
            }
            let mut buf = vec![0u8; (left as usize).min(CHUNK)];
            match f.read(&mut buf).await {
                Ok(0) => Some((Err(StoreError::new(ErrorKind::Other, "object shrank while reading")), (f, 0))),
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), (f, left - n as u64)))
                }
                Err(e) => Some((Err(e.into()), (f, 0))),
            }
        });
        Ok(GetResponse { meta, body: body.boxed() })
    }

    async fn put_object(&self, bucket: &str, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<()> {
        self.write_object(bucket, key, &body, opts).await
    }

    async fn create_multipart(&self, bucket: &str, key: &str, opts: &PutOptions) -> StoreResult<String> {
        let dir = self.existing_bucket(bucket).await?;
        Self::object_path(&dir, key)?;
        let id = format!("{}-{}", std::process::id(), self.next_id.fetch_add(1, Ordering::Relaxed));
        let up = dir.join(RESERVED).join("uploads").join(&id);
        tokio::fs::create_dir_all(&up).await?;
        tokio::fs::write(up.join("opts"), encode_meta(opts)).await?;
        Ok(id)
    }

    async fn upload_part(
        &self,
        bucket: &str,
        _key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> StoreResult<CompletedPart> {
        let dir = self.existing_bucket(bucket).await?;
        let up = upload_dir(&dir, upload_id).await?;
        tokio::fs::write(up.join(format!("part-{part_number}")), &body).await?;
        Ok(CompletedPart { part_number, etag: crate::memory::md5_hex(&body) })
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> StoreResult<()> {
        let dir = self.existing_bucket(bucket).await?;
        let up = upload_dir(&dir, upload_id).await?;
        let opts = decode_meta(&tokio::fs::read_to_string(up.join("opts")).await.unwrap_or_default());
        let path = Self::object_path(&dir, key)?;
        if let Some(parent) = path.parent() {
            mkdirs(parent, key).await?;
        }
        let assembled = up.join("assembled");
        {
            let mut out = tokio::fs::File::create(&assembled).await?;
            for p in &parts {
                let mut part =
                    tokio::fs::File::open(up.join(format!("part-{}", p.part_number))).await.map_err(|_| {
                        StoreError::with_code(
                            ErrorKind::InvalidArgument,
                            "InvalidPart",
                            format!("part {} was not uploaded", p.part_number),
                        )
                    })?;
                tokio::io::copy(&mut part, &mut out).await?;
            }
            out.sync_all().await?;
        }
        tokio::fs::rename(&assembled, &path).await?;
        let meta = Self::meta_path(&dir, key);
        tokio::fs::create_dir_all(meta.parent().expect("meta has a parent")).await?;
        tokio::fs::write(&meta, encode_meta(&opts)).await?;
        tokio::fs::remove_dir_all(&up).await?;
        Ok(())
    }

    async fn abort_multipart(&self, bucket: &str, _key: &str, upload_id: &str) -> StoreResult<()> {
        let dir = self.existing_bucket(bucket).await?;
        if let Ok(up) = upload_dir(&dir, upload_id).await {
            tokio::fs::remove_dir_all(&up).await?;
        }
        Ok(())
    }

    async fn list(&self, bucket: &str, req: &ListRequest) -> StoreResult<ListPage> {
        let dir = self.existing_bucket(bucket).await?;
        let one_level = req.delimiter.as_deref() == Some("/");
        // Walk from the deepest directory that contains every key with this prefix.
        let base = match req.prefix.rfind('/') {
            Some(i) => req.prefix[..=i].to_string(),
            None => String::new(),
        };
        let start = if base.is_empty() { dir.clone() } else { Self::object_path(&dir, &base)? };
        let req = req.clone();
        let root = dir.clone();
        let mut entries = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<ListedObject>> {
            let mut out = Vec::new();
            // The directory the walk starts in is itself the key `base/`, as a marker
            // object would be, when it has a marker or is empty.
            if !base.is_empty() {
                if let Ok(m) = std::fs::metadata(&start) {
                    let empty = m.is_dir() && std::fs::read_dir(&start)?.next().is_none();
                    if m.is_dir() && (empty || FileStore::meta_path(&root, &base).exists()) {
                        out.push(listed(base.clone(), &m, 0));
                    }
                }
            }
            walk(&root, &start, &base, one_level, &mut out)?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::new(ErrorKind::Other, e.to_string()))??;
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing::page(&entries, &req))
    }

    async fn copy_object(
        &self,
        bucket: &str,
        src_key: &str,
        dst_key: &str,
        replace: Option<&PutOptions>,
    ) -> StoreResult<()> {
        let dir = self.existing_bucket(bucket).await?;
        self.meta_of(bucket, src_key).await?;
        let opts = match replace {
            Some(o) if !o.keep_metadata => o.clone(),
            _ => Self::read_meta(&dir, src_key).await,
        };
        let data = if src_key.ends_with('/') {
            Vec::new()
        } else {
            tokio::fs::read(Self::object_path(&dir, src_key)?).await?
        };
        self.write_object(bucket, dst_key, &data, &opts).await
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> StoreResult<()> {
        let dir = self.existing_bucket(bucket).await?;
        let path = Self::object_path(&dir, key)?;
        let removed = if key.ends_with('/') {
            // A marker: drop the marker; the directory stays while it has children.
            let _ = tokio::fs::remove_file(Self::meta_path(&dir, key)).await;
            match tokio::fs::remove_dir(&path).await {
                Ok(()) => true,
                Err(e) if e.kind() == IoKind::NotFound => false,
                Err(_) => false,
            }
        } else {
            match tokio::fs::symlink_metadata(&path).await {
                Ok(m) if m.is_file() => {
                    tokio::fs::remove_file(&path).await?;
                    true
                }
                _ => false,
            }
        };
        if !key.ends_with('/') {
            let _ = tokio::fs::remove_file(Self::meta_path(&dir, key)).await;
        }
        if removed || key.ends_with('/') {
            self.prune(&dir, &path).await;
        }
        Ok(())
    }

    async fn create_bucket(&self, bucket: &str) -> StoreResult<()> {
        let dir = self.bucket_dir(bucket)?;
        match tokio::fs::create_dir(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == IoKind::AlreadyExists => Err(StoreError::with_code(
                ErrorKind::Conflict,
                "BucketAlreadyOwnedByYou",
                format!("bucket {bucket:?} already exists"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn head_bucket(&self, bucket: &str) -> StoreResult<()> {
        self.existing_bucket(bucket).await.map(|_| ())
    }

    async fn list_buckets(&self) -> StoreResult<Vec<String>> {
        let mut names = Vec::new();
        let mut rd = tokio::fs::read_dir(&self.root).await?;
        while let Some(e) = rd.next_entry().await? {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().await?.is_dir() && self.bucket_dir(&name).is_ok() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    async fn delete_bucket(&self, bucket: &str) -> StoreResult<()> {
        let dir = self.existing_bucket(bucket).await?;
        let mut rd = tokio::fs::read_dir(&dir).await?;
        while let Some(e) = rd.next_entry().await? {
            if e.file_name() != RESERVED {
                return Err(StoreError::with_code(
                    ErrorKind::Conflict,
                    "BucketNotEmpty",
                    format!("bucket {bucket:?} is not empty"),
                ));
            }
        }
        tokio::fs::remove_dir_all(&dir).await?;
        Ok(())
    }
}

async fn upload_dir(dir: &Path, upload_id: &str) -> StoreResult<PathBuf> {
    let up = dir.join(RESERVED).join("uploads").join(upload_id);
    if upload_id.contains('/') || !tokio::fs::try_exists(&up).await.unwrap_or(false) {
        return Err(StoreError::with_code(
            ErrorKind::NotFound,
            "NoSuchUpload",
            format!("multipart upload {upload_id} does not exist"),
        ));
    }
    Ok(up)
}
