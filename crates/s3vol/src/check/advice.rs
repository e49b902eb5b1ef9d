//! What to do about a store error, in one line, by the store's own error code first and
//! the kind of failure second.

use s3vol_store::{ErrorKind, StoreError};

/// What the failed step was trying to do, for the advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// HeadBucket.
    Bucket,
    /// A LIST of the prefix.
    List,
    /// PUT, GET, DELETE of a probe object.
    Write,
    /// A multipart upload.
    Multipart,
    /// CopyObject.
    Copy,
}

/// The fix for `e`, met while doing `action` on `bucket`/`prefix`.
pub fn fix_for(e: &StoreError, action: Action, bucket: &str, prefix: &str) -> String {
    let code = e.code.as_deref().unwrap_or("");
    let arn = format!("arn:aws:s3:::{bucket}/{prefix}*");
    match code {
        "NoCredentials" => {
            return "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a web identity; for a CSI volume put accessKeyID/secretAccessKey in its node secret (--secret-file)".into()
        }
        "InvalidAccessKeyId" => {
            return "the store does not know this access key: check the key, and that the endpoint belongs to the provider that issued it".into()
        }
        "SignatureDoesNotMatch" => {
            return "the secret key does not belong to this access key (or a proxy rewrites requests): check secretAccessKey".into()
        }
        "RequestTimeTooSkewed" => {
            return "this machine's clock is too far from the store's: synchronize it (chrony, systemd-timesyncd); see the clock step".into()
        }
        "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" => {
            return "the session token expired or is invalid: refresh the temporary credentials".into()
        }
        "NoSuchBucket" => {
            return format!("bucket {bucket:?} does not exist at this endpoint: check its name and the endpoint/region, or create it")
        }
        "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException" | "301" => {
            return "the bucket is in another region: pass its region (--region, or the volume's region attribute)".into()
        }
        "NotImplemented" => return "this store does not implement the operation; see docs/SEMANTICS.md for what needs it".into(),
        _ => {}
    }
    match (e.kind, action) {
        (ErrorKind::AccessDenied, Action::Bucket) => {
            "HeadBucket was refused; if the listing step passes, the policy only allows a prefix and mounts still work".into()
        }
        (ErrorKind::AccessDenied, Action::List) => format!(
            "allow s3:ListBucket on arn:aws:s3:::{bucket} (with the condition s3:prefix = {prefix:?}* for a prefix)"
        ),
        (ErrorKind::AccessDenied, Action::Write) => format!(
            "allow s3:PutObject, s3:GetObject and s3:DeleteObject on {arn}, or mount read-only (-o ro) and check with --read-only"
        ),
        (ErrorKind::AccessDenied, Action::Multipart) => format!(
            "allow s3:PutObject and s3:AbortMultipartUpload on {arn}: files larger than part_size are uploaded in parts"
        ),
        (ErrorKind::AccessDenied, Action::Copy) => {
            format!("allow s3:GetObject and s3:PutObject on {arn}: rename, chmod and chown copy objects")
        }
        (ErrorKind::NotImplemented, Action::Multipart) => {
            "this store has no multipart uploads: files larger than part_size cannot be written".into()
        }
        (ErrorKind::NotImplemented, Action::Copy) => {
            "this store cannot copy objects: rename, chmod and chown will fail with EIO".into()
        }
        (ErrorKind::Unavailable, _) => {
            "the endpoint did not answer in time: see the connect step; check proxies (HTTPS_PROXY) and firewalls".into()
        }
        (ErrorKind::Throttled, _) => "the store throttles requests (SlowDown): retry later or raise its limits".into(),
        _ => "the store's answer is above; see docs/TROUBLESHOOTING.md".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_win_over_kinds() {
        let e = StoreError::with_code(ErrorKind::AccessDenied, "RequestTimeTooSkewed", "x");
        assert!(fix_for(&e, Action::List, "b", "p/").contains("clock"));
        let e = StoreError::with_code(ErrorKind::AccessDenied, "AccessDenied", "x");
        assert!(fix_for(&e, Action::List, "b", "p/").contains("s3:ListBucket on arn:aws:s3:::b"));
        assert!(fix_for(&e, Action::Write, "b", "p/").contains("arn:aws:s3:::b/p/*"));
    }
}
