//! Pod identity: a Kubernetes service-account token exchanged for temporary keys with STS
//! `AssumeRoleWithWebIdentity` (AWS IRSA-style; any STS that speaks it: MinIO, Ceph RGW).
//! The call is unsigned: the token is the proof. Neither the token nor the keys are ever
//! logged or put in an error.

use crate::credentials::StaticCredentials;
use crate::error::{ErrorKind, StoreError, StoreResult};

/// What to assume, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebIdentityRequest {
    /// STS endpoint (`https://sts.us-east-1.amazonaws.com`); `None`: AWS's for `region`.
    pub endpoint: Option<String>,
    /// Signing region of the STS endpoint.
    pub region: String,
    /// Role to assume.
    pub role_arn: String,
    /// Session name recorded by STS (who is asking: the pod's service account).
    pub session_name: String,
}

/// Temporary keys and when they expire (unix seconds, if STS said).
#[derive(Debug, Clone)]
pub struct TemporaryCredentials {
    /// The keys, with their session token.
    pub credentials: StaticCredentials,
    /// Expiry in seconds since the epoch.
    pub expires_at: Option<i64>,
}

/// Exchanges `token` for temporary keys.
pub async fn assume_role_with_web_identity(req: &WebIdentityRequest, token: &str) -> StoreResult<TemporaryCredentials> {
    use aws_sdk_sts::config::{BehaviorVersion, Region};
    let mut b = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(req.region.clone()));
    if let Some(e) = &req.endpoint {
        b = b.endpoint_url(e.clone());
    }
    let client = aws_sdk_sts::Client::from_conf(b.build());
    let out = client
        .assume_role_with_web_identity()
        .role_arn(&req.role_arn)
        .role_session_name(&req.session_name)
        .web_identity_token(token)
        .send()
        .await
        .map_err(|e| {
            use aws_sdk_sts::error::ProvideErrorMetadata;
            let code = e.code().map(str::to_string);
            let kind = match code.as_deref() {
                Some("InvalidIdentityToken")
                | Some("ExpiredTokenException")
                | Some("AccessDenied")
                | Some("AccessDeniedException") => ErrorKind::AccessDenied,
                None => ErrorKind::Unavailable,
                _ => ErrorKind::Other,
            };
            let what = e.message().map(str::to_string).unwrap_or_else(|| crate::s3::root_cause(&e));
            let mut err = StoreError::new(
                kind,
                format!(
                    "STS AssumeRoleWithWebIdentity for role {} at {}: {what}",
                    req.role_arn,
                    req.endpoint.as_deref().unwrap_or("the AWS STS endpoint")
                ),
            );
            err.code = code;
            err
        })?;
    let c = out.credentials.ok_or_else(|| StoreError::new(ErrorKind::Other, "STS answered without credentials"))?;
    Ok(TemporaryCredentials {
        credentials: StaticCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: Some(c.session_token),
        },
        expires_at: Some(c.expiration.secs()),
    })
}
