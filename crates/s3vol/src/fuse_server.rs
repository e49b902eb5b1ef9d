//! `s3vol fuse-server`: the per-volume FUSE server the CSI node plugin starts. It listens
//! on a control socket, receives the mounted /dev/fuse fd, the state journal and its
//! configuration (credentials included) over it, serves until the mount goes away, and
//! accepts credential rotations while it runs. It is a process of its own so that
//! restarting the node plugin leaves mounts alive; and when it dies, a successor takes
//! over the same connection from the journal (`resume`), so the mount never breaks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use s3vol_csi::node::handoff::{self, ControlRequest, ControlResponse, ServeConfig};
use s3vol_fs::{Fs, FsConfig, MountOptions};
use s3vol_fuse::{DrainControl, FileJournal, Resend};
use s3vol_store::{CountingStore, CredentialSource, ObjectStore};

use crate::open_store::{open_store, StoreTarget};
use std::os::fd::{AsFd, OwnedFd};

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
    /// The keys as they were handed over (for a plugin that takes the volume back).
    wire_credentials: Option<handoff::WireCredentials>,
    serving: bool,
    /// The connection and the journal, kept to hand duplicates to a restarted plugin.
    fds: Option<(OwnedFd, OwnedFd)>,
    /// The filesystem being served, for a drain.
    fs: Option<Arc<Fs>>,
    /// Stops the FUSE adapter from taking requests at a handover.
    drain: DrainControl,
}

/// How long a drain waits for running requests before giving up (the plugin then
/// replaces the server as after a crash).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Drains for a graceful handover; see [`ControlRequest::Drain`].
fn drain(rt: &tokio::runtime::Runtime, state: &Mutex<State>) -> Result<(), String> {
    let (fs, control) = {
        let st = state.lock();
        (st.fs.clone().ok_or("not serving a volume")?, st.drain.clone())
    };
    let started = Instant::now();
    control.begin();
    if !control.wait_idle(DRAIN_TIMEOUT) {
        return Err(format!("requests still running after {DRAIN_TIMEOUT:?}"));
    }
    let drained = rt.block_on(fs.drain()).map_err(|e| format!("handing uploads over: errno {}", e.0))?;
    tracing::info!(streams = drained.streams, committed = drained.committed, took = ?started.elapsed(), "drained for a handover; exiting");
    Ok(())
}

/// Runs the server until its session ends or it is told to shut down.
pub fn run(args: FuseServerArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("s3vol-fuse").build()?;
    let listener =
        handoff::ControlListener::bind(&args.control).with_context(|| format!("binding {}", args.control.display()))?;
    let state = Arc::new(Mutex::new(State::default()));
    // The store's request counters, read by the node plugin over the control socket.
    let metrics = crate::metrics::builder().install_recorder().ok();
    tracing::info!(control = %args.control.display(), pid = std::process::id(), "FUSE server waiting for a volume");
    loop {
        let conn = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let (req, fds) = match handoff::read_request(&conn) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                // Answer (a newer plugin asking for something this server does not know
                // gets a quick "no" instead of waiting for its timeout).
                tracing::warn!(error = %e, "bad control request");
                let _ =
                    handoff::write_response(&conn, &response(&state, Err(format!("unknown or bad request: {e}"))), &[]);
                continue;
            }
        };
        let result: Result<(), String> = match req {
            ControlRequest::Ping => Ok(()),
            ControlRequest::Metrics => {
                let text = metrics.as_ref().map(|h| {
                    h.run_upkeep();
                    h.render()
                });
                let resp = ControlResponse { metrics: text, ..response(&state, Ok(())) };
                let _ = handoff::write_response(&conn, &resp, &[]);
                continue;
            }
            ControlRequest::SetCapacity { bytes } => match state.lock().fs.as_ref() {
                Some(fs) => {
                    fs.set_capacity(bytes);
                    Ok(())
                }
                None => Err("not serving a volume".to_string()),
            },
            ControlRequest::Drain => {
                let res = drain(&rt, &state);
                if res.is_ok() {
                    // Answer, then go: from now on the successor serves the connection.
                    let _ = handoff::write_response(&conn, &response(&state, Ok(())), &[]);
                    std::process::exit(0);
                }
                res
            }
            ControlRequest::Shutdown => {
                let _ = handoff::write_response(&conn, &response(&state, Ok(())), &[]);
                tracing::info!("shutdown requested");
                std::process::exit(0);
            }
            ControlRequest::Rotate { credentials } => {
                let mut st = state.lock();
                match &st.credentials {
                    Some(src) if src.rotate(credentials.clone().into()) => {
                        st.wire_credentials = Some(credentials);
                        tracing::info!("credentials rotated");
                        Ok(())
                    }
                    _ => Err("this volume does not use static credentials; nothing to rotate".to_string()),
                }
            }
            ControlRequest::TakeOver => {
                let st = state.lock();
                let dups = st.fds.as_ref().map(|(f, j)| (s3vol_fuse::dup_fd(f), s3vol_fuse::dup_fd(j)));
                let resp = ControlResponse { credentials: st.wire_credentials.clone(), ..response_of(&st, Ok(())) };
                drop(st);
                match dups {
                    Some((Ok(f), Ok(j))) => {
                        let _ = handoff::write_response(&conn, &resp, &[f.as_fd(), j.as_fd()]);
                        tracing::info!("handed the connection back to a restarted node plugin");
                        continue;
                    }
                    Some((Err(e), _)) | Some((_, Err(e))) => Err(format!("duplicating descriptors: {e}")),
                    None => Err("not serving a volume".to_string()),
                }
            }
            ControlRequest::Serve { config, resume } => {
                let mut fds = fds.into_iter();
                match (fds.next(), fds.next()) {
                    (None, _) => Err("Serve without a FUSE descriptor".to_string()),
                    _ if state.lock().serving => Err("already serving a volume".to_string()),
                    (Some(fuse), journal) => match start(&rt, &state, config, fuse, journal, resume) {
                        Ok(resend) => {
                            let resp = ControlResponse { resend, ..response(&state, Ok(())) };
                            let _ = handoff::write_response(&conn, &resp, &[]);
                            continue;
                        }
                        Err(e) => Err(format!("{e:#}")),
                    },
                }
            }
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "control request failed");
        }
        let _ = handoff::write_response(&conn, &response(&state, result), &[]);
    }
}

fn response(state: &Mutex<State>, result: Result<(), String>) -> ControlResponse {
    response_of(&state.lock(), result)
}

fn response_of(st: &State, result: Result<(), String>) -> ControlResponse {
    ControlResponse {
        ok: result.is_ok(),
        error: result.err(),
        pid: std::process::id(),
        serving: st.serving,
        ..Default::default()
    }
}

/// Serves `config` on `fuse`, journaling into `journal` (a fresh memfd when none is
/// given). With `resume`, the connection was served before: the predecessor's journal is
/// replayed and the kernel asked to resend what it left unanswered. Returns what became
/// of those requests (`None` for a fresh connection).
fn start(
    rt: &tokio::runtime::Runtime,
    state: &Arc<Mutex<State>>,
    config: ServeConfig,
    fuse: OwnedFd,
    journal: Option<OwnedFd>,
    resume: bool,
) -> anyhow::Result<Option<String>> {
    let options = MountOptions::parse(&config.options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let source = config.credentials.clone().map(|c| CredentialSource::fixed(c.into()));
    let target = StoreTarget {
        endpoint: config.endpoint.as_deref(),
        region: &config.region,
        addressing: &config.addressing,
        credentials: source.clone().unwrap_or(CredentialSource::DefaultChain),
    };
    let store = rt.block_on(open_store(target, &options))?;
    let counting = Arc::new(CountingStore::new(store, config.volume_id.clone()));
    let counts = counting.counts();
    let store: Arc<dyn ObjectStore> = counting;
    let journal_fd = match journal {
        Some(j) => j,
        None => FileJournal::create(&config.volume_id).context("creating the state journal")?,
    };
    let (journal, history) =
        FileJournal::open(s3vol_fuse::dup_fd(&journal_fd)?).context("reading the state journal")?;
    let valid = if resume { s3vol_fs::decode_all(&history).1 } else { 0 };
    journal.keep(valid as u64).context("trimming the state journal")?;
    let fs = Fs::new(
        store,
        FsConfig {
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            options,
            capacity: config.capacity,
            hard_quota: config.hard_quota,
        },
    )
    .journaled(Arc::new(journal));
    if resume {
        let r = fs.restore(&history[..valid]);
        tracing::info!(
            nodes = r.nodes,
            handles = r.handles,
            lost_writers = r.lost_writers,
            torn = r.torn,
            "took over the state of the previous server"
        );
    }
    let fs = Arc::new(fs);
    if resume {
        let aborted = rt.block_on(fs.abort_abandoned_uploads());
        if aborted > 0 {
            tracing::info!(aborted, "aborted the multipart uploads of writers lost with the previous server");
        }
    }
    if config.hard_quota {
        let used = rt
            .block_on(fs.measure_usage())
            .map_err(|e| anyhow::anyhow!("measuring usage for the hard quota: errno {}", e.0))?;
        tracing::info!(used, capacity = ?config.capacity, "hard quota: usage measured");
    }
    let kept = (s3vol_fuse::dup_fd(&fuse)?, journal_fd);
    let drain_control = state.lock().drain.clone();
    let handle = rt.handle().clone();
    let (session, resend) = if resume {
        let (thread, resend) = s3vol_fuse::serve_fd_resumed(fs.clone(), fuse, handle, drain_control.clone())?;
        if resend == Resend::Unsupported {
            // The requests the predecessor read stay unanswered: the plugin must abort
            // the connection and mount again. This server is of no use then.
            tracing::warn!("this kernel cannot resend requests (FUSE_NOTIFY_RESEND, Linux 6.9+); the node plugin falls back to a remount");
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                std::process::exit(3);
            });
            return Ok(Some("unsupported".into()));
        }
        tracing::info!(volume_id = %config.volume_id, "serving the live connection (requests left unanswered were resent)");
        (thread, Some("resent".to_string()))
    } else {
        let fs2 = fs.clone();
        let thread = std::thread::Builder::new()
            .name("fuse-session".into())
            .spawn(move || s3vol_fuse::serve_fd(fs2, fuse, handle, drain_control))?;
        tracing::info!(volume_id = %config.volume_id, bucket = %config.bucket, prefix = %config.prefix, "serving");
        (thread, None)
    };
    {
        let mut st = state.lock();
        st.credentials = source;
        st.wire_credentials = config.credentials.clone();
        st.serving = true;
        st.fds = Some(kept);
        st.fs = Some(fs.clone());
    }
    let state = state.clone();
    std::thread::Builder::new().name("fuse-waiter".into()).spawn(move || {
        let res = session.join().unwrap_or_else(|_| Err(std::io::Error::other("session thread panicked")));
        state.lock().fs = None;
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
    Ok(resend)
}
