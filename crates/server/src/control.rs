//! The control-socket loop: one request per connection, answered in place. A server
//! serves at most one volume; it exits when its session ends, after a drain, or on
//! `Shutdown`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use s3vol_fs::Fs;
use s3vol_fuse::DrainControl;
use s3vol_handoff::{self as handoff, ControlRequest, ControlResponse};
use s3vol_store::CredentialSource;

use crate::serve;
use crate::ServerError;

/// What the server holds between requests.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) credentials: Option<CredentialSource>,
    /// The keys as they were handed over (for a plugin that takes the volume back).
    pub(crate) wire_credentials: Option<handoff::WireCredentials>,
    pub(crate) serving: bool,
    /// The connection and the journal, kept to hand duplicates to a restarted plugin.
    pub(crate) fds: Option<(OwnedFd, OwnedFd)>,
    /// The filesystem being served, for a drain.
    pub(crate) fs: Option<Arc<Fs>>,
    /// Stops the FUSE adapter from taking requests at a handover.
    pub(crate) drain: DrainControl,
    /// The directory of the control socket: the node keeps one per volume, removed when
    /// the volume is unstaged, so the volume's read cache lives in it (and outlives this
    /// server, for its successor).
    pub(crate) volume_dir: Option<std::path::PathBuf>,
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

/// Renders the server's metrics (Prometheus text) for the node plugin's `/metrics`; the
/// binary installs the recorder, so this crate needs no exporter.
pub type MetricsRender = Box<dyn Fn() -> String + Send>;

/// Runs the server on the control socket `control` until its session ends or it is told
/// to shut down (both exit the process).
pub fn run(control: &Path, metrics: Option<MetricsRender>) -> Result<(), ServerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3vol-fuse")
        .build()
        .map_err(ServerError::io("starting the async runtime"))?;
    let listener = handoff::ControlListener::bind(control)
        .map_err(|e| ServerError::Bind { path: control.to_path_buf(), source: e.into() })?;
    let state = Arc::new(Mutex::new(State { volume_dir: control.parent().map(Path::to_path_buf), ..State::default() }));
    tracing::info!(control = %control.display(), pid = std::process::id(), "FUSE server waiting for a volume");
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
                let text = metrics.as_ref().map(|render| render());
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
                    (Some(fuse), journal) => match serve::start(&rt, &state, config, fuse, journal, resume) {
                        Ok(resend) => {
                            let resp = ControlResponse { resend, ..response(&state, Ok(())) };
                            let _ = handoff::write_response(&conn, &resp, &[]);
                            continue;
                        }
                        Err(e) => Err(e.to_string()),
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
