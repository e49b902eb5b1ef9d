//! Starting FUSE server processes. The seam lets the node plugin start servers as local
//! child processes now, and as host systemd units or per-node mount pods later.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::{CsiError, CsiResult};

/// Starts a FUSE server that listens on a control socket.
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// Starts a server listening on `control`, logging to `log`; returns its pid once
    /// the socket accepts connections.
    async fn launch(&self, control: &Path, log: &Path) -> CsiResult<u32>;
}

/// Runs `<exe> fuse-server --control SOCKET` as a detached process (own session), so it
/// outlives the node plugin: restarting or killing the plugin leaves mounts working.
pub struct ProcessLauncher {
    exe: PathBuf,
}

impl ProcessLauncher {
    /// A launcher for the `s3vol` binary at `exe`.
    pub fn new(exe: PathBuf) -> Self {
        ProcessLauncher { exe }
    }
}

#[async_trait]
impl Launcher for ProcessLauncher {
    async fn launch(&self, control: &Path, log: &Path) -> CsiResult<u32> {
        use std::os::unix::process::CommandExt;
        let _ = std::fs::remove_file(control);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
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
}
