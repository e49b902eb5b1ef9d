use std::sync::Arc;

use anyhow::Context;
use s3vol_csi::connect::DefaultStoreFactory;
use s3vol_csi::controller::ControllerService;
use s3vol_csi::identity::IdentityService;
use s3vol_csi::provision::Provisioner;
use s3vol_csi::server;
use s3vol_csi::volume::{normalize_endpoint, Endpoint};

use crate::cli::{CsiArgs, Mode};

/// Runs the CSI driver until SIGTERM or SIGINT.
pub fn run(args: CsiArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: CsiArgs) -> anyhow::Result<()> {
    let defaults = Endpoint {
        url: args.default_endpoint.as_deref().map(|u| normalize_endpoint(u, "--default-endpoint")).transpose()?,
        region: args.default_region.clone(),
        addressing: Default::default(),
    };
    let path = server::socket_path(&args.endpoint)?;
    let listener = server::bind_unix(&path)?;
    let controller = matches!(args.mode, Mode::Controller | Mode::All)
        .then(|| ControllerService::new(Arc::new(Provisioner::new(Arc::new(DefaultStoreFactory), defaults.clone()))));
    let node_half = matches!(args.mode, Mode::Node | Mode::All);
    if node_half {
        anyhow::bail!("--mode {:?}: the node service is not built yet; run --mode controller", args.mode);
    }
    let identity = IdentityService::new(args.driver_name.clone(), controller.is_some(), Arc::new(|| Ok(())));
    tracing::info!(endpoint = %args.endpoint, mode = ?args.mode, driver = %args.driver_name, "serving CSI");
    server::serve(listener, identity, controller, shutdown_signal()).await?;
    let _ = std::fs::remove_file(&path);
    tracing::info!("CSI server stopped");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
