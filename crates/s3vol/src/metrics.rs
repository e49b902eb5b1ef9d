use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// More Prometheus text to serve beside this process's own metrics (the node plugin adds
/// those of its volumes' FUSE servers).
pub type ExtraMetrics = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<String>> + Send>> + Send + Sync>;

/// Serves Prometheus metrics on `addr` (`/metrics`) for the life of the process.
/// Must be called inside a tokio runtime.
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    serve_with(addr, Arc::new(|| Box::pin(async { Vec::new() })))
}

/// Latency buckets (seconds) of every `*_seconds` histogram: real histograms, not
/// per-process summaries, so dashboards can aggregate quantiles across nodes and volumes.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The exporter every s3vol process uses (plugin, standalone mount, FUSE servers).
pub fn builder() -> metrics_exporter_prometheus::PrometheusBuilder {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .expect("latency buckets are not empty")
}

/// As [`serve`], with `extra` expositions merged into every scrape.
pub fn serve_with(addr: SocketAddr, extra: ExtraMetrics) -> anyhow::Result<()> {
    let handle = builder().install_recorder().map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (handle, extra) = (handle.clone(), extra.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (handle, extra) = (handle.clone(), extra.clone());
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            handle.run_upkeep();
                            let mut texts = vec![handle.render()];
                            texts.extend(extra().await);
                            http::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(http_body_util::Full::new(bytes::Bytes::from(merge(&texts))))
                        } else {
                            http::Response::builder().status(404).body(http_body_util::Full::new(bytes::Bytes::new()))
                        };
                        Ok::<_, std::convert::Infallible>(resp.expect("valid response"))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    tracing::info!(addr = %bound, "serving Prometheus metrics");
    Ok(())
}

/// Merges Prometheus text expositions into one: every metric family once, its `# HELP`
/// and `# TYPE` first, then all its samples from every source (the format wants a
/// family's lines together and one TYPE line per family).
pub fn merge(sources: &[String]) -> String {
    #[derive(Default)]
    struct Family {
        help: Option<String>,
        kind: Option<String>,
        samples: Vec<String>,
    }
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    for src in sources {
        // Samples belong to the family named by the last HELP/TYPE line (a histogram's
        // `_bucket`, `_sum`, `_count` included).
        let mut current: Option<String> = None;
        for line in src.lines() {
            let meta = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE "));
            let name = match meta {
                Some(rest) => rest.split(' ').next().unwrap_or_default().to_string(),
                None if line.trim().is_empty() || line.starts_with('#') => continue,
                None => {
                    let sample = line.split(['{', ' ']).next().unwrap_or_default();
                    match &current {
                        Some(c) if sample.starts_with(c.as_str()) => c.clone(),
                        _ => sample.to_string(),
                    }
                }
            };
            let f = families.entry(name.clone()).or_insert_with(|| {
                order.push(name.clone());
                Family::default()
            });
            if line.starts_with("# HELP ") {
                f.help.get_or_insert_with(|| line.to_string());
            } else if line.starts_with("# TYPE ") {
                f.kind.get_or_insert_with(|| line.to_string());
            } else {
                f.samples.push(line.to_string());
            }
            if meta.is_some() {
                current = Some(name);
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let f = &families[&name];
        for line in f.help.iter().chain(f.kind.iter()).chain(f.samples.iter()) {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn families_from_several_servers_come_out_once_with_all_samples() {
        let a = "# TYPE s3vol_store_requests_total counter\ns3vol_store_requests_total{op=\"GetObject\",volume=\"a\"} 3\n\n# TYPE up gauge\nup 1\n".to_string();
        let b = "# HELP s3vol_store_requests_total Requests\n# TYPE s3vol_store_requests_total counter\ns3vol_store_requests_total{op=\"GetObject\",volume=\"b\"} 5\n".to_string();
        let m = merge(&[a, b]);
        assert_eq!(m.matches("# TYPE s3vol_store_requests_total").count(), 1, "{m}");
        let help = m.find("# HELP s3vol_store_requests_total").unwrap();
        let kind = m.find("# TYPE s3vol_store_requests_total").unwrap();
        let va = m.find("volume=\"a\"} 3").unwrap();
        let vb = m.find("volume=\"b\"} 5").unwrap();
        let up = m.find("# TYPE up gauge").unwrap();
        assert!(help < kind && kind < va && va < vb && vb < up, "one group per family:\n{m}");
    }
}
