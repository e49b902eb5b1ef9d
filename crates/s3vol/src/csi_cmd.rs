use std::sync::Arc;

use anyhow::Context;
use s3vol_csi::connect::DefaultStoreFactory;
use s3vol_csi::controller::ControllerService;
use s3vol_csi::identity::IdentityService;
use s3vol_csi::node::launcher::{Launcher, ProcessLauncher};
use s3vol_csi::node::pod_launcher::PodLauncher;
use s3vol_csi::node::{NodeConfig, NodeService, UpgradeServers};
use s3vol_csi::policy::StorePolicy;
use s3vol_csi::provision::Provisioner;
use s3vol_csi::server;
use s3vol_csi::volume::{normalize_endpoint, Endpoint};
use std::time::Duration;

use crate::cli::{CsiArgs, Mode, ServersArg, UpgradeServersArg};

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
    let policy = StorePolicy::new(args.file_store_root.as_deref(), &args.allow_endpoints)?;
    if let Some(url) = defaults.url.as_deref().filter(|u| u.starts_with("file://")) {
        policy.file_store_dir(url).map_err(|e| anyhow::anyhow!("--default-endpoint: {e}"))?;
    }
    let factory = Arc::new(DefaultStoreFactory::new(policy.clone()));
    let path = server::socket_path(&args.endpoint)?;
    let listener = server::bind_unix(&path)?;
    let controller = matches!(args.mode, Mode::Controller | Mode::All)
        .then(|| ControllerService::new(Arc::new(Provisioner::new(factory.clone(), defaults.clone()))));
    let node = if matches!(args.mode, Mode::Node | Mode::All) {
        let node_id = match &args.node_id {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .context("reading the host name for --node-id")?
                .to_string_lossy()
                .into_owned(),
        };
        let cfg = NodeConfig {
            node_id,
            state_dir: args.state_dir.clone(),
            secrets_dir: Some(args.secrets_dir.clone()),
            health_interval: Duration::from_secs_f64(args.health_interval.max(0.1)),
            defaults: defaults.clone(),
            upgrade_servers: match args.upgrade_servers {
                UpgradeServersArg::Rolling => UpgradeServers::Rolling,
                UpgradeServersArg::Never => UpgradeServers::Never,
            },
            policy,
        };
        let launcher: Arc<dyn Launcher> = match args.servers {
            ServersArg::Processes => {
                Arc::new(ProcessLauncher::new(std::env::current_exe().context("locating the s3vol binary")?))
            }
            ServersArg::Pods => {
                let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
                let pods = PodLauncher::discover(
                    &cfg.node_id,
                    &args.namespace,
                    args.pod_name.as_deref(),
                    args.mount_pod_image.as_deref(),
                    &filter,
                )
                .await
                .context("--servers=pods")?;
                tracing::info!(namespace = %args.namespace, "FUSE servers run in mount pods");
                Arc::new(pods)
            }
        };
        let node = NodeService::new(&cfg, launcher, factory)
            .with_context(|| format!("state dir {}", args.state_dir.display()))?;
        node.recover().await;
        node.spawn_health_loop(cfg.health_interval);
        node.spawn_rolling_upgrade();
        Some(node)
    } else {
        None
    };
    if let Some(addr) = args.metrics_addr {
        // The node plugin's /metrics also carries every volume's FUSE server metrics.
        let extra: crate::metrics::ExtraMetrics = match node.clone() {
            Some(n) => Arc::new(move || {
                let n = n.clone();
                Box::pin(async move { n.server_metrics().await })
            }),
            None => Arc::new(|| Box::pin(async { Vec::new() })),
        };
        crate::metrics::serve_with(addr, extra)?;
    }
    let ready: s3vol_csi::identity::ReadinessCheck = if node.is_some() {
        let state = args.state_dir.clone();
        Arc::new(move || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")
                .map_err(|e| format!("/dev/fuse: {e}"))?;
            if !state.is_dir() {
                return Err(format!("state dir {} missing", state.display()));
            }
            Ok(())
        })
    } else {
        Arc::new(|| Ok(()))
    };
    let identity = IdentityService::new(args.driver_name.clone(), controller.is_some(), ready);
    tracing::info!(endpoint = %args.endpoint, mode = ?args.mode, driver = %args.driver_name, "serving CSI");
    server::serve(listener, identity, controller, node, shutdown_signal()).await?;
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
