//! `s3vol fuse-server`: the per-volume FUSE server the CSI node plugin starts. It listens
//! on a control socket, receives the mounted /dev/fuse fd and its configuration
//! (credentials included) over it, serves until the mount goes away, and accepts
//! credential rotations while it runs. It is a process of its own so that restarting the
//! node plugin leaves mounts alive.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use s3vol_csi::node::handoff::{self, ControlRequest, ControlResponse, ServeConfig};
use s3vol_fs::{Fs, FsConfig, MountOptions};
use s3vol_store::{CountingStore, CredentialSource, FileStore, ObjectStore, S3Config, S3Store};

/// `s3vol fuse-server` arguments.
#[derive(clap::Args, Debug)]
pub struct FuseServerArgs {
    /// Control socket to listen on.
    #[arg(long)]
    pub control: PathBuf,
}

#[derive(Default)]
struct State {
    credentials: Option<CredentialSource>,
    serving: bool,
}

/// Runs the server until its session ends or it is told to shut down.
pub fn run(args: FuseServerArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("s3vol-fuse").build()?;
    let listener =
        handoff::ControlListener::bind(&args.control).with_context(|| format!("binding {}", args.control.display()))?;
    let state = Arc::new(Mutex::new(State::default()));
    tracing::info!(control = %args.control.display(), pid = std::process::id(), "FUSE server waiting for a volume");
    loop {
        let conn = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let (req, fd) = match handoff::read_request(&conn) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "bad control request");
                continue;
            }
        };
        let result: Result<(), String> = match req {
            ControlRequest::Ping => Ok(()),
            ControlRequest::Shutdown => {
                let _ = handoff::write_response(&conn, &response(&state, Ok(())));
                tracing::info!("shutdown requested");
                std::process::exit(0);
            }
            ControlRequest::Rotate { credentials } => match &state.lock().credentials {
                Some(src) if src.rotate(credentials.into()) => {
                    tracing::info!("credentials rotated");
                    Ok(())
                }
                _ => Err("this volume does not use static credentials; nothing to rotate".to_string()),
            },
            ControlRequest::Serve { config } => match fd {
                None => Err("Serve without a FUSE descriptor".to_string()),
                Some(_) if state.lock().serving => Err("already serving a volume".to_string()),
                Some(fd) => start(&rt, &state, config, fd).map_err(|e| format!("{e:#}")),
            },
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "control request failed");
        }
        let _ = handoff::write_response(&conn, &response(&state, result));
    }
}

fn response(state: &Mutex<State>, result: Result<(), String>) -> ControlResponse {
    ControlResponse { ok: result.is_ok(), error: result.err(), pid: std::process::id(), serving: state.lock().serving }
}

fn start(
    rt: &tokio::runtime::Runtime,
    state: &Arc<Mutex<State>>,
    config: ServeConfig,
    fd: std::os::fd::OwnedFd,
) -> anyhow::Result<()> {
    let options = MountOptions::parse(&config.options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let source = config.credentials.clone().map(|c| CredentialSource::fixed(c.into()));
    let store: Arc<dyn ObjectStore> = match config.endpoint.as_deref().and_then(|e| e.strip_prefix("file://")) {
        Some(dir) => Arc::new(FileStore::new(dir)),
        None => {
            let mut cfg = S3Config::new(
                config.endpoint.clone(),
                config.region.clone(),
                source.clone().unwrap_or(CredentialSource::DefaultChain),
            );
            cfg.addressing = config.addressing.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            cfg.list_v1 = options.list_type == 1;
            Arc::new(rt.block_on(S3Store::new(cfg))?)
        }
    };
    let counting = Arc::new(CountingStore::new(store, config.volume_id.clone()));
    let counts = counting.counts();
    let store: Arc<dyn ObjectStore> = counting;
    let fs = Arc::new(Fs::new(
        store,
        FsConfig {
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            options,
            capacity: config.capacity,
            hard_quota: config.hard_quota,
        },
    ));
    if config.hard_quota {
        let used = rt
            .block_on(fs.measure_usage())
            .map_err(|e| anyhow::anyhow!("measuring usage for the hard quota: errno {}", e.0))?;
        tracing::info!(used, capacity = ?config.capacity, "hard quota: usage measured");
    }
    {
        let mut st = state.lock();
        st.credentials = source;
        st.serving = true;
    }
    let handle = rt.handle().clone();
    tracing::info!(volume_id = %config.volume_id, bucket = %config.bucket, prefix = %config.prefix, "serving");
    std::thread::Builder::new().name("fuse-session".into()).spawn(move || {
        let res = s3vol_fuse::serve_fd(fs.clone(), fd, handle);
        // Let uploads of the last released files finish before exiting.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Arc::strong_count(&fs) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        match res {
            Ok(()) => tracing::info!(requests = ?counts.snapshot(), total = counts.total(), "session ended (unmounted); exiting"),
            Err(e) => tracing::error!(error = %e, "session failed; exiting"),
        }
        std::process::exit(0);
    })?;
    Ok(())
}
