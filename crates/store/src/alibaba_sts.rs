//! Alibaba Cloud RRSA: a Kubernetes service-account token exchanged for temporary OSS
//! keys with STS `AssumeRoleWithOIDC` (the RPC-style API at `sts.aliyuncs.com`, version
//! 2015-04-01). Like AWS's web-identity call it is unsigned: the token is the proof. The
//! token and the keys never reach a log or an error.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::credentials::StaticCredentials;
use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::sts::TemporaryCredentials;

/// Alibaba's global STS endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://sts.aliyuncs.com";

/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What to assume, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcRequest {
    /// STS endpoint; `None`: [`DEFAULT_ENDPOINT`].
    pub endpoint: Option<String>,
    /// RAM role to assume (`acs:ram::ACCOUNT:role/NAME`).
    pub role_arn: String,
    /// The cluster's OIDC provider (`acs:ram::ACCOUNT:oidc-provider/NAME`).
    pub oidc_provider_arn: String,
    /// Session name STS records (who is asking).
    pub session_name: String,
}

/// Exchanges `token` for temporary keys (valid one hour).
pub async fn assume_role_with_oidc(req: &OidcRequest, token: &str) -> StoreResult<TemporaryCredentials> {
    let endpoint = req.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT).trim_end_matches('/');
    let what = format!("STS AssumeRoleWithOIDC for role {} at {endpoint}", req.role_arn);
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::new(ErrorKind::Other, format!("{what}: timestamp: {e}")))?;
    let url = format!(
        "{endpoint}/?Action=AssumeRoleWithOIDC&Format=JSON&Version=2015-04-01&Timestamp={}",
        urlencoding::encode(&timestamp)
    );
    let body = [
        ("RoleArn", req.role_arn.as_str()),
        ("OIDCProviderArn", req.oidc_provider_arn.as_str()),
        ("OIDCToken", token),
        ("RoleSessionName", req.session_name.as_str()),
        ("DurationSeconds", "3600"),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", urlencoding::encode(v)))
    .collect::<Vec<_>>()
    .join("&");
    let (status, answer) = match tokio::time::timeout(TIMEOUT, post_form(&url, body)).await {
        Err(_) => return Err(StoreError::new(ErrorKind::Unavailable, format!("{what}: no answer within {TIMEOUT:?}"))),
        Ok(Err(e)) => return Err(StoreError::new(ErrorKind::Unavailable, format!("{what}: {e}"))),
        Ok(Ok(r)) => r,
    };
    parse_answer(&what, status, &answer)
}

/// Reads STS's JSON answer: `Credentials` on success, `Code`/`Message` on failure.
fn parse_answer(what: &str, status: u16, body: &[u8]) -> StoreResult<TemporaryCredentials> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        StoreError::new(ErrorKind::Other, format!("{what}: HTTP {status} with an answer that is not JSON"))
    })?;
    if let Some(code) = v["Code"].as_str() {
        let kind = if code.starts_with("AuthenticationFail") || code.contains("NoPermission") || status == 403 {
            ErrorKind::AccessDenied
        } else {
            ErrorKind::Other
        };
        let msg = v["Message"].as_str().unwrap_or("");
        return Err(StoreError::with_code(kind, code, format!("{what}: HTTP {status}: {msg}")));
    }
    let c = &v["Credentials"];
    let field = |k: &str| {
        c[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| StoreError::new(ErrorKind::Other, format!("{what}: answer without Credentials.{k}")))
    };
    let expires_at = c["Expiration"].as_str().and_then(|e| {
        time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
    });
    Ok(TemporaryCredentials {
        credentials: StaticCredentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("AccessKeySecret")?,
            session_token: Some(field("SecurityToken")?),
        },
        expires_at,
    })
}

/// One HTTP/1.1 POST of a form, over TLS (the system's CAs) for `https://`.
async fn post_form(url: &str, body: String) -> Result<(u16, Bytes), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("endpoint {url:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => return Err(format!("endpoint scheme {other:?} is not http or https")),
    };
    let host = uri.host().ok_or("the endpoint names no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connecting: {e}"))?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let req = http::Request::post(path)
        .header(http::header::HOST, &host)
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    if tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let stream = crate::tls::tls_connector()?.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        send(TokioIo::new(stream), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<IO>(io: IO, req: http::Request<Full<Bytes>>) -> Result<(u16, Bytes), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_keys_or_named_errors() {
        let ok = br#"{"RequestId":"r","Credentials":{"AccessKeyId":"STS.ak","AccessKeySecret":"sk","SecurityToken":"tok","Expiration":"2030-01-01T00:00:00Z"}}"#;
        let t = parse_answer("x", 200, ok).unwrap();
        assert_eq!(t.credentials.access_key_id, "STS.ak");
        assert_eq!(t.credentials.session_token.as_deref(), Some("tok"));
        assert_eq!(t.expires_at, Some(1_893_456_000));
        let bad = br#"{"RequestId":"r","Code":"AuthenticationFail.OIDCToken.Invalid","Message":"token invalid"}"#;
        let e = parse_answer("x", 400, bad).unwrap_err();
        assert_eq!(
            (e.kind, e.code.as_deref()),
            (ErrorKind::AccessDenied, Some("AuthenticationFail.OIDCToken.Invalid"))
        );
        assert!(e.message.contains("token invalid"));
        let e = parse_answer("x", 502, b"<html>").unwrap_err();
        assert!(e.message.contains("HTTP 502"), "{e}");
    }
}
