use std::net::SocketAddr;

/// Serves Prometheus metrics on `addr` (`/metrics`) for the life of the process.
/// Must be called inside a tokio runtime.
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))?;
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}
