//! [`VolumeManager`]: every staged volume of the node, one [`VolumeState`] each, and the
//! CSI lifecycle (stage, publish, unpublish, unstage, expand, stats) over the
//! [`Mounter`] and [`Launcher`] seams. Recovery (crashes, restarts, upgrades) is in
//! `recovery.rs`; the gRPC service in `mod.rs` only translates calls.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use s3vol_fs::MountOptions;
use s3vol_store::ListRequest;

use super::handoff::{self, ControlRequest, ServeConfig, WireCredentials};
use super::launcher::{Launcher, ServerSlot};
use super::mounter::Mounter;
use super::node_metrics;
use super::registry::{Registry, TargetRecord, VolumeRecord};
use super::{NodeConfig, UpgradeServers};
use crate::connect::StoreFactory;
use crate::controller::unsupported_capability;
use crate::error::{CsiError, CsiResult};
use crate::inflight::InFlight;
use crate::pb::{self, volume_capability};
use crate::pod_identity::PodIdentity;
use crate::volume::{SecretValues, VolumeSpec};

/// How long a control-socket call may take.
pub(super) const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// Budget for checking the store is reachable at stage time.
pub(super) const REACHABILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where an inline volume's FUSE mount lives: beside its target, in the pod's volume dir.
pub(super) const EPHEMERAL_STAGING: &str = "s3vol-inline";

/// Whether kubelet publishes a CSI ephemeral (inline) volume (it says so in the volume
/// context when the CSIDriver asks for pod info).
pub(super) fn is_ephemeral(ctx: &HashMap<String, String>) -> bool {
    ctx.get("csi.storage.k8s.io/ephemeral").is_some_and(|v| v == "true")
}

/// How long a server may take to drain at a handover.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

pub(super) struct Inner {
    pub(super) node_id: String,
    pub(super) registry: Registry,
    pub(super) launcher: Arc<dyn Launcher>,
    pub(super) mounter: Arc<dyn Mounter>,
    pub(super) factory: Arc<dyn StoreFactory>,
    pub(super) defaults: crate::volume::Endpoint,
    pub(super) policy: crate::policy::StorePolicy,
    pub(super) inflight: InFlight,
    pub(super) upgrade_servers: UpgradeServers,
    /// What the plugin holds in memory of each staged volume.
    pub(super) volumes: Mutex<HashMap<String, VolumeState>>,
}

/// What the node plugin holds in memory of one staged volume. Its record (targets, the
/// server's pid, options) is on disk in the registry; its lock is the in-flight claim.
#[derive(Default)]
pub(super) struct VolumeState {
    /// The volume's kernel connection and journal, held so that a successor server can
    /// take over the same connection.
    pub(super) conn: Option<Conn>,
    /// The keys its server was given (`Some(None)`: the default chain), for replacements.
    pub(super) creds: Option<Option<WireCredentials>>,
    /// Why the volume is abnormal, while it is.
    pub(super) condition: Option<String>,
}

/// What the plugin holds of a volume's connection: while any descriptor of it is open,
/// the kernel keeps the mount and its queued requests alive, whatever happens to servers.
pub(super) struct Conn {
    pub(super) fuse: OwnedFd,
    pub(super) journal: OwnedFd,
}

impl Conn {
    pub(super) fn dup(&self) -> std::io::Result<Conn> {
        Ok(Conn { fuse: s3vol_mount::dup_fd(&self.fuse)?, journal: s3vol_mount::dup_fd(&self.journal)? })
    }
}

/// Owns every staged volume of this node: its record, its state in memory, its server
/// (through a [`Launcher`]) and its mounts (through a [`Mounter`]). Cheap to clone.
#[derive(Clone)]
pub struct VolumeManager {
    pub(super) inner: Arc<Inner>,
}

pub(super) fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> CsiError {
    CsiError::Internal(format!("{what} {}: {e}", path.display()))
}

pub(super) fn is_readonly_mode(cap: &pb::VolumeCapability) -> bool {
    use volume_capability::access_mode::Mode;
    cap.access_mode.as_ref().is_some_and(|m| {
        matches!(Mode::try_from(m.mode), Ok(Mode::SingleNodeReaderOnly) | Ok(Mode::MultiNodeReaderOnly))
    })
}

/// SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod): one published target at a time.
pub(super) fn is_single_writer_mode(cap: &pb::VolumeCapability) -> bool {
    use volume_capability::access_mode::Mode;
    cap.access_mode.as_ref().is_some_and(|m| Mode::try_from(m.mode) == Ok(Mode::SingleNodeSingleWriter))
}

pub(super) fn mount_group(cap: &pb::VolumeCapability) -> Option<String> {
    match &cap.access_type {
        Some(volume_capability::AccessType::Mount(m)) if !m.volume_mount_group.is_empty() => {
            Some(m.volume_mount_group.clone())
        }
        _ => None,
    }
}

/// Local directories are the node's to choose: the read cache always lives in the volume's
/// own directory (removed at unstage), and a pod author's inline volume may not point the
/// root server's staging files at a node path.
fn check_local_paths(o: &MountOptions, ephemeral: bool) -> CsiResult<()> {
    if let Some(dir) = &o.read_cache_dir {
        return Err(CsiError::invalid(format!(
            "mount option read_cache_dir={:?}: the node plugin keeps each volume's read cache in the volume's own directory; set only read_cache_size",
            dir.display()
        )));
    }
    if ephemeral && o.read_cache_size > 0 {
        // A pod author would otherwise spend the node's disk (free_space_ratio=0 included).
        return Err(CsiError::invalid(format!(
            "mount option read_cache_size={}: an inline volume cannot keep a read cache on the node's disk; use a PersistentVolume or a StorageClass that sets it",
            o.read_cache_size >> 20
        )));
    }
    match &o.cache_dir {
        Some(dir) if ephemeral => Err(CsiError::invalid(format!(
            "mount option cache_dir={:?}: an inline volume cannot choose a directory on the node",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// fsGroup semantics: the group owns everything and may write.
pub(super) fn group_options(group: &str) -> CsiResult<Vec<String>> {
    group
        .parse::<u32>()
        .map_err(|_| CsiError::invalid(format!("volume_mount_group={group:?} is not a numeric gid")))?;
    Ok(vec![format!("gid={group}"), "file_mode=0664".into(), "dir_mode=0775".into(), "umask=0002".into()])
}

/// The record id of volume `volume_id` mounted again for pods of fsGroup `group`.
pub(super) fn group_view_id(volume_id: &str, group: &str) -> String {
    format!("{volume_id}#fsGroup={group}")
}

pub(super) fn mount_flags(cap: &pb::VolumeCapability) -> Vec<String> {
    match &cap.access_type {
        Some(volume_capability::AccessType::Mount(m)) => m.mount_flags.clone(),
        _ => Vec::new(),
    }
}

impl VolumeManager {
    /// The volumes recorded in `cfg.state_dir`, managed with `launcher` and `mounter`.
    pub fn new(
        cfg: &NodeConfig,
        launcher: Arc<dyn Launcher>,
        factory: Arc<dyn StoreFactory>,
        mounter: Arc<dyn Mounter>,
    ) -> std::io::Result<Self> {
        let registry = Registry::open(&cfg.state_dir, cfg.secrets_dir.as_deref())?;
        Ok(VolumeManager {
            inner: Arc::new(Inner {
                node_id: cfg.node_id.clone(),
                registry,
                launcher,
                mounter,
                factory,
                defaults: cfg.defaults.clone(),
                policy: cfg.policy.clone(),
                inflight: InFlight::default(),
                upgrade_servers: cfg.upgrade_servers,
                volumes: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Reads or changes what the plugin holds of a volume (created empty on first use).
    pub(super) fn volume<T>(&self, volume_id: &str, f: impl FnOnce(&mut VolumeState) -> T) -> T {
        f(self.inner.volumes.lock().entry(volume_id.to_string()).or_default())
    }

    /// Records why a volume is abnormal (reported as its VolumeCondition and metric).
    pub(super) fn set_abnormal(&self, volume_id: &str, reason: String) {
        self.volume(volume_id, |v| v.condition = Some(reason));
        node_metrics::abnormal(volume_id, true);
    }

    /// The volume is healthy again (or gone).
    pub(super) fn clear_abnormal(&self, volume_id: &str) {
        self.volume(volume_id, |v| v.condition = None);
        node_metrics::abnormal(volume_id, false);
    }

    /// Runs mount operations on the blocking pool (mount(2), FUSE INIT and the mount
    /// table may block; the async workers serve other volumes meanwhile).
    pub(super) async fn mounts<T: Send + 'static>(&self, f: impl FnOnce(&dyn Mounter) -> T + Send + 'static) -> T {
        let m = self.inner.mounter.clone();
        match tokio::task::spawn_blocking(move || f(m.as_ref())).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Where the launcher's server for `rec` listens, and which one it is.
    pub(super) fn slot(&self, rec: &VolumeRecord) -> ServerSlot {
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
    pub(super) fn socket(&self, volume_id: &str) -> PathBuf {
        self.inner.launcher.socket_in(&self.inner.registry.dir(volume_id))
    }

    pub(super) async fn stage(&self, r: pb::NodeStageVolumeRequest) -> CsiResult<()> {
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
        let ephemeral = is_ephemeral(&r.volume_context);
        self.check_policy(&spec, &secret, ephemeral)?;
        let mut options = vec!["allow_other".to_string()];
        if let Some(g) = mount_group(cap) {
            options.extend(group_options(&g)?);
        }
        options.extend(spec.mount_options.iter().cloned());
        options.extend(mount_flags(cap));
        if spec.read_only || is_readonly_mode(cap) {
            options.push("ro".into());
        }
        let parsed = MountOptions::parse(&options).map_err(|e| CsiError::invalid(format!("mount options: {e}")))?;
        check_local_paths(&parsed, ephemeral)?;
        let config = ServeConfig {
            volume_id: r.volume_id.clone(),
            bucket: spec.bucket.clone(),
            prefix: spec.prefix.clone(),
            endpoint: spec.endpoint.url.clone(),
            region: spec.endpoint.region().to_string(),
            addressing: spec.endpoint.addressing.as_str().into(),
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
            let at = existing.staging_path.clone();
            let mounted = self.mounts(move |m| m.is_mount_point(&at)).await;
            if mounted && existing.staging_path == staging && existing.fingerprint == fingerprint {
                return Ok(());
            }
            if mounted {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {:?} is already staged at {} with other options",
                    r.volume_id,
                    existing.staging_path.display()
                )));
            }
            // Recorded but mounted nowhere (the node restarted, or the mount was lost): the
            // record describes nothing that serves a pod, so it gives way to this stage,
            // whatever options it had (a PV's attributes may have changed meanwhile).
            self.inner.launcher.stop(&self.slot(&existing)).await;
            self.inner.registry.remove(&r.volume_id);
            self.clear_abnormal(&r.volume_id);
            tracing::info!(volume_id = %r.volume_id, was_at = %existing.staging_path.display(), "a stale record of an unmounted volume gives way to a new stage");
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
            ephemeral,
            fs_group: mount_group(cap),
            view_of: None,
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
        self.volume(&r.volume_id, |v| v.creds = Some(creds.clone()));
        self.inner.registry.save_credentials(&r.volume_id, creds.as_ref());
        self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
        let pid = rec.pid;
        tracing::info!(volume_id = %r.volume_id, pid, "volume staged");
        Ok(())
    }

    /// What a volume may reach, by the admin's policy: an inline volume (written by a pod
    /// author) brings its own keys or pod identity, never the driver's or the node's
    /// identity, and names only the default or an allowed endpoint; a pod's token goes to
    /// no STS endpoint the admin did not choose.
    fn check_policy(&self, spec: &VolumeSpec, secret: &SecretValues, ephemeral: bool) -> CsiResult<()> {
        if let Some(sts) = spec.pod_identity.as_ref().and_then(|p| p.sts_endpoint.as_deref()) {
            self.inner.policy.check_sts_endpoint(sts, ephemeral)?;
        }
        if !ephemeral {
            return Ok(());
        }
        self.inner.policy.check_inline_endpoint(&spec.endpoint, &self.inner.defaults)?;
        if secret.credentials.is_none() && spec.pod_identity.is_none() {
            return Err(CsiError::invalid(
                "an inline volume needs its own keys (nodePublishSecretRef) or authenticationSource: pod; the driver's and the node's identity are never lent to a pod's inline volume",
            ));
        }
        Ok(())
    }

    /// Lists the volume's prefix once, so that a wrong endpoint, bucket or key fails with
    /// the store's own words before anything is mounted.
    pub(super) async fn check_reachable(
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
    pub(super) async fn mount_deferred(&self, rec: &mut VolumeRecord, secret: &SecretValues) -> CsiResult<()> {
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
        self.volume(&rec.volume_id, |v| v.creds = Some(creds.clone()));
        self.inner.registry.save_credentials(&rec.volume_id, creds.as_ref());
        self.inner.registry.save(rec).map_err(|e| CsiError::Internal(e.to_string()))?;
        tracing::info!(volume_id = %rec.volume_id, pid = rec.pid, with_keys = creds.is_some(), "volume mounted at its first publish");
        Ok(())
    }

    pub(super) async fn unstage(&self, r: pb::NodeUnstageVolumeRequest) -> CsiResult<()> {
        if r.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        if r.staging_target_path.is_empty() {
            return Err(CsiError::invalid("staging_target_path is required"));
        }
        let _guard = self.inner.inflight.claim(&r.volume_id)?;
        let staging = PathBuf::from(&r.staging_target_path);
        let rec = self.inner.registry.load(&r.volume_id);
        let at = staging.clone();
        self.mounts(move |m| m.unmount(&at)).await.map_err(|e| io_err("unmount", &staging, e))?;
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
        self.clear_abnormal(&r.volume_id);
        self.inner.volumes.lock().remove(&r.volume_id);
        if staging.exists() {
            let _ = std::fs::remove_dir(&staging);
        }
        tracing::info!(volume_id = %r.volume_id, "volume unstaged");
        Ok(())
    }

    pub(super) async fn publish(&self, r: pb::NodePublishVolumeRequest) -> CsiResult<()> {
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
            let token = identity.token(&r.volume_context)?;
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
            let current = self.volume(&r.volume_id, |v| v.creds.clone().flatten());
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
                self.volume(&r.volume_id, |v| v.creds = Some(Some(new.clone())));
                self.inner.registry.save_credentials(&r.volume_id, Some(&new));
                tracing::info!(volume_id = %r.volume_id, "credentials rotated");
            }
        }
        let target = PathBuf::from(&r.target_path);
        let read_only = r.readonly || is_readonly_mode(cap);
        let sub_path = crate::volume::sub_path(&r.volume_context)?;
        // Which of the recorded targets (and this one) are mounted, in one blocking call.
        let (paths, at) = (rec.targets.iter().map(|t| t.path.clone()).collect::<Vec<_>>(), target.clone());
        let (mounted, target_mounted) = self
            .mounts(move |m| {
                (paths.into_iter().filter(|p| m.is_mount_point(p)).collect::<Vec<_>>(), m.is_mount_point(&at))
            })
            .await;
        if is_single_writer_mode(cap) {
            // ReadWriteOncePod: one target on the node at a time (CSI: FAILED_PRECONDITION).
            if let Some(other) = rec.targets.iter().find(|t| t.path != target && mounted.contains(&t.path)) {
                return Err(CsiError::FailedPrecondition(format!(
                    "volume {:?} has access mode SINGLE_NODE_SINGLE_WRITER and is already published at {}",
                    r.volume_id,
                    other.path.display()
                )));
            }
        }
        if let Some(t) = rec.targets.iter().find(|t| t.path == target) {
            if target_mounted {
                if t.read_only != read_only {
                    return Err(CsiError::AlreadyExists(format!(
                        "{} is already published with readonly={}",
                        target.display(),
                        t.read_only
                    )));
                }
                if t.sub_path != sub_path {
                    return Err(CsiError::AlreadyExists(format!(
                        "{} is already published with subPath {:?}",
                        target.display(),
                        t.sub_path.as_deref().unwrap_or(Path::new(""))
                    )));
                }
                return Ok(());
            }
        }
        std::fs::create_dir_all(&target).map_err(|e| io_err("create target", &target, e))?;
        if !target_mounted {
            bind_target(self, &rec.staging_path, sub_path.as_deref(), &target, read_only).await?;
        }
        rec.targets.retain(|t| t.path != target);
        rec.targets.push(TargetRecord { path: target, read_only, sub_path });
        self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
        Ok(())
    }

    /// A CSI ephemeral (inline) volume: kubelet publishes it with no stage, its bucket,
    /// prefix and options in the pod's `volumeAttributes` and its keys in the
    /// `nodePublishSecretRef`. It is staged here, beside the target inside the pod's
    /// volume directory (kubelet's, so it propagates like targets do), then published.
    pub(super) async fn publish_ephemeral(&self, r: pb::NodePublishVolumeRequest) -> CsiResult<()> {
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

    /// A publish for a pod whose fsGroup is not the one the volume was staged with (two
    /// pods of different groups on one node): the volume is mounted a second time on this
    /// node, beside its staging path, with that group owning the files, and the pod gets
    /// a bind of that mount. Keys are the staged volume's (a pod-identity volume exchanges
    /// the publishing pod's token instead). The two mounts cache attributes separately,
    /// as two nodes would: opens see each other's closed files, `ls` after the TTL.
    pub(super) async fn publish_for_group(&self, r: pb::NodePublishVolumeRequest, group: String) -> CsiResult<()> {
        let main = self.inner.registry.load(&r.volume_id).ok_or_else(|| {
            CsiError::FailedPrecondition(format!("volume {:?} is not staged on this node", r.volume_id))
        })?;
        if main.staging_path != Path::new(&r.staging_target_path) {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {:?} is staged at {}, not {}",
                r.volume_id,
                main.staging_path.display(),
                r.staging_target_path
            )));
        }
        let view_id = group_view_id(&r.volume_id, &group);
        let staging = main.staging_path.with_file_name(format!("s3vol-fsgroup-{group}"));
        if self.inner.registry.load(&view_id).is_none() {
            let _guard = self.inner.inflight.claim(&view_id)?;
            std::fs::create_dir_all(&staging).map_err(|e| io_err("create staging path", &staging, e))?;
            let staged_group = match &main.fs_group {
                Some(g) => group_options(g)?,
                None => Vec::new(),
            };
            let mut options: Vec<String> =
                main.config.options.iter().filter(|o| !staged_group.contains(o)).cloned().collect();
            let at = options.len().min(1);
            options.splice(at..at, group_options(&group)?);
            let mut rec = VolumeRecord {
                volume_id: view_id.clone(),
                staging_path: staging.clone(),
                fingerprint: format!("{}-fsgroup-{group}", main.fingerprint),
                config: ServeConfig { volume_id: view_id.clone(), options, ..main.config.clone() },
                targets: Vec::new(),
                pid: 0,
                static_credentials: main.static_credentials,
                deferred: main.deferred || main.pod_identity.is_some(),
                resources: main.resources.clone(),
                pod_identity: main.pod_identity.clone(),
                identity_subject: None,
                ephemeral: false,
                fs_group: Some(group.clone()),
                view_of: Some(r.volume_id.clone()),
            };
            if !rec.deferred {
                let creds = self.volume(&r.volume_id, |v| v.creds.clone().flatten());
                let config = ServeConfig { credentials: creds.clone(), ..rec.config.clone() };
                rec.pid = self.start_server(&rec, config).await?;
                self.volume(&view_id, |v| v.creds = Some(creds.clone()));
                self.inner.registry.save_credentials(&view_id, creds.as_ref());
            }
            self.inner.registry.save(&rec).map_err(|e| CsiError::Internal(e.to_string()))?;
            tracing::info!(volume_id = %r.volume_id, fs_group = %group, "a pod of another fsGroup: the volume is mounted again on this node for that group");
        }
        let staging_target_path = staging.to_string_lossy().into_owned();
        self.publish(pb::NodePublishVolumeRequest { volume_id: view_id, staging_target_path, ..r }).await
    }

    /// The per-fsGroup mounts of `volume_id` on this node.
    pub(super) fn group_views(&self, volume_id: &str) -> Vec<VolumeRecord> {
        self.inner.registry.all().into_iter().filter(|v| v.view_of.as_deref() == Some(volume_id)).collect()
    }

    pub(super) async fn unpublish(&self, r: pb::NodeUnpublishVolumeRequest) -> CsiResult<()> {
        if r.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        if r.target_path.is_empty() {
            return Err(CsiError::invalid("target_path is required"));
        }
        let _guard = self.inner.inflight.claim(&r.volume_id)?;
        let target = PathBuf::from(&r.target_path);
        let at = target.clone();
        self.mounts(move |m| m.unmount(&at)).await.map_err(|e| io_err("unmount", &target, e))?;
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
    pub(super) async fn expand(&self, r: pb::NodeExpandVolumeRequest) -> CsiResult<pb::NodeExpandVolumeResponse> {
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

    pub(super) fn stats(&self, r: pb::NodeGetVolumeStatsRequest) -> CsiResult<pb::NodeGetVolumeStatsResponse> {
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
        let pending = self.volume(&r.volume_id, |v| v.condition.clone());
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

/// Binds the staged volume (or its `sub` directory, created unless read-only) at
/// `target`. A sub-path that is a symlink, a file or missing is the PV's error
/// (INVALID_ARGUMENT, naming it), not the node's.
pub(super) async fn bind_target(
    manager: &VolumeManager,
    staging: &Path,
    sub: Option<&Path>,
    target: &Path,
    read_only: bool,
) -> CsiResult<()> {
    let (source, sub, at) = (staging.to_path_buf(), sub.map(Path::to_path_buf), target.to_path_buf());
    let shown = sub.clone();
    manager
        .mounts(move |m| match &sub {
            None => m.bind(&source, &at, read_only),
            Some(sub) => m.bind_subdir(&source, sub, &at, read_only, !read_only),
        })
        .await
        .map_err(|e| match (e.kind(), shown) {
            (std::io::ErrorKind::InvalidInput, Some(sub)) => {
                CsiError::invalid(format!("volume attribute subPath={:?}: {e}", sub.display().to_string()))
            }
            _ => io_err("bind mount", target, e),
        })
}
