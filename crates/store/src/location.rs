use crate::error::{ErrorKind, StoreError, StoreResult};

/// Which backend a location names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// An S3-compatible endpoint.
    S3,
    /// A local directory (`file:///path`); the path is the store root.
    File(std::path::PathBuf),
}

/// A bucket and prefix, as written on the command line: `s3://bucket/prefix` or
/// `file:///some/dir` (a local directory, served as one bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Backend.
    pub kind: StoreKind,
    /// Bucket name; empty for a `file://` directory (the directory is the bucket).
    pub bucket: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
}

impl Location {
    /// Parses `s3://bucket[/prefix]` or `file:///abs/dir`.
    pub fn parse(url: &str) -> StoreResult<Self> {
        let invalid = |why: &str| {
            StoreError::new(
                ErrorKind::InvalidArgument,
                format!("invalid location {url:?}: {why} (use s3://BUCKET[/PREFIX] or file:///DIR)"),
            )
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("a file:// location needs an absolute path"));
            }
            return Ok(Location { kind: StoreKind::File(path.into()), bucket: String::new(), prefix: String::new() });
        }
        let rest = url.strip_prefix("s3://").ok_or_else(|| invalid("unknown scheme"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("the bucket is empty"));
        }
        // What no S3-compatible store accepts (legacy and relaxed names allow upper case
        // and underscores, so those pass): caught here, before any request.
        if !(3..=255).contains(&bucket.len()) {
            return Err(invalid(&format!(
                "bucket name {bucket:?} must be 3 to 63 characters long (255 for legacy names)"
            )));
        }
        if let Some(c) = bucket.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
            return Err(invalid(&format!(
                "bucket name {bucket:?} contains {c:?}; bucket names are lower-case letters, digits, dots and hyphens"
            )));
        }
        Ok(Location { kind: StoreKind::S3, bucket: bucket.to_string(), prefix: normalize_prefix(prefix) })
    }
}

/// Normalizes a user-given prefix: no leading `/`, no empty segments, a trailing `/`
/// unless empty. `"/"`, `""` and `"a//b"` become `""`, `""` and `"a/b/"`.
pub fn normalize_prefix(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("{}/", parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bucket_names_no_store_accepts_are_refused_by_name() {
        for (url, says) in [
            ("s3://my bucket/x", "' '"),
            ("s3://ab", "3 to 63"),
            ("s3://bucket:with:colons", "':'"),
            ("s3://bucket?x", "'?'"),
        ] {
            let e = Location::parse(url).unwrap_err();
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
        for ok in ["s3://my-bucket.v2/p", "s3://Legacy_Bucket", "s3://abc"] {
            assert!(Location::parse(ok).is_ok(), "{ok}");
        }
    }

    use super::*;

    #[test]
    fn parses_s3_and_file_locations() {
        let l = Location::parse("s3://bkt/x/y").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bkt", "x/y/"));
        assert_eq!(Location::parse("s3://bkt").unwrap().prefix, "");
        let f = Location::parse("file:///tmp/d").unwrap();
        assert_eq!(f.kind, StoreKind::File("/tmp/d".into()));
        let err = Location::parse("http://x").unwrap_err();
        assert!(err.message.contains("http://x"), "{err}");
        assert!(Location::parse("file://rel").is_err());
    }

    #[test]
    fn normalizes_prefixes() {
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("a//b"), "a/b/");
        assert_eq!(normalize_prefix("/a/"), "a/");
    }
}
