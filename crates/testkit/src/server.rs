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
                tokio::spawn(async move {
                    let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = conn.serve_connection(TokioIo::new(stream), service).await;
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
