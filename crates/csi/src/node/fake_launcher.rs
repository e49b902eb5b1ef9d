//! [`FakeLauncher`]: FUSE servers as threads of the test process that speak the real
//! control protocol (Serve, TakeOver, Rotate, Drain, Ping...) but serve nothing. With
//! [`super::mounter::FakeMounter`] it runs the node's volume lifecycle — stage, publish,
//! crashes, takeovers, plugin restarts — without root, FUSE or processes.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::handoff::{self, ControlListener, ControlRequest, ControlResponse, ServeConfig, WireCredentials};
use super::launcher::{Launcher, ServerSlot};
use crate::error::{CsiError, CsiResult};

/// What one fake server was handed.
#[derive(Default)]
struct Held {
    config: Option<ServeConfig>,
    credentials: Option<WireCredentials>,
    /// The connection and the journal, as a real server keeps them.
    fds: Vec<OwnedFd>,
    /// Whether it took over a live connection (a resuming Serve).
    resumed: bool,
}

struct FakeServer {
    pid: u32,
    control: PathBuf,
    alive: AtomicBool,
    held: Mutex<Held>,
}

/// What a test can see of the server of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeServerView {
    /// Its (fake) process id.
    pub pid: u32,
    /// Serving a connection.
    pub serving: bool,
    /// Took over a live connection.
    pub resumed: bool,
    /// The access key it was given last (never the secret).
    pub access_key: Option<String>,
}

/// Launches [`FakeServer`]s; one per control socket.
#[derive(Default)]
pub struct FakeLauncher {
    servers: Mutex<HashMap<PathBuf, Arc<FakeServer>>>,
    next_pid: AtomicU32,
    launches: AtomicU32,
    outdated: AtomicBool,
}

impl FakeLauncher {
    /// Servers started so far.
    pub fn launches(&self) -> u32 {
        self.launches.load(Ordering::SeqCst)
    }

    /// The live server of the volume whose state dir is `volume_dir`, if any.
    pub fn server_in(&self, volume_dir: &Path) -> Option<FakeServerView> {
        let control = self.socket_in(volume_dir);
        let s = self.servers.lock().get(&control).cloned()?;
        if !s.alive.load(Ordering::SeqCst) {
            return None;
        }
        let h = s.held.lock();
        Some(FakeServerView {
            pid: s.pid,
            serving: h.config.is_some(),
            resumed: h.resumed,
            access_key: h.credentials.as_ref().map(|c| c.access_key_id.clone()),
        })
    }

    /// Servers alive now (started and not stopped or crashed).
    pub fn live_servers(&self) -> usize {
        self.servers.lock().values().filter(|s| s.alive.load(Ordering::SeqCst)).count()
    }

    /// Kills every server as `kill -9` would: no answer, no cleanup, the socket gone.
    pub fn crash_all(&self) {
        for s in self.servers.lock().values() {
            crash(s);
        }
    }

    /// From now on servers report running another binary (a rolling upgrade's trigger).
    pub fn set_outdated(&self, yes: bool) {
        self.outdated.store(yes, Ordering::SeqCst);
    }
}

fn crash(s: &FakeServer) {
    if s.alive.swap(false, Ordering::SeqCst) {
        // Wake the accept so the thread sees it is dead, then take the socket away.
        let _ = handoff::call(&s.control, &ControlRequest::Ping, &[], Duration::from_millis(100));
        let _ = std::fs::remove_file(&s.control);
        s.held.lock().fds.clear();
    }
}

fn answer(s: &FakeServer, req: ControlRequest, mut fds: Vec<OwnedFd>) -> (ControlResponse, Vec<OwnedFd>, bool) {
    let mut h = s.held.lock();
    let mut resp = ControlResponse { ok: true, pid: s.pid, serving: h.config.is_some(), ..Default::default() };
    let mut back = Vec::new();
    let mut exit = false;
    match req {
        ControlRequest::Serve { config, resume } => {
            if fds.len() != 2 {
                resp.ok = false;
                resp.error = Some(format!("Serve needs the connection and the journal, got {} descriptors", fds.len()));
            } else {
                h.credentials = config.credentials.clone();
                h.config = Some(config);
                h.resumed = resume;
                h.fds = std::mem::take(&mut fds);
                resp.serving = true;
                resp.resend = resume.then(|| "resent".to_string());
            }
        }
        ControlRequest::TakeOver => {
            back = h.fds.iter().filter_map(|f| f.try_clone().ok()).collect();
            resp.credentials = h.credentials.clone();
        }
        ControlRequest::Rotate { credentials } => h.credentials = Some(credentials),
        ControlRequest::Drain | ControlRequest::Shutdown => exit = true,
        ControlRequest::SetCapacity { .. } | ControlRequest::Ping => {}
        ControlRequest::Metrics => resp.metrics = Some(String::new()),
    }
    (resp, back, exit)
}

fn serve(s: Arc<FakeServer>, listener: ControlListener) {
    while s.alive.load(Ordering::SeqCst) {
        let Ok(conn) = listener.accept() else { break };
        if !s.alive.load(Ordering::SeqCst) {
            break;
        }
        while let Ok(Some((req, fds))) = handoff::read_request(&conn) {
            let (resp, back, exit) = answer(&s, req, fds);
            let borrowed: Vec<_> = back.iter().map(|f| f.as_fd()).collect();
            let _ = handoff::write_response(&conn, &resp, &borrowed);
            if exit {
                s.alive.store(false, Ordering::SeqCst);
                let _ = std::fs::remove_file(&s.control);
                s.held.lock().fds.clear();
                return;
            }
        }
    }
}

#[async_trait]
impl Launcher for FakeLauncher {
    async fn launch(&self, slot: &ServerSlot) -> CsiResult<u32> {
        if let Some(old) = self.servers.lock().remove(&slot.control) {
            crash(&old);
        }
        let listener = ControlListener::bind(&slot.control)
            .map_err(|e| CsiError::Internal(format!("fake server at {}: {e}", slot.control.display())))?;
        let pid = 1_000_000 + self.next_pid.fetch_add(1, Ordering::SeqCst);
        let server = Arc::new(FakeServer {
            pid,
            control: slot.control.clone(),
            alive: AtomicBool::new(true),
            held: Mutex::new(Held::default()),
        });
        self.servers.lock().insert(slot.control.clone(), server.clone());
        self.launches.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || serve(server, listener));
        Ok(pid)
    }

    async fn alive(&self, slot: &ServerSlot) -> bool {
        self.servers.lock().get(&slot.control).is_some_and(|s| s.pid == slot.pid && s.alive.load(Ordering::SeqCst))
    }

    async fn stop(&self, slot: &ServerSlot) {
        let s = self.servers.lock().get(&slot.control).filter(|s| s.pid == slot.pid).cloned();
        if let Some(s) = s {
            crash(&s);
        }
    }

    async fn outdated(&self, _slot: &ServerSlot) -> bool {
        self.outdated.load(Ordering::SeqCst)
    }
}
