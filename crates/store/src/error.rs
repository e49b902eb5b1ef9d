use std::fmt;

/// What went wrong, in the terms callers act on (retry, map to an errno or gRPC code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The key does not exist.
    NotFound,
    /// The bucket does not exist (S3 `NoSuchBucket`).
    NoSuchBucket,
    /// The credentials were refused (403: AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch...).
    AccessDenied,
    /// The store asked us to slow down (503 SlowDown, 429); safe to retry.
    Throttled,
    /// The endpoint could not be reached or timed out; the store may be down.
    Unavailable,
    /// The request was malformed for this store (bad bucket name, bad range...).
    InvalidArgument,
    /// The resource exists in a conflicting state (bucket not empty, name taken by another owner).
    Conflict,
    /// The store does not implement the operation (e.g. multi-object delete).
    NotImplemented,
    /// Anything else, including 5xx errors the store did not explain.
    Other,
}

impl ErrorKind {
    /// Whether repeating the same request later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Throttled | ErrorKind::Unavailable)
    }
}

/// A store failure with the store's own error code kept, so users see `InvalidAccessKeyId`
/// rather than a bare "403".
#[derive(Debug, Clone, thiserror::Error)]
pub struct StoreError {
    /// Classified cause.
    pub kind: ErrorKind,
    /// The store's error code (`NoSuchBucket`, `SignatureDoesNotMatch`...), when it sent one.
    pub code: Option<String>,
    /// What we were doing and what the store said.
    pub message: String,
}

impl StoreError {
    /// Builds an error with no store code.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StoreError { kind, code: None, message: message.into() }
    }

    /// Builds an error that carries the store's error code.
    pub fn with_code(kind: ErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError { kind, code: Some(code.into()), message: message.into() }
    }

    /// Shorthand for a missing key.
    pub fn not_found(what: impl fmt::Display) -> Self {
        StoreError::with_code(ErrorKind::NotFound, "NoSuchKey", format!("{what}: no such key"))
    }

    /// Shorthand for a missing bucket.
    pub fn no_such_bucket(bucket: &str) -> Self {
        StoreError::with_code(ErrorKind::NoSuchBucket, "NoSuchBucket", format!("bucket {bucket:?} does not exist"))
    }

    /// Prefixes the message with the operation, keeping kind and code.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// Whether this is a missing key (not a missing bucket).
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) if !self.message.contains(code.as_str()) => {
                write!(f, "{} ({code})", self.message)
            }
            _ => f.write_str(&self.message),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::AccessDenied,
            _ => ErrorKind::Other,
        };
        StoreError::new(kind, e.to_string())
    }
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;
