//! Counts every CSI call by method and gRPC status code
//! (`s3vol_csi_calls_total{method,code}`, `s3vol_csi_call_seconds{method}`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// The tower layer that wraps the gRPC services.
#[derive(Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner }
    }
}

/// A service whose calls are counted.
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Metered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or("").to_string();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            if let Ok(r) = &res {
                // Errors are "trailers-only" responses: the status is a header. Success
                // puts it in the trailers, after the body: absent here means OK.
                let code = r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_string();
                metrics::counter!("s3vol_csi_calls_total", "method" => method.clone(), "code" => code).increment(1);
                metrics::histogram!("s3vol_csi_call_seconds", "method" => method).record(start.elapsed().as_secs_f64());
            }
            res
        })
    }
}
