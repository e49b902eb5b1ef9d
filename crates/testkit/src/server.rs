use std::net::SocketAddr;

use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::control::Control;
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
                            let mut resp = hyper::service::Service::call(&service, req).await?;
                            if ctl.oss_headers() {
                                rename_metadata_headers(resp.headers_mut());
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
