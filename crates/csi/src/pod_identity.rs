//! Pod identity: a volume whose keys come from the pod's own service account instead of a
//! Secret (`authenticationSource: pod`, `roleArn`). The CSIDriver asks kubelet for a token
//! with audience `sts.amazonaws.com` (`tokenRequests`, the credential-rotation overlay);
//! kubelet passes it in the publish's volume context and publishes again before it
//! expires (`requiresRepublish`). Each publish exchanges it with STS for temporary keys
//! that go to the running FUSE server; tokens and keys never reach a log or a file outside
//! the secrets tmpfs. A volume is mounted on a node for one service account: a pod running
//! as another one cannot share that mount.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{CsiError, CsiResult};

/// The volume-context key kubelet puts service-account tokens under.
pub const TOKENS_ATTRIBUTE: &str = "csi.storage.k8s.io/serviceAccount.tokens";
/// The token audience s3vol asks for with AWS-style STS (the CSIDriver's `tokenRequests`).
pub const AUDIENCE: &str = "sts.amazonaws.com";
/// The token audience for Alibaba Cloud RRSA (`AssumeRoleWithOIDC`).
pub const ALIBABA_AUDIENCE: &str = "sts.aliyuncs.com";

/// Which role a pod-identity volume assumes, and through which STS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    /// Role to assume (`arn:aws:iam::123456789012:role/app`).
    pub role_arn: String,
    /// STS endpoint; `None`: AWS's regional endpoint (Alibaba's global one with RRSA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_endpoint: Option<String>,
    /// Alibaba Cloud RRSA: the cluster's OIDC provider (`acs:ram::ACCOUNT:oidc-provider/NAME`);
    /// the exchange is then `AssumeRoleWithOIDC` with a token for [`ALIBABA_AUDIENCE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc_provider_arn: Option<String>,
    /// Region the STS request is signed for.
    pub region: String,
}

impl PodIdentity {
    /// Reads `authenticationSource`, `roleArn` and `stsEndpoint` from volume attributes
    /// or StorageClass parameters (`what` names which, for errors).
    pub fn from_attributes(ctx: &HashMap<String, String>, region: &str, what: &str) -> CsiResult<Option<Self>> {
        let source = ctx.get("authenticationSource").map(String::as_str).unwrap_or("secret");
        let role = ctx.get("roleArn").filter(|r| !r.is_empty());
        match source {
            "secret" | "" => {
                if role.is_some() {
                    return Err(CsiError::invalid(format!(
                        "{what} roleArn is set but authenticationSource is not \"pod\"; set authenticationSource: pod to use the pod's service account"
                    )));
                }
                Ok(None)
            }
            "pod" => {
                let role = role.ok_or_else(|| {
                    CsiError::invalid(format!(
                        "{what} authenticationSource=pod needs roleArn (the role the pod's service account may assume)"
                    ))
                })?;
                let oidc_provider_arn = ctx.get("oidcProviderArn").filter(|p| !p.is_empty()).cloned();
                match &oidc_provider_arn {
                    None if !role.starts_with("arn:") => {
                        return Err(CsiError::invalid(format!(
                            "{what} roleArn={role:?} is not an ARN (arn:aws:iam::ACCOUNT:role/NAME; an Alibaba RAM role acs:ram::ACCOUNT:role/NAME needs oidcProviderArn too)"
                        )))
                    }
                    Some(p) if !role.starts_with("acs:ram::") || !p.starts_with("acs:ram::") => {
                        return Err(CsiError::invalid(format!(
                            "{what} oidcProviderArn={p:?} with roleArn={role:?}: Alibaba RRSA needs both as RAM ARNs (acs:ram::ACCOUNT:role/NAME, acs:ram::ACCOUNT:oidc-provider/NAME)"
                        )))
                    }
                    _ => {}
                }
                let sts_endpoint = ctx
                    .get("stsEndpoint")
                    .filter(|e| !e.is_empty())
                    .map(|e| crate::volume::normalize_endpoint(e, &format!("{what} stsEndpoint")))
                    .transpose()?;
                Ok(Some(PodIdentity {
                    role_arn: role.clone(),
                    sts_endpoint,
                    region: region.to_string(),
                    oidc_provider_arn,
                }))
            }
            other => Err(CsiError::invalid(format!("{what} authenticationSource={other:?}: expected secret or pod"))),
        }
    }

    /// The pod's service account, `namespace/name`, from the pod-info attributes.
    pub fn subject(ctx: &HashMap<String, String>) -> CsiResult<String> {
        let get = |k: &str| ctx.get(k).filter(|v| !v.is_empty());
        match (get("csi.storage.k8s.io/pod.namespace"), get("csi.storage.k8s.io/serviceAccount.name")) {
            (Some(ns), Some(sa)) => Ok(format!("{ns}/{sa}")),
            _ => Err(CsiError::invalid(
                "a pod-identity volume needs the pod's namespace and service account (CSIDriver podInfoOnMount: true)",
            )),
        }
    }

    /// The audience of the token this volume's STS takes.
    pub fn audience(&self) -> &'static str {
        if self.oidc_provider_arn.is_some() {
            ALIBABA_AUDIENCE
        } else {
            AUDIENCE
        }
    }

    /// The pod's token for this volume's audience, from the publish's volume context.
    pub fn token(&self, ctx: &HashMap<String, String>) -> CsiResult<String> {
        let audience = self.audience();
        let missing = || {
            CsiError::FailedPrecondition(format!(
                "kubelet sent no service-account token for audience {audience}: the CSIDriver needs tokenRequests with that audience (deploy/kubernetes/overlays/credential-rotation)"
            ))
        };
        let raw = ctx.get(TOKENS_ATTRIBUTE).ok_or_else(missing)?;
        let tokens: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| CsiError::invalid(format!("{TOKENS_ATTRIBUTE} is not JSON ({e})")))?;
        tokens[audience]["token"].as_str().filter(|t| !t.is_empty()).map(str::to_string).ok_or_else(missing)
    }

    /// Exchanges the pod's token for temporary keys.
    pub async fn exchange(&self, subject: &str, token: &str) -> CsiResult<s3vol_store::StaticCredentials> {
        // STS session names allow [\w+=,.@-]{2,64}: the service account, made to fit.
        let mut session: String = format!("s3vol.{}", subject.replace('/', "."))
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) { c } else { '-' })
            .collect();
        session.truncate(64);
        let temp = match &self.oidc_provider_arn {
            Some(provider) => {
                let req = s3vol_store::OidcRequest {
                    endpoint: self.sts_endpoint.clone(),
                    role_arn: self.role_arn.clone(),
                    oidc_provider_arn: provider.clone(),
                    session_name: session,
                };
                s3vol_store::assume_role_with_oidc(&req, token).await?
            }
            None => {
                let req = s3vol_store::WebIdentityRequest {
                    endpoint: self.sts_endpoint.clone(),
                    region: self.region.clone(),
                    role_arn: self.role_arn.clone(),
                    session_name: session,
                };
                s3vol_store::assume_role_with_web_identity(&req, token).await?
            }
        };
        tracing::info!(subject, role = %self.role_arn, expires_at = ?temp.expires_at, "service-account token exchanged for temporary keys");
        Ok(temp.credentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn attributes_are_checked_and_named() {
        assert_eq!(PodIdentity::from_attributes(&map(&[]), "us-east-1", "volume attribute").unwrap(), None);
        let p = PodIdentity::from_attributes(
            &map(&[
                ("authenticationSource", "pod"),
                ("roleArn", "arn:aws:iam::1:role/r"),
                ("stsEndpoint", "http://sts:1"),
            ]),
            "eu-west-1",
            "volume attribute",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (p.role_arn.as_str(), p.sts_endpoint.as_deref(), p.region.as_str()),
            ("arn:aws:iam::1:role/r", Some("http://sts:1"), "eu-west-1")
        );
        for (kv, says) in [
            (vec![("authenticationSource", "pod")], "needs roleArn"),
            (vec![("authenticationSource", "pod"), ("roleArn", "role/r")], "not an ARN"),
            (vec![("authenticationSource", "token")], "\"token\""),
            (vec![("roleArn", "arn:aws:iam::1:role/r")], "authenticationSource"),
            (vec![("authenticationSource", "pod"), ("roleArn", "acs:ram::1:role/r")], "needs oidcProviderArn"),
            (
                vec![
                    ("authenticationSource", "pod"),
                    ("roleArn", "arn:aws:iam::1:role/r"),
                    ("oidcProviderArn", "acs:ram::1:oidc-provider/p"),
                ],
                "RAM ARNs",
            ),
        ] {
            let e = PodIdentity::from_attributes(&map(&kv), "us-east-1", "volume attribute").unwrap_err();
            assert!(e.to_string().contains(says), "{kv:?}: {e}");
        }
    }

    #[test]
    fn token_and_subject_come_from_what_kubelet_sends() {
        let ctx = map(&[
            (
                TOKENS_ATTRIBUTE,
                r#"{"sts.amazonaws.com":{"token":"tok-1","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#,
            ),
            ("csi.storage.k8s.io/pod.namespace", "team-a"),
            ("csi.storage.k8s.io/serviceAccount.name", "app"),
        ]);
        let aws = PodIdentity::from_attributes(
            &map(&[("authenticationSource", "pod"), ("roleArn", "arn:aws:iam::1:role/r")]),
            "us-east-1",
            "volume attribute",
        )
        .unwrap()
        .unwrap();
        assert_eq!(aws.token(&ctx).unwrap(), "tok-1");
        assert_eq!(PodIdentity::subject(&ctx).unwrap(), "team-a/app");
        let other_audience = map(&[(TOKENS_ATTRIBUTE, r#"{"vault":{"token":"t"}}"#)]);
        assert!(aws.token(&other_audience).unwrap_err().to_string().contains("tokenRequests"));
        // Alibaba RRSA takes the token kubelet made for sts.aliyuncs.com.
        let rrsa = PodIdentity::from_attributes(
            &map(&[
                ("authenticationSource", "pod"),
                ("roleArn", "acs:ram::1:role/r"),
                ("oidcProviderArn", "acs:ram::1:oidc-provider/ack-rrsa-c1"),
            ]),
            "cn-hangzhou",
            "volume attribute",
        )
        .unwrap()
        .unwrap();
        let both = map(&[(
            TOKENS_ATTRIBUTE,
            r#"{"sts.amazonaws.com":{"token":"aws-tok"},"sts.aliyuncs.com":{"token":"ali-tok"}}"#,
        )]);
        assert_eq!(rrsa.token(&both).unwrap(), "ali-tok");
        assert!(rrsa.token(&ctx).unwrap_err().to_string().contains("sts.aliyuncs.com"));
        assert!(PodIdentity::subject(&map(&[])).unwrap_err().to_string().contains("podInfoOnMount"));
    }
}
