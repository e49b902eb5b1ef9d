//! The Node service: one FUSE mount per volume per node at the staging path, made here
//! with mount(2) and handed to a FUSE server process over a unix socket (SCM_RIGHTS);
//! bind mounts for each pod; credential rotation. The plugin keeps a duplicate of every
//! volume's /dev/fuse descriptor and the memfd of its server's state journal, so a dead
//! server is replaced by one serving the *same* connection: no unmount, no new mount, no
//! re-bind, and pods in any mount namespace keep working. Only when that is impossible
//! (the plugin restarted and could not take the descriptor back, or the kernel cannot
//! resend requests) is the volume mounted again.

pub mod handoff;
pub mod launcher;
mod node_metrics;
pub mod pod_launcher;
pub mod registry;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use s3vol_fs::MountOptions;
use s3vol_store::ListRequest;
use tonic::{Request, Response, Status};

use crate::connect::StoreFactory;
use crate::controller::unsupported_capability;
use crate::error::{CsiError, CsiResult};
use crate::inflight::InFlight;
use crate::pb::node_server::Node;
use crate::pb::{self, node_service_capability, volume_capability, NodeServiceCapability};
use crate::pod_identity::PodIdentity;
use crate::volume::{SecretValues, VolumeSpec};
use handoff::{ControlRequest, ServeConfig, WireCredentials};
use launcher::{Launcher, ServerSlot};
use registry::{Registry, TargetRecord, VolumeRecord};

/// How long a control-socket call may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// Budget for checking the store is reachable at stage time.
const REACHABILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// Node plugin settings.
pub struct NodeConfig {
    /// This node's id.
    pub node_id: String,
    /// State dir (0700).
    pub state_dir: PathBuf,
    /// tmpfs dir for credentials used in repairs.
    pub secrets_dir: Option<PathBuf>,
    /// Health-check period.
    pub health_interval: Duration,
    /// Endpoint and region for volumes whose attributes and secret name none.
    pub defaults: crate::volume::Endpoint,
    /// Whether servers of an older binary are handed over to new ones at start.
    pub upgrade_servers: UpgradeServers,
}

/// What a node plugin started from a new binary does with servers running the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpgradeServers {
    /// Hand every volume over to a new server, one at a time (graceful handover).
    #[default]
    Rolling,
    /// Leave them running until their volumes are unstaged.
    Never,
}

/// Where an inline volume's FUSE mount lives: beside its target, in the pod's volume dir.
const EPHEMERAL_STAGING: &str = "s3vol-inline";

/// Whether kubelet publishes a CSI ephemeral (inline) volume (it says so in the volume
/// context when the CSIDriver asks for pod info).
fn is_ephemeral(ctx: &HashMap<String, String>) -> bool {
    ctx.get("csi.storage.k8s.io/ephemeral").is_some_and(|v| v == "true")
}

/// How long a server may take to drain at a handover.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

struct Inner {
    node_id: String,
    registry: Registry,
    launcher: Arc<dyn Launcher>,
    factory: Arc<dyn StoreFactory>,
    defaults: crate::volume::Endpoint,
    inflight: InFlight,
    upgrade_servers: UpgradeServers,
    /// Why a volume is abnormal, while it is.
    conditions: Mutex<HashMap<String, String>>,
    /// Credentials of staged volumes, for repairs.
    creds: Mutex<HashMap<String, Option<WireCredentials>>>,
    /// Each volume's kernel connection and state journal, held so that a successor
    /// server can take over the same connection.
    conns: Mutex<HashMap<String, Conn>>,
}

/// What the plugin holds of a volume's connection: while any descriptor of it is open,
/// the kernel keeps the mount and its queued requests alive, whatever happens to servers.
struct Conn {
    fuse: OwnedFd,
    journal: OwnedFd,
}

impl Conn {
    fn dup(&self) -> std::io::Result<Conn> {
        Ok(Conn { fuse: s3vol_mount::dup_fd(&self.fuse)?, journal: s3vol_mount::dup_fd(&self.journal)? })
    }
}

/// The Node service. Cheap to clone.
#[derive(Clone)]
pub struct NodeService {
    inner: Arc<Inner>,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> CsiError {
    CsiError::Internal(format!("{what} {}: {e}", path.display()))
}

fn is_readonly_mode(cap: &pb::VolumeCapability) -> bool {
    use volume_capability::access_mode::Mode;
    cap.access_mode.as_ref().is_some_and(|m| {
        matches!(Mode::try_from(m.mode), Ok(Mode::SingleNodeReaderOnly) | Ok(Mode::MultiNodeReaderOnly))
    })
}

/// SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod): one published target at a time.
fn is_single_writer_mode(cap: &pb::VolumeCapability) -> bool {
    use volume_capability::access_mode::Mode;
    cap.access_mode.as_ref().is_some_and(|m| Mode::try_from(m.mode) == Ok(Mode::SingleNodeSingleWriter))
}

fn mount_group(cap: &pb::VolumeCapability) -> Option<String> {
    match &cap.access_type {
        Some(volume_capability::AccessType::Mount(m)) if !m.volume_mount_group.is_empty() => {
            Some(m.volume_mount_group.clone())
        }
        _ => None,
    }
}

fn mount_flags(cap: &pb::VolumeCapability) -> Vec<String> {
    match &cap.access_type {
        Some(volume_capability::AccessType::Mount(m)) => m.mount_flags.clone(),
        _ => Vec::new(),
    }
}

/// Unmounts `path` if it is a mount point; a busy or broken mount is detached lazily.
fn unmount_quietly(path: &Path) -> CsiResult<()> {
    if !s3vol_mount::is_mount_point(path) {
        return Ok(());
    }
    match s3vol_mount::unmount(path) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(_) => nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(|e| io_err("unmount", path, e)),
    }
}

impl NodeService {
    /// A node service; call [`NodeService::recover`] once and
    /// [`NodeService::spawn_health_loop`] to keep mounts healthy.
    pub fn new(cfg: &NodeConfig, launcher: Arc<dyn Launcher>, factory: Arc<dyn StoreFactory>) -> std::io::Result<Self> {
        let registry = Registry::open(&cfg.state_dir, cfg.secrets_dir.as_deref())?;
        Ok(NodeService {
            inner: Arc::new(Inner {
                node_id: cfg.node_id.clone(),
                registry,
                launcher,
                factory,
                defaults: cfg.defaults.clone(),
                inflight: InFlight::default(),
                upgrade_servers: cfg.upgrade_servers,
                conditions: Mutex::new(HashMap::new()),
                creds: Mutex::new(HashMap::new()),
                conns: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Records why a volume is abnormal (reported as its VolumeCondition and metric).
    fn set_abnormal(&self, volume_id: &str, reason: String) {
        self.inner.conditions.lock().insert(volume_id.to_string(), reason);
        node_metrics::abnormal(volume_id, true);
    }

    /// The volume is healthy again (or gone).
    fn clear_abnormal(&self, volume_id: &str) {
        self.inner.conditions.lock().remove(volume_id);
        node_metrics::abnormal(volume_id, false);
    }

    /// Where the launcher's server for `rec` listens, and which one it is.
    fn slot(&self, rec: &VolumeRecord) -> ServerSlot {
        let dir = self.inner.registry.dir(&rec.volume_id);
        ServerSlot {
            volume_id: rec.volume_id.clone(),
            control: self.inner.launcher.socket_in(&dir),
            dir,
            pid: rec.pid,
            resources: rec.resources.clone(),
        }
    }

    /// A volume's control socket.
    fn socket(&self, volume_id: &str) -> PathBuf {
        self.inner.launcher.socket_in(&self.inner.registry.dir(volume_id))
    }

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
                    self.inner.conns.lock().insert(vid.clone(), Conn { fuse, journal });
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
            self.inner.creds.lock().entry(vid.clone()).or_insert(creds);
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
        if !self.inner.conns.lock().contains_key(volume_id) {
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

    fn ping(&self, volume_id: &str) -> bool {
        let sock = self.socket(volume_id);
        handoff::call(&sock, &ControlRequest::Ping, &[], Duration::from_secs(2)).is_ok_and(|r| r.ok && r.serving)
    }

    /// One health check of one volume; repairs it when its server or mount is gone.
    pub async fn check_and_repair(&self, volume_id: &str) {
        let Ok(_guard) = self.inner.inflight.claim(volume_id) else { return };
        let Some(rec) = self.inner.registry.load(volume_id) else { return };
        if rec.deferred {
            // Not mounted yet: nothing to check until its first publish.
            return;
        }
        let vid = volume_id.to_string();
        let me = self.clone();
        let healthy = tokio::task::spawn_blocking(move || {
            me.ping(&vid) && s3vol_mount::mount_health(&rec.staging_path) == s3vol_mount::MountHealth::Healthy
        })
        .await
        .unwrap_or(false);
        if healthy {
            let recovered =
                self.inner.conditions.lock().get(volume_id).is_some_and(|r| !r.starts_with("credentials lost"));
            if recovered {
                self.clear_abnormal(volume_id);
            }
            return;
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

    /// Replaces a dead (or unresponsive) server. With the volume's connection held, a
    /// successor serves the same connection from the predecessor's journal: nothing is
    /// unmounted, and pods in any mount namespace keep their volume. Otherwise (the plugin
    /// restarted and could not take the connection back, or the kernel cannot resend
    /// requests) the volume is mounted again and every bind mount re-made; pods that see
    /// only their own bind (private propagation) then need a restart. Returns which.
    async fn repair(&self, volume_id: &str) -> CsiResult<&'static str> {
        let mut rec = self.inner.registry.load(volume_id).ok_or_else(|| CsiError::NotFound(volume_id.to_string()))?;
        let slot = self.slot(&rec);
        if self.inner.launcher.alive(&slot).await {
            self.inner.launcher.stop(&slot).await;
        }
        let creds = self.inner.creds.lock().get(volume_id).cloned().flatten();
        if creds.is_none() && rec.static_credentials {
            return Err(CsiError::FailedPrecondition(
                "credentials lost: neither the FUSE server nor the secrets tmpfs has this volume's keys; stage it again"
                    .into(),
            ));
        }
        let config = ServeConfig { credentials: creds, ..rec.config.clone() };
        let held = self.inner.conns.lock().get(volume_id).map(Conn::dup);
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
        if self.inner.conns.lock().remove(volume_id).is_some() {
            if let Err(e) = s3vol_mount::abort_connection(&rec.staging_path) {
                tracing::warn!(volume_id, error = %e, "aborting the old connection failed");
            }
        }
        for t in &rec.targets {
            let _ = nix::mount::umount2(&t.path, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = nix::mount::umount2(&rec.staging_path, nix::mount::MntFlags::MNT_DETACH);
        rec.pid = self.start_server(&rec, config).await?;
        for t in &rec.targets {
            std::fs::create_dir_all(&t.path).map_err(|e| io_err("create target", &t.path, e))?;
            s3vol_mount::bind_mount(&rec.staging_path, &t.path, t.read_only)
                .map_err(|e| io_err("bind mount", &t.path, e))?;
        }
        self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
        Ok("mounted again (new connection) and every target re-bound")
    }

    /// mount(2) at `staging`, start a server, hand it the connection, a new journal and
    /// the config; the plugin keeps the connection.
    async fn start_server(&self, rec: &VolumeRecord, config: ServeConfig) -> CsiResult<u32> {
        let (volume_id, staging) = (rec.volume_id.as_str(), rec.staging_path.as_path());
        let opts = MountOptions::parse(&config.options).map_err(|e| CsiError::invalid(e.to_string()))?;
        let fsname = format!("s3vol:{}/{}", config.bucket, config.prefix);
        let fuse = s3vol_mount::mount_fuse(staging, &fsname, true, opts.read_only)
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
                self.inner.conns.lock().insert(volume_id.to_string(), conn);
                Ok(pid)
            }
            Err(e) => {
                let _ = nix::mount::umount2(staging, nix::mount::MntFlags::MNT_DETACH);
                Err(e)
            }
        }
    }

    /// Starts a server and hands it `conn` (with `resume`: a live connection another
    /// server served). Returns its pid and what became of unanswered requests.
    async fn serve(
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

    async fn stage(&self, r: pb::NodeStageVolumeRequest) -> CsiResult<()> {
        if r.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        if r.staging_target_path.is_empty() {
            return Err(CsiError::invalid("staging_target_path is required"));
        }
        let cap = r.volume_capability.as_ref().ok_or_else(|| CsiError::invalid("volume_capability is required"))?;
        if let Some(why) = unsupported_capability(cap) {
            return Err(CsiError::invalid(why));
        }
        let _guard = self.inner.inflight.claim(&r.volume_id)?;
        let staging = PathBuf::from(&r.staging_target_path);
        let secret = SecretValues::from_map(&r.secrets)?;
        let mut spec = VolumeSpec::resolve(&r.volume_id, &r.volume_context, &secret)?;
        if spec.endpoint.url.is_none() {
            spec.endpoint.url = self.inner.defaults.url.clone();
        }
        if spec.endpoint.region.is_none() {
            spec.endpoint.region = self.inner.defaults.region.clone();
        }
        let mut options = vec!["allow_other".to_string()];
        if let Some(g) = mount_group(cap) {
            g.parse::<u32>()
                .map_err(|_| CsiError::invalid(format!("volume_mount_group={g:?} is not a numeric gid")))?;
            // fsGroup semantics: the group owns everything and may write.
            options.extend([format!("gid={g}"), "file_mode=0664".into(), "dir_mode=0775".into(), "umask=0002".into()]);
        }
        options.extend(spec.mount_options.iter().cloned());
        options.extend(mount_flags(cap));
        if spec.read_only || is_readonly_mode(cap) {
            options.push("ro".into());
        }
        MountOptions::parse(&options).map_err(|e| CsiError::invalid(format!("mount options: {e}")))?;
        let config = ServeConfig {
            volume_id: r.volume_id.clone(),
            bucket: spec.bucket.clone(),
            prefix: spec.prefix.clone(),
            endpoint: spec.endpoint.url.clone(),
            region: spec.endpoint.region().to_string(),
            addressing: if spec.endpoint.addressing == s3vol_store::AddressingStyle::Virtual {
                "virtual".into()
            } else {
                "path".into()
            },
            options,
            capacity: spec.capacity.map(|c| c.max(0) as u64),
            hard_quota: spec.hard_quota,
            credentials: None,
        };
        let fingerprint = {
            use sha2::{Digest, Sha256};
            hex::encode(&Sha256::digest(serde_json::to_vec(&(&config, &staging)).unwrap_or_default())[..12])
        };
        if let Some(existing) = self.inner.registry.load(&r.volume_id) {
            if existing.staging_path == staging
                && existing.fingerprint == fingerprint
                && s3vol_mount::is_mount_point(&staging)
            {
                return Ok(());
            }
            if existing.staging_path == staging && existing.fingerprint == fingerprint {
                // Recorded but not mounted: fall through and stage again.
            } else {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {:?} is already staged at {} with other options",
                    r.volume_id,
                    existing.staging_path.display()
                )));
            }
        }
        std::fs::create_dir_all(&staging).map_err(|e| io_err("create staging path", &staging, e))?;
        let mut rec = VolumeRecord {
            volume_id: r.volume_id.clone(),
            staging_path: staging,
            fingerprint,
            config,
            targets: Vec::new(),
            pid: 0,
            static_credentials: false,
            deferred: false,
            resources: spec.server_resources.clone(),
            pod_identity: spec.pod_identity.clone(),
            identity_subject: None,
            ephemeral: is_ephemeral(&r.volume_context),
        };
        if spec.pod_identity.is_some() {
            if secret.credentials.is_some() {
                return Err(CsiError::invalid(
                    "authenticationSource=pod takes keys from the pod's service account, but the stage secret has keys too: remove the nodeStageSecretRef",
                ));
            }
            // Keys come with the first publish, from the pod's token.
            rec.deferred = true;
            self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
            tracing::info!(volume_id = %r.volume_id, "pod-identity volume staged; it is mounted at its first publish with keys from the pod's service account");
            return Ok(());
        }
        if secret.credentials.is_none() {
            // No keys at stage: the volume's keys may come with its publish (the Alibaba
            // OSS driver's PVs have only a nodePublishSecretRef), so the mount waits for it.
            rec.deferred = true;
            self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
            tracing::info!(volume_id = %r.volume_id, "volume staged without keys; it is mounted at its first publish, with the publish secret or the default credential chain");
            return Ok(());
        }
        let store =
            self.check_reachable(&spec.endpoint, secret.credentials.clone(), &spec.bucket, &spec.prefix).await?;
        if crate::volume::VolumeId::parse(&r.volume_id).is_some() {
            // Our own volume: its marker has the capacity as last expanded (the PV's
            // attributes keep the size it was created with).
            let marker = crate::provision::Provisioner::read_marker(store.as_ref(), &spec.bucket, &spec.prefix).await;
            if let Ok(Some(m)) = marker {
                if m.capacity > 0 && rec.config.capacity.is_none_or(|c| (m.capacity as u64) > c) {
                    rec.config.capacity = Some(m.capacity as u64);
                }
            }
        }
        let creds: Option<WireCredentials> = secret.credentials.map(Into::into);
        let config = ServeConfig { credentials: creds.clone(), ..rec.config.clone() };
        rec.pid = self.start_server(&rec, config).await?;
        rec.static_credentials = creds.is_some();
        self.inner.creds.lock().insert(r.volume_id.clone(), creds.clone());
        self.inner.registry.save_credentials(&r.volume_id, creds.as_ref());
        self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
        let pid = rec.pid;
        tracing::info!(volume_id = %r.volume_id, pid, "volume staged");
        Ok(())
    }

    /// Lists the volume's prefix once, so that a wrong endpoint, bucket or key fails with
    /// the store's own words before anything is mounted.
    async fn check_reachable(
        &self,
        endpoint: &crate::volume::Endpoint,
        creds: Option<s3vol_store::StaticCredentials>,
        bucket: &str,
        prefix: &str,
    ) -> CsiResult<Arc<dyn s3vol_store::ObjectStore>> {
        let store = self.inner.factory.connect(endpoint, creds).await?;
        let probe = ListRequest { prefix: prefix.to_string(), max_keys: Some(1), ..Default::default() };
        match tokio::time::timeout(REACHABILITY_TIMEOUT, store.list(bucket, &probe)).await {
            Err(_) => Err(CsiError::Unavailable(format!(
                "{} did not answer within {REACHABILITY_TIMEOUT:?}",
                store.describe()
            ))),
            Ok(Err(e)) if e.kind == s3vol_store::ErrorKind::NoSuchBucket => {
                Err(CsiError::NotFound(format!("bucket {bucket:?} does not exist on {}", store.describe())))
            }
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(_)) => Ok(store),
        }
    }

    /// The first publish of a volume staged without keys: mounts it now, with the keys of
    /// this publish's secret (or the default chain when it has none).
    async fn mount_deferred(&self, rec: &mut VolumeRecord, secret: &SecretValues) -> CsiResult<()> {
        let c = &rec.config;
        let endpoint = crate::volume::Endpoint {
            url: c.endpoint.clone(),
            region: Some(c.region.clone()),
            addressing: c.addressing.parse().map_err(|e: String| CsiError::Internal(e))?,
        };
        self.check_reachable(&endpoint, secret.credentials.clone(), &c.bucket, &c.prefix).await?;
        let creds: Option<WireCredentials> = secret.credentials.clone().map(Into::into);
        let config = ServeConfig { credentials: creds.clone(), ..rec.config.clone() };
        rec.pid = self.start_server(rec, config).await?;
        rec.deferred = false;
        rec.static_credentials = creds.is_some();
        self.inner.creds.lock().insert(rec.volume_id.clone(), creds.clone());
        self.inner.registry.save_credentials(&rec.volume_id, creds.as_ref());
        self.inner.registry.save(rec).map_err(|e| CsiError::Internal(e.to_string()))?;
        tracing::info!(volume_id = %rec.volume_id, pid = rec.pid, with_keys = creds.is_some(), "volume mounted at its first publish");
        Ok(())
    }

    async fn unstage(&self, r: pb::NodeUnstageVolumeRequest) -> CsiResult<()> {
        if r.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        if r.staging_target_path.is_empty() {
            return Err(CsiError::invalid("staging_target_path is required"));
        }
        let _guard = self.inner.inflight.claim(&r.volume_id)?;
        let staging = PathBuf::from(&r.staging_target_path);
        let rec = self.inner.registry.load(&r.volume_id);
        unmount_quietly(&staging)?;
        if let Some(rec) = rec {
            let sock = self.socket(&r.volume_id);
            let _ = tokio::task::spawn_blocking(move || {
                handoff::call(&sock, &ControlRequest::Shutdown, &[], Duration::from_secs(2))
            })
            .await;
            let slot = self.slot(&rec);
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while self.inner.launcher.alive(&slot).await && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A server that did not exit by itself is stopped; a mount pod is deleted.
            self.inner.launcher.stop(&slot).await;
        }
        self.inner.registry.remove(&r.volume_id);
        self.inner.conns.lock().remove(&r.volume_id);
        self.inner.creds.lock().remove(&r.volume_id);
        self.clear_abnormal(&r.volume_id);
        if staging.exists() {
            let _ = std::fs::remove_dir(&staging);
        }
        tracing::info!(volume_id = %r.volume_id, "volume unstaged");
        Ok(())
    }

    async fn publish(&self, r: pb::NodePublishVolumeRequest) -> CsiResult<()> {
        if r.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        if r.target_path.is_empty() {
            return Err(CsiError::invalid("target_path is required"));
        }
        if r.staging_target_path.is_empty() {
            return Err(CsiError::invalid("staging_target_path is required"));
        }
        let cap = r.volume_capability.as_ref().ok_or_else(|| CsiError::invalid("volume_capability is required"))?;
        if let Some(why) = unsupported_capability(cap) {
            return Err(CsiError::invalid(why));
        }
        let _guard = self.inner.inflight.claim(&r.volume_id)?;
        let mut rec = self.inner.registry.load(&r.volume_id).ok_or_else(|| {
            CsiError::FailedPrecondition(format!("volume {:?} is not staged on this node", r.volume_id))
        })?;
        if rec.staging_path != Path::new(&r.staging_target_path) {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {:?} is staged at {}, not {}",
                r.volume_id,
                rec.staging_path.display(),
                r.staging_target_path
            )));
        }
        let mut secret = SecretValues::from_map(&r.secrets)?;
        if let Some(identity) = rec.pod_identity.clone() {
            let subject = PodIdentity::subject(&r.volume_context)?;
            if let Some(mounted_for) = rec.identity_subject.as_ref().filter(|s| **s != subject) {
                return Err(CsiError::FailedPrecondition(format!(
                    "volume {:?} is mounted on this node for service account {mounted_for}; a pod running as {subject} cannot share that mount (pod-identity volumes are per service account)",
                    r.volume_id
                )));
            }
            let token = PodIdentity::token(&r.volume_context)?;
            secret.credentials = Some(identity.exchange(&subject, &token).await?);
            if rec.identity_subject.is_none() {
                rec.identity_subject = Some(subject);
                self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
            }
        }
        if rec.deferred {
            self.mount_deferred(&mut rec, &secret).await?;
        }
        // Credential rotation (requiresRepublish): new keys go to the running server.
        if let Some(new) = secret.credentials.map(WireCredentials::from) {
            let current = self.inner.creds.lock().get(&r.volume_id).cloned().flatten();
            if current.as_ref() != Some(&new) {
                let sock = self.socket(&r.volume_id);
                let req = ControlRequest::Rotate { credentials: new.clone() };
                let resp = tokio::task::spawn_blocking(move || handoff::call(&sock, &req, &[], CONTROL_TIMEOUT))
                    .await
                    .map_err(|e| CsiError::Internal(e.to_string()))?
                    .map_err(|e| CsiError::Unavailable(format!("rotating credentials: {e}")))?;
                if !resp.ok {
                    return Err(CsiError::Internal(format!(
                        "rotating credentials: {}",
                        resp.error.unwrap_or_default()
                    )));
                }
                self.inner.creds.lock().insert(r.volume_id.clone(), Some(new.clone()));
                self.inner.registry.save_credentials(&r.volume_id, Some(&new));
                tracing::info!(volume_id = %r.volume_id, "credentials rotated");
            }
        }
        let target = PathBuf::from(&r.target_path);
        let read_only = r.readonly || is_readonly_mode(cap);
        if is_single_writer_mode(cap) {
            // ReadWriteOncePod: one target on the node at a time (CSI: FAILED_PRECONDITION).
            if let Some(other) = rec.targets.iter().find(|t| t.path != target && s3vol_mount::is_mount_point(&t.path)) {
                return Err(CsiError::FailedPrecondition(format!(
                    "volume {:?} has access mode SINGLE_NODE_SINGLE_WRITER and is already published at {}",
                    r.volume_id,
                    other.path.display()
                )));
            }
        }
        if let Some(t) = rec.targets.iter().find(|t| t.path == target) {
            if s3vol_mount::is_mount_point(&target) {
                if t.read_only != read_only {
                    return Err(CsiError::AlreadyExists(format!(
                        "{} is already published with readonly={}",
                        target.display(),
                        t.read_only
                    )));
                }
                return Ok(());
            }
        }
        std::fs::create_dir_all(&target).map_err(|e| io_err("create target", &target, e))?;
        if !s3vol_mount::is_mount_point(&target) {
            s3vol_mount::bind_mount(&rec.staging_path, &target, read_only)
                .map_err(|e| io_err("bind mount", &target, e))?;
        }
        rec.targets.retain(|t| t.path != target);
        rec.targets.push(TargetRecord { path: target, read_only });
        self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
        Ok(())
    }

    /// A CSI ephemeral (inline) volume: kubelet publishes it with no stage, its bucket,
    /// prefix and options in the pod's `volumeAttributes` and its keys in the
    /// `nodePublishSecretRef`. It is staged here, beside the target inside the pod's
    /// volume directory (kubelet's, so it propagates like targets do), then published.
    async fn publish_ephemeral(&self, r: pb::NodePublishVolumeRequest) -> CsiResult<()> {
        if r.target_path.is_empty() {
            return Err(CsiError::invalid("target_path is required"));
        }
        if r.volume_context.get("bucket").is_none_or(|b| b.is_empty()) {
            return Err(CsiError::invalid(
                "an inline (ephemeral) volume names its bucket in the volume attribute bucket (and its prefix in prefix)",
            ));
        }
        let target = PathBuf::from(&r.target_path);
        let staging = target
            .parent()
            .ok_or_else(|| CsiError::invalid(format!("target_path {} has no parent directory", target.display())))?
            .join(EPHEMERAL_STAGING);
        let staging_target_path = staging.to_string_lossy().into_owned();
        self.stage(pb::NodeStageVolumeRequest {
            volume_id: r.volume_id.clone(),
            staging_target_path: staging_target_path.clone(),
            volume_capability: r.volume_capability.clone(),
            secrets: r.secrets.clone(),
            volume_context: r.volume_context.clone(),
            ..Default::default()
        })
        .await?;
        let volume_id = r.volume_id.clone();
        if let Err(e) = self.publish(pb::NodePublishVolumeRequest { staging_target_path, ..r }).await {
            // Nothing of a failed inline volume stays behind: kubelet retries from scratch.
            let staging = staging.to_string_lossy().into_owned();
            let _ = self.unstage(pb::NodeUnstageVolumeRequest { volume_id, staging_target_path: staging }).await;
            return Err(e);
        }
        Ok(())
    }

    async fn unpublish(&self, r: pb::NodeUnpublishVolumeRequest) -> CsiResult<()> {
        if r.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        if r.target_path.is_empty() {
            return Err(CsiError::invalid("target_path is required"));
        }
        let _guard = self.inner.inflight.claim(&r.volume_id)?;
        let target = PathBuf::from(&r.target_path);
        unmount_quietly(&target)?;
        if target.exists() {
            let _ = std::fs::remove_dir(&target);
        }
        if let Some(mut rec) = self.inner.registry.load(&r.volume_id) {
            rec.targets.retain(|t| t.path != target);
            self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
        }
        Ok(())
    }

    /// NodeExpandVolume: the controller recorded a new capacity; the running server
    /// reports it (statfs, `df` in the pods) and a hard quota allows up to it, with no
    /// remount. Kept in the volume's record, so a replacement server starts with it.
    async fn expand(&self, r: pb::NodeExpandVolumeRequest) -> CsiResult<pb::NodeExpandVolumeResponse> {
        if r.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        if r.volume_path.is_empty() {
            return Err(CsiError::invalid("volume_path is required"));
        }
        let _guard = self.inner.inflight.claim(&r.volume_id)?;
        let mut rec = self
            .inner
            .registry
            .load(&r.volume_id)
            .ok_or_else(|| CsiError::NotFound(format!("volume {:?} is not staged on this node", r.volume_id)))?;
        if !Path::new(&r.volume_path).exists() {
            return Err(CsiError::NotFound(format!("volume path {} does not exist", r.volume_path)));
        }
        // capacity_range is optional: without one there is nothing to change.
        let bytes = match r.capacity_range {
            Some(range) if range.required_bytes > 0 => range.required_bytes,
            Some(range) if range.limit_bytes > 0 => range.limit_bytes,
            Some(range) if range.required_bytes < 0 || range.limit_bytes < 0 => {
                return Err(CsiError::invalid(format!(
                    "capacity_range {{ required_bytes: {}, limit_bytes: {} }} is negative",
                    range.required_bytes, range.limit_bytes
                )))
            }
            _ => return Ok(pb::NodeExpandVolumeResponse { capacity_bytes: rec.config.capacity.unwrap_or(0) as i64 }),
        };
        if !rec.deferred {
            let sock = self.socket(&r.volume_id);
            let req = ControlRequest::SetCapacity { bytes: bytes as u64 };
            let resp = tokio::task::spawn_blocking(move || handoff::call(&sock, &req, &[], CONTROL_TIMEOUT))
                .await
                .map_err(|e| CsiError::Internal(e.to_string()))?
                .map_err(|e| CsiError::Unavailable(format!("telling the FUSE server the new capacity: {e}")))?;
            if !resp.ok {
                return Err(CsiError::Internal(format!("new capacity: {}", resp.error.unwrap_or_default())));
            }
        }
        rec.config.capacity = Some(bytes as u64);
        self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
        tracing::info!(volume_id = %r.volume_id, bytes, "volume expanded on this node");
        Ok(pb::NodeExpandVolumeResponse { capacity_bytes: bytes })
    }

    fn stats(&self, r: pb::NodeGetVolumeStatsRequest) -> CsiResult<pb::NodeGetVolumeStatsResponse> {
        if r.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        if r.volume_path.is_empty() {
            return Err(CsiError::invalid("volume_path is required"));
        }
        let path = Path::new(&r.volume_path);
        let known = self.inner.registry.load(&r.volume_id);
        if known.is_none() {
            return Err(CsiError::NotFound(format!("volume {:?} is not staged on this node", r.volume_id)));
        }
        let pending = self.inner.conditions.lock().get(&r.volume_id).cloned();
        if !self.ping(&r.volume_id) {
            // The connection is held: a statfs now would wait for the next server instead
            // of failing. Report without touching the mount.
            let message = pending.unwrap_or_else(|| {
                "FUSE server not running; a new server takes over the live connection at the next health check".into()
            });
            return Ok(pb::NodeGetVolumeStatsResponse {
                usage: Vec::new(),
                volume_condition: Some(pb::VolumeCondition { abnormal: true, message }),
            });
        }
        match nix::sys::statvfs::statvfs(path) {
            Ok(s) => {
                let bs = s.fragment_size() as i64;
                let total = s.blocks() as i64 * bs;
                let avail = s.blocks_available() as i64 * bs;
                let usage = vec![
                    pb::VolumeUsage {
                        available: avail,
                        total,
                        used: total - s.blocks_free() as i64 * bs,
                        unit: pb::volume_usage::Unit::Bytes as i32,
                    },
                    pb::VolumeUsage {
                        available: s.files_available() as i64,
                        total: s.files() as i64,
                        used: (s.files() - s.files_free()) as i64,
                        unit: pb::volume_usage::Unit::Inodes as i32,
                    },
                ];
                let condition = match pending {
                    Some(m) => pb::VolumeCondition { abnormal: true, message: m },
                    None => pb::VolumeCondition { abnormal: false, message: "mounted".into() },
                };
                Ok(pb::NodeGetVolumeStatsResponse { usage, volume_condition: Some(condition) })
            }
            Err(nix::Error::ENOENT) => {
                Err(CsiError::NotFound(format!("volume path {} does not exist", path.display())))
            }
            Err(e) => Ok(pb::NodeGetVolumeStatsResponse {
                usage: Vec::new(),
                volume_condition: Some(pb::VolumeCondition {
                    abnormal: true,
                    message: pending
                        .unwrap_or_else(|| format!("mount is broken: {e}; the node plugin is repairing it")),
                }),
            }),
        }
    }
}

fn node_cap(t: node_service_capability::rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc { r#type: t as i32 })),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        self.stage(req.into_inner()).await?;
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        self.unstage(req.into_inner()).await?;
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        if is_ephemeral(&r.volume_context) {
            self.publish_ephemeral(r).await?;
        } else {
            self.publish(r).await?;
        }
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        let volume_id = r.volume_id.clone();
        self.unpublish(r).await?;
        // An inline volume ends with its pod's unpublish (kubelet sends no unstage).
        if let Some(rec) = self.inner.registry.load(&volume_id).filter(|rec| rec.ephemeral && rec.targets.is_empty()) {
            let staging = rec.staging_path.to_string_lossy().into_owned();
            self.unstage(pb::NodeUnstageVolumeRequest { volume_id, staging_target_path: staging }).await?;
        }
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        let me = self.clone();
        let r = req.into_inner();
        let resp =
            tokio::task::spawn_blocking(move || me.stats(r)).await.map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(resp))
    }

    async fn node_expand_volume(
        &self,
        req: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        Ok(Response::new(self.expand(req.into_inner()).await?))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: vec![
                node_cap(Type::StageUnstageVolume),
                node_cap(Type::GetVolumeStats),
                node_cap(Type::VolumeCondition),
                node_cap(Type::VolumeMountGroup),
                node_cap(Type::SingleNodeMultiWriter),
                node_cap(Type::ExpandVolume),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _req: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.inner.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
