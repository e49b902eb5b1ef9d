//! Keeping volumes alive: taking connections back after a plugin restart, replacing
//! dead servers on the same connection (or remounting when nobody holds it), graceful
//! handovers to servers of a new binary, and the health loop that drives them.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use super::handoff::{self, ControlRequest, ServeConfig};
use super::launcher::ServerSlot;
use super::manager::{io_err, Conn, VolumeManager, CONTROL_TIMEOUT, DRAIN_TIMEOUT};
use super::mounter::MountHealth;
use super::node_metrics;
use super::registry::{self, VolumeRecord};
use super::UpgradeServers;
use crate::error::{CsiError, CsiResult};
use s3vol_fs::MountOptions;

/// How long a health check waits for a stat of a volume's mount before it asks the
/// server directly.
const MOUNT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl VolumeManager {
    /// Re-adopts the volumes recorded in the state dir: takes each live server's
    /// connection and credentials back, so that it can be replaced later without a
    /// remount, and repairs those whose server died.
    pub async fn recover(&self) {
        let staged: Vec<String> = self.inner.registry.all().into_iter().map(|r| r.volume_id).collect();
        self.inner.launcher.remove_others(&staged).await;
        for rec in self.inner.registry.all().into_iter().filter(|r| !r.deferred) {
            let vid = rec.volume_id.clone();
            let sock = self.socket(&vid);
            let taken = tokio::task::spawn_blocking(move || {
                handoff::call_with_fds(&sock, &ControlRequest::TakeOver, &[], Duration::from_secs(5))
            })
            .await
            .ok()
            .and_then(Result::ok);
            let mut from_server = None;
            match taken {
                Some((resp, fds)) if resp.ok && fds.len() == 2 => {
                    let mut fds = fds.into_iter();
                    let (fuse, journal) = (fds.next().expect("two"), fds.next().expect("two"));
                    self.volume(&vid, |v| v.conn = Some(Conn { fuse, journal }));
                    from_server = resp.credentials;
                    tracing::info!(volume_id = %vid, "took the volume's connection back from its live FUSE server");
                }
                _ => {
                    tracing::warn!(volume_id = %vid, "the volume's FUSE server did not hand its connection back; it is repaired if it is dead")
                }
            }
            let creds = from_server.or_else(|| self.inner.registry.load_credentials(&vid));
            if creds.is_none() && rec.static_credentials {
                let reason = "credentials lost: neither the FUSE server nor the secrets tmpfs has this volume's keys; stage it again (restart the pods using it)".to_string();
                tracing::error!(volume_id = %vid, "{reason}");
                self.set_abnormal(&vid, reason);
            }
            self.volume(&vid, |v| v.creds = Some(v.creds.take().unwrap_or(creds)));
            self.check_and_repair(&vid).await;
        }
    }

    /// With `--upgrade-servers rolling`, hands every volume whose server runs another
    /// binary over to a new server, one volume at a time, in the background.
    pub fn spawn_rolling_upgrade(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            if me.inner.upgrade_servers == UpgradeServers::Never {
                return;
            }
            for rec in me.inner.registry.all() {
                let slot = me.slot(&rec);
                if !me.inner.launcher.alive(&slot).await || !me.inner.launcher.outdated(&slot).await {
                    continue;
                }
                match me.handover(&rec.volume_id).await {
                    Ok(how) => tracing::info!(volume_id = %rec.volume_id, how, "server upgraded"),
                    Err(e) => {
                        tracing::warn!(volume_id = %rec.volume_id, error = %e, "server upgrade failed; the old server keeps serving")
                    }
                }
            }
        })
    }

    /// Graceful handover of a volume to a new server (same or newer binary): the old
    /// server stops taking requests (they wait in the kernel), finishes those running,
    /// hands streaming uploads over through the journal and exits; the new one takes
    /// the connection over and gets the waiting requests. No operation fails.
    pub async fn handover(&self, volume_id: &str) -> CsiResult<&'static str> {
        let _guard = self.inner.inflight.claim(volume_id)?;
        if !self.volume(volume_id, |v| v.conn.is_some()) {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {volume_id:?}: the node plugin holds no connection to hand over"
            )));
        }
        if self.inner.registry.load(volume_id).is_none() {
            return Err(CsiError::NotFound(volume_id.to_string()));
        }
        let started = std::time::Instant::now();
        let sock = self.socket(volume_id);
        let drained =
            tokio::task::spawn_blocking(move || handoff::call(&sock, &ControlRequest::Drain, &[], DRAIN_TIMEOUT)).await;
        match drained {
            Ok(Ok(r)) if r.ok => {}
            other => {
                let why = match other {
                    Ok(Ok(r)) => r.error.unwrap_or_default(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(volume_id, error = %why, "the server did not drain; replacing it as after a crash");
            }
        }
        // The drained server exits; wait until it no longer serves (a mount pod's
        // container may be restarted idle by the kubelet meanwhile).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (me, vid) = (self.clone(), volume_id.to_string());
            let serving = tokio::task::spawn_blocking(move || me.ping(&vid)).await.unwrap_or(false);
            if !serving || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let how = match self.repair(volume_id).await {
            Ok(how) => how,
            Err(e) => {
                node_metrics::handover(volume_id, false);
                return Err(e);
            }
        };
        node_metrics::handover(volume_id, true);
        tracing::info!(volume_id, took = ?started.elapsed(), how, "handed over to a new server");
        Ok(how)
    }

    /// Checks every volume every `interval`, repairing broken ones.
    pub fn spawn_health_loop(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                for rec in me.inner.registry.all() {
                    me.check_and_repair(&rec.volume_id).await;
                }
            }
        })
    }

    /// Each serving volume's server metrics (Prometheus text), for the plugin's `/metrics`.
    /// A server that does not answer within a second is left out of this scrape.
    pub async fn server_metrics(&self) -> Vec<String> {
        let socks: Vec<PathBuf> =
            self.inner.registry.all().into_iter().filter(|r| !r.deferred).map(|r| self.socket(&r.volume_id)).collect();
        tokio::task::spawn_blocking(move || {
            socks
                .iter()
                .filter_map(|s| handoff::call(s, &ControlRequest::Metrics, &[], Duration::from_secs(1)).ok())
                .filter_map(|r| r.metrics)
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    pub(super) fn ping(&self, volume_id: &str) -> bool {
        let sock = self.socket(volume_id);
        handoff::call(&sock, &ControlRequest::Ping, &[], Duration::from_secs(2)).is_ok_and(|r| r.ok && r.serving)
    }

    /// One health check of one volume; repairs it when its server or mount is gone.
    pub async fn check_and_repair(&self, volume_id: &str) {
        // The probe runs without the volume's claim: a CSI call meanwhile is not ABORTED
        // by a health check (a ping may take seconds on a loaded node). Only a repair
        // takes the claim, and looks again once it has it.
        match self.healthy(volume_id).await {
            None => return,
            Some(true) => return self.clear_recovered(volume_id),
            Some(false) => {}
        }
        let Ok(_guard) = self.inner.inflight.claim(volume_id) else { return };
        match self.healthy(volume_id).await {
            None => return,
            Some(true) => return self.clear_recovered(volume_id),
            Some(false) => {}
        }
        let reason = "FUSE server not running or mount broken; repairing".to_string();
        tracing::warn!(volume_id, "{reason}");
        self.set_abnormal(volume_id, reason);
        match self.repair(volume_id).await {
            Ok(how) => {
                tracing::info!(volume_id, how, "mount repaired");
                node_metrics::server_replaced(volume_id, how);
                self.clear_abnormal(volume_id);
            }
            Err(e) => {
                tracing::error!(volume_id, error = %e, "repair failed; will retry");
                node_metrics::repair_failed(volume_id);
                self.set_abnormal(volume_id, format!("repair failed: {e}"));
            }
        }
    }

    /// A healthy volume is normal again, unless its keys are lost (that needs a stage).
    fn clear_recovered(&self, volume_id: &str) {
        let recovered =
            self.volume(volume_id, |v| v.condition.as_ref().is_some_and(|r| !r.starts_with("credentials lost")));
        if recovered {
            self.clear_abnormal(volume_id);
        }
    }

    /// Whether the volume's server answers and its mount works; `None` when there is
    /// nothing to check (unstaged, or staged without keys and not mounted yet).
    async fn healthy(&self, volume_id: &str) -> Option<bool> {
        let rec = self.inner.registry.load(volume_id).filter(|r| !r.deferred)?;
        if !self.ping_async(volume_id).await {
            return Some(false);
        }
        // A stat of the mount: it is answered by the server, so a server that dies right
        // after the ping leaves it waiting for the successor (the kernel resends it) —
        // the one this check is about to start. Never wait for it here: past a few
        // seconds, the server's own answer to a ping decides.
        let (m, staging) = (self.inner.mounter.clone(), rec.staging_path.clone());
        let probe = tokio::task::spawn_blocking(move || m.health(&staging) == MountHealth::Healthy);
        match tokio::time::timeout(MOUNT_PROBE_TIMEOUT, probe).await {
            Ok(answer) => Some(answer.unwrap_or(false)),
            Err(_) => Some(self.ping_async(volume_id).await),
        }
    }

    async fn ping_async(&self, volume_id: &str) -> bool {
        let (vid, me) = (volume_id.to_string(), self.clone());
        tokio::task::spawn_blocking(move || me.ping(&vid)).await.unwrap_or(false)
    }

    /// Replaces a dead (or unresponsive) server. With the volume's connection held, a
    /// successor serves the same connection from the predecessor's journal: nothing is
    /// unmounted, and pods in any mount namespace keep their volume. Otherwise (the plugin
    /// restarted and could not take the connection back, or the kernel cannot resend
    /// requests) the volume is mounted again and every bind mount re-made; pods that see
    /// only their own bind (private propagation) then need a restart. Returns which.
    pub(super) async fn repair(&self, volume_id: &str) -> CsiResult<&'static str> {
        let mut rec = self.inner.registry.load(volume_id).ok_or_else(|| CsiError::NotFound(volume_id.to_string()))?;
        let slot = self.slot(&rec);
        if self.inner.launcher.alive(&slot).await {
            self.inner.launcher.stop(&slot).await;
        }
        let creds = self.volume(volume_id, |v| v.creds.clone().flatten());
        if creds.is_none() && rec.static_credentials {
            return Err(CsiError::FailedPrecondition(
                "credentials lost: neither the FUSE server nor the secrets tmpfs has this volume's keys; stage it again"
                    .into(),
            ));
        }
        let config = ServeConfig { credentials: creds, ..rec.config.clone() };
        let held = self.volume(volume_id, |v| v.conn.as_ref().map(Conn::dup));
        match held {
            Some(Ok(conn)) => match self.serve(&rec, &conn, config.clone(), true).await {
                Ok((pid, Some(resend))) if resend == "resent" => {
                    rec.pid = pid;
                    self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
                    return Ok("a new FUSE server took over the live connection (no remount)");
                }
                Ok((pid, _)) => {
                    tracing::warn!(volume_id, "this kernel cannot resend requests (FUSE_NOTIFY_RESEND needs Linux 6.9+): aborting the connection and mounting again");
                    self.inner.launcher.stop(&ServerSlot { pid, ..self.slot(&rec) }).await;
                }
                Err(e) => {
                    tracing::warn!(volume_id, error = %e, "a new server could not take over the live connection: aborting it and mounting again");
                }
            },
            Some(Err(e)) => tracing::warn!(volume_id, error = %e, "cannot duplicate the held connection: mounting again"),
            None => tracing::warn!(volume_id, "the node plugin holds no descriptor of this volume's connection (it restarted while the server was dead): mounting again; pods with private mount propagation keep a broken mount until restarted"),
        }
        let held = self.volume(volume_id, |v| v.conn.take().is_some());
        let (staging, targets) = (rec.staging_path.clone(), rec.targets.clone());
        let aborted = self
            .mounts(move |m| {
                let aborted = if held { m.abort_connection(&staging) } else { Ok(()) };
                for t in &targets {
                    m.detach(&t.path);
                }
                m.detach(&staging);
                aborted
            })
            .await;
        if let Err(e) = aborted {
            tracing::warn!(volume_id, error = %e, "aborting the old connection failed");
        }
        rec.pid = self.start_server(&rec, config).await?;
        for t in rec.targets.clone() {
            std::fs::create_dir_all(&t.path).map_err(|e| io_err("create target", &t.path, e))?;
            super::manager::bind_target(self, &rec.staging_path, t.sub_path.as_deref(), &t.path, t.read_only).await?;
        }
        self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
        Ok("mounted again (new connection) and every target re-bound")
    }

    /// mount(2) at `staging`, start a server, hand it the connection, a new journal and
    /// the config; the plugin keeps the connection.
    pub(super) async fn start_server(&self, rec: &VolumeRecord, config: ServeConfig) -> CsiResult<u32> {
        let (volume_id, staging) = (rec.volume_id.as_str(), rec.staging_path.as_path());
        let opts = MountOptions::parse(&config.options).map_err(|e| CsiError::invalid(e.to_string()))?;
        let fsname = format!("s3vol:{}/{}", config.bucket, config.prefix);
        let (at, ro) = (staging.to_path_buf(), opts.read_only);
        let fuse = self
            .mounts(move |m| m.mount_fuse(&at, &fsname, ro))
            .await
            .map_err(|e| CsiError::Internal(e.to_string()))?;
        let conn = s3vol_mount::memfd(&format!("journal-{}", registry::Registry::key(volume_id)))
            .map(|journal| Conn { fuse, journal })
            .map_err(|e| CsiError::Internal(format!("creating the state journal: {e}")));
        let served = match conn {
            Ok(conn) => self.serve(rec, &conn, config, false).await.map(|(pid, _)| (pid, conn)),
            Err(e) => Err(e),
        };
        match served {
            Ok((pid, conn)) => {
                self.volume(volume_id, |v| v.conn = Some(conn));
                Ok(pid)
            }
            Err(e) => {
                let at = staging.to_path_buf();
                self.mounts(move |m| m.detach(&at)).await;
                Err(e)
            }
        }
    }

    /// Starts a server and hands it `conn` (with `resume`: a live connection another
    /// server served). Returns its pid and what became of unanswered requests.
    pub(super) async fn serve(
        &self,
        rec: &VolumeRecord,
        conn: &Conn,
        config: ServeConfig,
        resume: bool,
    ) -> CsiResult<(u32, Option<String>)> {
        let slot = self.slot(rec);
        std::fs::create_dir_all(&slot.dir).map_err(|e| io_err("state dir", &slot.dir, e))?;
        let pid = self.inner.launcher.launch(&slot).await?;
        let slot = ServerSlot { pid, ..slot };
        let sock = slot.control.clone();
        let req = ControlRequest::Serve { config, resume };
        let sent = conn.dup().map_err(|e| CsiError::Internal(format!("duplicating the connection: {e}")))?;
        let resp = tokio::task::spawn_blocking(move || {
            handoff::call(&sock, &req, &[sent.fuse.as_fd(), sent.journal.as_fd()], CONTROL_TIMEOUT)
        })
        .await
        .map_err(|e| CsiError::Internal(e.to_string()))?;
        match resp {
            Ok(r) if r.ok => Ok((pid, r.resend)),
            Ok(r) => {
                self.inner.launcher.stop(&slot).await;
                Err(CsiError::Internal(format!("FUSE server refused the volume: {}", r.error.unwrap_or_default())))
            }
            Err(e) => {
                self.inner.launcher.stop(&slot).await;
                Err(CsiError::Internal(format!("handing the mount to the FUSE server: {e}")))
            }
        }
    }
}
