//! Starting and stopping FUSE servers. The node plugin keeps each volume's kernel
//! connection; a launcher only provides a server process that listens on a control socket
//! and waits to be handed a volume. Two launchers exist: local child processes
//! ([`ProcessLauncher`], servers live in the plugin's container) and one mount pod per
//! volume ([`super::pod_launcher::PodLauncher`], servers outside it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{CsiError, CsiResult};

/// Resources a volume's server may use (StorageClass parameters `mountPodMemory`,
/// `mountPodCPU`); only mount pods enforce them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerResources {
    /// Memory limit (and request), a Kubernetes quantity such as `512Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPU request, a Kubernetes quantity such as `250m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

/// Which server a launcher started for a volume, and where it listens.
#[derive(Debug, Clone)]
pub struct ServerSlot {
    /// The CSI volume id.
    pub volume_id: String,
    /// The plugin's per-volume state directory.
    pub dir: PathBuf,
    /// The control socket (see [`Launcher::socket_in`]).
    pub control: PathBuf,
    /// Process id of the last server started, when it runs in the plugin's pid namespace.
    pub pid: u32,
    /// Resource limits for the server.
    pub resources: ServerResources,
}

/// Provides FUSE server processes, each listening on a volume's control socket.
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// Where a volume's control socket lives inside its state directory.
    fn socket_in(&self, volume_dir: &Path) -> PathBuf {
        volume_dir.join("control.sock")
    }

    /// Makes sure a server that has no volume yet listens on `slot.control`; returns its
    /// pid when the plugin can see it (0 otherwise).
    async fn launch(&self, slot: &ServerSlot) -> CsiResult<u32>;

    /// Whether the server of `slot` still runs (it may be serving or hung).
    async fn alive(&self, slot: &ServerSlot) -> bool;

    /// Stops the server of `slot` for good and waits until it is gone. The plugin's held
    /// connection survives it.
    async fn stop(&self, slot: &ServerSlot);

    /// Whether the server runs another binary or image than this plugin (a rolling
    /// upgrade hands its volume to a new one).
    async fn outdated(&self, slot: &ServerSlot) -> bool;

    /// Called once at plugin start with the volumes staged here: servers of any other
    /// volume (left while the plugin was down) are removed.
    async fn remove_others(&self, _staged: &[String]) {}
}

/// Runs `<exe> fuse-server --control SOCKET` as a detached process (own session), so it
/// outlives the node plugin process (not its container: see the pod launcher).
pub struct ProcessLauncher {
    exe: PathBuf,
}

impl ProcessLauncher {
    /// A launcher for the `s3vol` binary at `exe`.
    pub fn new(exe: PathBuf) -> Self {
        ProcessLauncher { exe }
    }
}

/// Whether `pid` is a live FUSE server.
fn process_alive(pid: u32) -> bool {
    pid != 0 && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.windows(11).any(|w| w == b"fuse-server"))
}

#[async_trait]
impl Launcher for ProcessLauncher {
    async fn launch(&self, slot: &ServerSlot) -> CsiResult<u32> {
        use std::os::unix::process::CommandExt;
        let control = &slot.control;
        let log = slot.dir.join("server.log");
        let _ = std::fs::remove_file(control);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| CsiError::Internal(format!("FUSE server log {}: {e}", log.display())))?;
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("fuse-server")
            .arg("--control")
            .arg(control)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN");
        // SAFETY: setsid() is async-signal-safe and touches no memory of the parent; it
        // detaches the server from the plugin's session so it survives the plugin.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
        }
        let mut child =
            cmd.spawn().map_err(|e| CsiError::Internal(format!("starting {} fuse-server: {e}", self.exe.display())))?;
        let pid = child.id();
        // Reap the child in the background so it never lingers as a zombie while we live.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !control.exists() {
            if Instant::now() > deadline {
                return Err(CsiError::Internal(format!(
                    "FUSE server did not open {} (see {})",
                    control.display(),
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(pid)
    }

    async fn alive(&self, slot: &ServerSlot) -> bool {
        process_alive(slot.pid)
    }

    async fn stop(&self, slot: &ServerSlot) {
        let pid = slot.pid;
        if !process_alive(pid) {
            return;
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn outdated(&self, slot: &ServerSlot) -> bool {
        use std::os::unix::fs::MetadataExt;
        let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
        match (id("/proc/self/exe"), id(&format!("/proc/{}/exe", slot.pid))) {
            (Ok(mine), Ok(theirs)) => mine != theirs,
            _ => false,
        }
    }
}
