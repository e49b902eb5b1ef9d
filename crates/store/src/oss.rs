//! Alibaba OSS answers its S3-compatible API with `x-oss-meta-*` user metadata for
//! objects written by ossfs or the OSS SDKs. The S3 SDK only reads `x-amz-meta-*`, so this
//! interceptor copies the OSS names over before a response is parsed; objects written by
//! ossfs then show their mode, owner and mtime like s3fs-written ones.

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;

/// Maps `x-oss-meta-NAME` response headers to `x-amz-meta-NAME` (unless already present).
#[derive(Debug, Default)]
pub(crate) struct OssMetadataHeaders;

impl Intercept for OssMetadataHeaders {
    fn name(&self) -> &'static str {
        "OssMetadataHeaders"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let headers = context.response_mut().headers_mut();
        let oss: Vec<(String, String)> = headers
            .iter()
            .filter_map(|(k, v)| {
                let name = k.to_ascii_lowercase();
                name.strip_prefix("x-oss-meta-").map(|n| (format!("x-amz-meta-{n}"), v.to_string()))
            })
            .collect();
        for (k, v) in oss {
            if !headers.contains_key(&k) {
                headers.insert(k, v);
            }
        }
        Ok(())
    }
}
