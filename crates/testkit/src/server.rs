use std::net::SocketAddr;

use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::control::Control;
use crate::storm::{RequestKind, Wire};
use crate::{ACCESS_KEY, SECRET_KEY};

/// A running test S3 server on 127.0.0.1. Dropping it stops the listener.
pub struct TestS3 {
    addr: SocketAddr,
    /// Keys, faults and counters.
    pub control: Control,
    /// Direct access to the stored data, for setup and assertions.
    pub backend: Backend,
    task: JoinHandle<()>,
}

impl TestS3 {
    /// Starts a server on an ephemeral port that accepts [`ACCESS_KEY`]/[`SECRET_KEY`].
    pub async fn start() -> std::io::Result<Self> {
        let control = Control::default();
        control.add_key(ACCESS_KEY, SECRET_KEY);
        let backend = Backend::new(control.clone());
        let mut builder = S3ServiceBuilder::new(backend.clone());
        builder.set_auth(control.clone());
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ctl = control.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if ctl.dropping() {
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let ctl = ctl.clone();
                tokio::spawn(async move {
                    // Optionally rename metadata headers the way Alibaba OSS sends them.
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (service, ctl) = (service.clone(), ctl.clone());
                        async move {
                            let kind = RequestKind::of(&req);
                            let (spike, wire) = ctl.weather_for(kind);
                            if !spike.is_zero() {
                                tokio::time::sleep(spike).await;
                            }
                            if wire == Wire::ResetUpload {
                                return reset_mid_body(req).await;
                            }
                            let mut resp = hyper::service::Service::call(&service, req).await?;
                            if ctl.oss_headers() {
                                rename_metadata_headers(resp.headers_mut());
                            }
                            if kind == RequestKind::CompleteMultipart && ctl.wrong_complete_etag() {
                                resp = wrong_etag(resp).await?;
                            }
                            if matches!(wire, Wire::Cut | Wire::Stall) && resp.status().is_success() {
                                resp = break_body(resp, wire).await?;
                            }
                            Ok::<_, s3s::HttpError>(resp)
                        }
                    });
                    let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = conn.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(TestS3 { addr, control, backend, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rename_metadata_headers(headers: &mut http::HeaderMap) {
    let amz: Vec<(http::HeaderName, http::HeaderValue)> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-amz-meta-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in amz {
        headers.remove(&k);
        let oss = format!("x-oss-meta-{}", &k.as_str()["x-amz-meta-".len()..]);
        if let Ok(name) = http::HeaderName::from_bytes(oss.as_bytes()) {
            headers.insert(name, v);
        }
    }
}

type Response = http::Response<s3s::Body>;

/// Reads part of an upload's body, then closes the connection without an answer.
async fn reset_mid_body(req: http::Request<hyper::body::Incoming>) -> Result<Response, s3s::HttpError> {
    use http_body_util::BodyExt;
    let mut body = req.into_body();
    let _ = body.frame().await;
    Err(s3s::HttpError::new(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "storm: upload connection reset mid-body",
    ))))
}

/// The same answer with its body ending (Cut) or stopping for good (Stall) half-way,
/// Content-Length unchanged.
async fn break_body(resp: Response, wire: Wire) -> Result<Response, s3s::HttpError> {
    use http_body_util::BodyExt;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.map_err(s3s::HttpError::new)?.to_bytes();
    if bytes.len() < 2 {
        return Ok(http::Response::from_parts(parts, s3s::Body::from(bytes)));
    }
    let half = bytes.slice(..bytes.len() / 2);
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(hyper::body::Frame::data(half)) });
    let rest = futures::stream::once(async move {
        if wire == Wire::Stall {
            futures::future::pending::<()>().await;
        }
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "storm: body cut short"))
    });
    let body = http_body_util::StreamBody::new(futures::StreamExt::chain(first, rest));
    Ok(http::Response::from_parts(parts, s3s::Body::http_body(body)))
}

/// The same CompleteMultipartUpload answer with an ETag that is not the object's.
async fn wrong_etag(resp: Response) -> Result<Response, s3s::HttpError> {
    use http_body_util::BodyExt;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.map_err(s3s::HttpError::new)?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let text = match (text.find("<ETag>"), text.find("</ETag>")) {
        (Some(a), Some(b)) if a < b => {
            format!("{}<ETag>\"00000000000000000000000000000000-1\"{}", &text[..a], &text[b..])
        }
        _ => text,
    };
    let mut parts = parts;
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Ok(http::Response::from_parts(parts, s3s::Body::from(text)))
}
