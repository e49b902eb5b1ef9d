use std::collections::BTreeMap;
use std::time::SystemTime;

/// What a HEAD (or a GET) tells about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time as the store reports it.
    pub last_modified: SystemTime,
    /// ETag without quotes; empty when the store did not send one.
    pub etag: String,
    /// User metadata, keys lower-case and without the `x-amz-meta-` prefix.
    pub metadata: BTreeMap<String, String>,
    /// Content-Type, when known.
    pub content_type: Option<String>,
}

/// One entry of a listing page. Listings carry no user metadata, only what S3 lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub last_modified: SystemTime,
    /// ETag without quotes, empty when the store omits it (some do in listings).
    pub etag: String,
}

/// A ListObjectsV2 request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRequest {
    /// Only keys starting with this.
    pub prefix: String,
    /// Group keys by this delimiter into common prefixes (usually `/`).
    pub delimiter: Option<String>,
    /// Continuation token from the previous page.
    pub continuation: Option<String>,
    /// Start listing after this key.
    pub start_after: Option<String>,
    /// Page size (the store may return fewer); `None` = store default (1000).
    pub max_keys: Option<u32>,
}

impl ListRequest {
    /// A listing of everything under `prefix`, no delimiter.
    pub fn recursive(prefix: impl Into<String>) -> Self {
        ListRequest { prefix: prefix.into(), ..Default::default() }
    }

    /// A one-level listing of `prefix` with `/` as delimiter.
    pub fn directory(prefix: impl Into<String>) -> Self {
        ListRequest { prefix: prefix.into(), delimiter: Some("/".into()), ..Default::default() }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects in key order.
    pub objects: Vec<ListedObject>,
    /// Common prefixes (each ends with the delimiter), in order.
    pub common_prefixes: Vec<String>,
    /// Token for the next page; `None` when this is the last page.
    pub next_continuation: Option<String>,
}

impl ListPage {
    /// Whether the page holds neither an object nor a common prefix: with `max_keys` 1 and
    /// a `dir/` prefix, whether nothing is under that directory.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.common_prefixes.is_empty()
    }
}

/// Options for writing an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// User metadata to store with the object.
    pub metadata: BTreeMap<String, String>,
    /// Content-Type header.
    pub content_type: Option<String>,
    /// Storage class (STANDARD, STANDARD_IA...), passed through.
    pub storage_class: Option<String>,
    /// Server-side encryption (`AES256`, `aws:kms`), passed through.
    pub sse: Option<String>,
    /// For a copy: keep the source's metadata and content type, apply only the storage
    /// class and encryption (a rename must not move an object to the default class).
    pub keep_metadata: bool,
}

/// A part of a multipart upload, as CompleteMultipartUpload needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    /// 1-based part number.
    pub part_number: i32,
    /// ETag the store returned for the part.
    pub etag: String,
}
