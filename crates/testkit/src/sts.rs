//! An STS endpoint for tests that answers AWS's `AssumeRoleWithWebIdentity` (XML of the STS
//! query API) and Alibaba's `AssumeRoleWithOIDC` (RRSA: action in the query, JSON
//! answer): for a token the test allowed, it mints a fresh key pair, makes the
//! [`crate::TestS3`] behind `control` accept it, and answers with it. Other tokens get
//! `InvalidIdentityToken` / `AuthenticationFail.OIDCToken.Invalid`. Every exchange is
//! recorded for assertions.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpListener;

use crate::Control;

/// One exchange STS answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The role asked for.
    pub role_arn: String,
    /// The session name given.
    pub session_name: String,
    /// The access key minted (empty when the token was refused).
    pub access_key: String,
    /// The OIDC provider named (Alibaba's call; empty for AWS's).
    pub oidc_provider_arn: String,
}

#[derive(Default)]
struct State {
    allowed: Vec<String>,
    exchanges: Vec<Exchange>,
    minted: u64,
}

/// The STS endpoint.
pub struct FakeSts {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

fn form(body: &[u8], key: &str) -> Option<String> {
    std::str::from_utf8(body).ok()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| urlencoding::decode(&v.replace('+', " ")).map(|c| c.into_owned()).unwrap_or_default())
    })
}

/// Alibaba's RPC-style call: `Action` (and Format, Version, Timestamp) in the query, the
/// parameters as a form body, a JSON answer.
fn answer_oidc(state: &Mutex<State>, control: &Control, query: &str, body: &[u8]) -> (u16, String) {
    let q = query.as_bytes();
    if form(q, "Format").as_deref() != Some("JSON") || form(q, "Version").as_deref() != Some("2015-04-01") {
        return (
            400,
            r#"{"Code":"MissingParameter","Message":"Format=JSON and Version=2015-04-01 are required"}"#.into(),
        );
    }
    let role_arn = form(body, "RoleArn").unwrap_or_default();
    let oidc_provider_arn = form(body, "OIDCProviderArn").unwrap_or_default();
    let session_name = form(body, "RoleSessionName").unwrap_or_default();
    let token = form(body, "OIDCToken").unwrap_or_default();
    let mut st = state.lock();
    if !st.allowed.contains(&token) || oidc_provider_arn.is_empty() {
        st.exchanges.push(Exchange { role_arn, session_name, access_key: String::new(), oidc_provider_arn });
        return (
            400,
            r#"{"RequestId":"req-err","Code":"AuthenticationFail.OIDCToken.Invalid","Message":"The OIDC token is invalid"}"#.into(),
        );
    }
    st.minted += 1;
    let (ak, sk) = (format!("STS.ali{:06}", st.minted), format!("sts-secret-{}", st.minted));
    control.add_key(&ak, &sk);
    st.exchanges.push(Exchange { role_arn, session_name, access_key: ak.clone(), oidc_provider_arn });
    let json = format!(
        r#"{{"RequestId":"req-{n}","Credentials":{{"AccessKeyId":"{ak}","AccessKeySecret":"{sk}","SecurityToken":"session-{n}","Expiration":"2099-01-01T00:00:00Z"}}}}"#,
        n = st.minted
    );
    (200, json)
}

fn answer(state: &Mutex<State>, control: &Control, query: &str, body: &[u8]) -> (u16, String) {
    if form(query.as_bytes(), "Action").as_deref() == Some("AssumeRoleWithOIDC") {
        return answer_oidc(state, control, query, body);
    }
    if form(body, "Action").as_deref() != Some("AssumeRoleWithWebIdentity") {
        return (400, error("InvalidAction", "only AssumeRoleWithWebIdentity is served"));
    }
    let role_arn = form(body, "RoleArn").unwrap_or_default();
    let session_name = form(body, "RoleSessionName").unwrap_or_default();
    let token = form(body, "WebIdentityToken").unwrap_or_default();
    let mut st = state.lock();
    if !st.allowed.contains(&token) {
        let oidc_provider_arn = String::new();
        st.exchanges.push(Exchange { role_arn, session_name, access_key: String::new(), oidc_provider_arn });
        return (400, error("InvalidIdentityToken", "the web identity token is not valid"));
    }
    st.minted += 1;
    let (ak, sk) = (format!("ASIASTS{:06}", st.minted), format!("sts-secret-{}", st.minted));
    control.add_key(&ak, &sk);
    let oidc_provider_arn = String::new();
    st.exchanges.push(Exchange { role_arn: role_arn.clone(), session_name, access_key: ak.clone(), oidc_provider_arn });
    let xml = format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>{ak}</AccessKeyId>
      <SecretAccessKey>{sk}</SecretAccessKey>
      <SessionToken>session-{n}</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <SubjectFromWebIdentityToken>test-subject</SubjectFromWebIdentityToken>
    <AssumedRoleUser><Arn>{role_arn}/s3vol</Arn><AssumedRoleId>AROATEST:s3vol</AssumedRoleId></AssumedRoleUser>
    <Audience>sts.amazonaws.com</Audience>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>req-{n}</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
        n = st.minted
    );
    (200, xml)
}

fn error(code: &str, message: &str) -> String {
    format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>req-err</RequestId></ErrorResponse>"#
    )
}

impl FakeSts {
    /// Starts the endpoint; minted keys are added to `control`.
    pub async fn start(control: Control) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (st, control) = (st.clone(), control.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (st, control) = (st.clone(), control.clone());
                        async move {
                            let query = req.uri().query().unwrap_or_default().to_string();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let (code, xml) = answer(&st, &control, &query, &body);
                            let resp = http::Response::builder()
                                .status(code)
                                .header("content-type", "text/xml")
                                .body(Full::new(Bytes::from(xml)))
                                .expect("valid response");
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = conn.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(FakeSts { url, state, task })
    }

    /// Accepts `token` from now on.
    pub fn allow_token(&self, token: &str) {
        self.state.lock().allowed.push(token.to_string());
    }

    /// Every exchange so far, refused ones included.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.state.lock().exchanges.clone()
    }
}

impl Drop for FakeSts {
    fn drop(&mut self) {
        self.task.abort();
    }
}
