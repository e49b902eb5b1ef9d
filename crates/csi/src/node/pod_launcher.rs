//! Mount pods: each volume's FUSE server runs in a pod of its own on this node, outside
//! the node plugin's container, so a plugin restart, a liveness restart or a DaemonSet
//! rollout touches no server. The pods are unprivileged: no /dev/fuse, no capabilities,
//! a read-only root and a non-root user. The plugin mounts, keeps the connection and
//! hands it to the pod's server over a control socket in a hostPath directory that only
//! the pod's user and root can enter.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use super::handoff::{self, ControlRequest};
use super::launcher::{Launcher, ServerSlot};
use super::registry::Registry;
use crate::error::{CsiError, CsiResult};

/// The user mount pods run as (the image's non-root user).
pub const MOUNT_POD_UID: u32 = 65532;
/// Where the control directory is mounted inside a mount pod.
const POD_CONTROL_DIR: &str = "/run/s3vol-server";
/// Label every mount pod carries.
pub const MOUNT_POD_LABEL: &str = "app.kubernetes.io/name=s3vol-mount";
/// Label naming the node a mount pod serves (a hash when the name is not a label value).
pub const NODE_LABEL: &str = "s3vol.csi.io/node";
/// Label naming the volume (its state-directory key).
pub const VOLUME_LABEL: &str = "s3vol.csi.io/volume";
/// Annotation with the full volume id.
pub const VOLUME_ID_ANNOTATION: &str = "s3vol.csi.io/volume-id";
/// How long a restarted mount pod container may take to listen again before the pod is
/// replaced (the kubelet's restart back-off grows; a new pod starts at once).
const RESTART_WAIT: Duration = Duration::from_secs(5);
/// How long a new mount pod may take to listen.
const START_WAIT: Duration = Duration::from_secs(120);

/// What a [`PodLauncher`] needs to know about where it runs.
#[derive(Debug, Clone)]
pub struct PodLauncherConfig {
    /// Namespace of the node plugin; mount pods are created there.
    pub namespace: String,
    /// This node's name (`spec.nodeName` of the mount pods).
    pub node_name: String,
    /// Image of the mount pods: the node plugin's own, so servers and plugin agree.
    pub image: String,
    /// Log filter for the servers (`RUST_LOG`).
    pub log_filter: String,
}

/// Starts FUSE servers as mount pods through the Kubernetes API.
pub struct PodLauncher {
    pods: Api<Pod>,
    cfg: PodLauncherConfig,
}

fn api_err(what: &str, e: kube::Error) -> CsiError {
    CsiError::Unavailable(format!("Kubernetes API: {what}: {e}"))
}

/// The Ping answer of a control socket: `Some(serving)`, or `None` when nothing answers.
fn ping(control: &Path) -> Option<bool> {
    handoff::call(control, &ControlRequest::Ping, &[], Duration::from_secs(2)).ok().map(|r| r.serving)
}

/// The image a mount pod runs (its one container's).
fn pod_image(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.containers.first()?.image.as_deref()
}

/// A value Kubernetes accepts as a label value (at most 63 characters).
fn label_value(s: &str) -> String {
    let ok = s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if ok {
        s.to_string()
    } else {
        Registry::key(s)
    }
}

impl PodLauncher {
    /// A launcher using `client`.
    pub fn new(client: kube::Client, cfg: PodLauncherConfig) -> Self {
        PodLauncher { pods: Api::namespaced(client, &cfg.namespace), cfg }
    }

    /// Connects with the in-cluster configuration (or `KUBECONFIG`) and finds the image
    /// to use: `image` when given, else that of the plugin's own pod (`pod_name`), so a
    /// rollout of the plugin's image also moves new servers to it.
    pub async fn discover(
        node_name: &str,
        namespace: &str,
        pod_name: Option<&str>,
        image: Option<&str>,
        log_filter: &str,
    ) -> CsiResult<Self> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| CsiError::Unavailable(format!("Kubernetes API client (in-cluster or KUBECONFIG): {e}")))?;
        let image = match image {
            Some(i) => i.to_string(),
            None => {
                let name = pod_name.ok_or_else(|| {
                    CsiError::invalid("mount pods need the plugin's pod name (POD_NAME) or --mount-pod-image")
                })?;
                let own: Api<Pod> = Api::namespaced(client.clone(), namespace);
                let pod =
                    own.get(name).await.map_err(|e| api_err(&format!("reading own pod {namespace}/{name}"), e))?;
                let containers = pod.spec.map(|s| s.containers).unwrap_or_default();
                let c = containers.iter().find(|c| c.name == "s3vol").or(containers.first());
                c.and_then(|c| c.image.clone())
                    .ok_or_else(|| CsiError::Internal(format!("own pod {namespace}/{name} has no container image")))?
            }
        };
        Ok(Self::new(
            client,
            PodLauncherConfig {
                namespace: namespace.to_string(),
                node_name: node_name.to_string(),
                image,
                log_filter: log_filter.to_string(),
            },
        ))
    }

    /// The mount pod's name for a volume on this node (stable, so a restarted plugin
    /// finds it again).
    pub fn pod_name(&self, volume_id: &str) -> String {
        format!("s3vol-mount-{}", Registry::key(&format!("{}\0{}", self.cfg.node_name, volume_id)))
    }

    /// The directory shared with the pod: the control socket lives there.
    fn control_dir(slot: &ServerSlot) -> PathBuf {
        slot.control.parent().map(Path::to_path_buf).unwrap_or_else(|| slot.dir.join("server"))
    }

    /// The Pod object for a volume's server.
    pub fn pod_for(&self, slot: &ServerSlot) -> CsiResult<Pod> {
        let r = &slot.resources;
        let mut requests = serde_json::Map::new();
        requests.insert("cpu".into(), r.cpu.clone().unwrap_or_else(|| "10m".into()).into());
        requests.insert("memory".into(), r.memory.clone().unwrap_or_else(|| "64Mi".into()).into());
        let mut limits = serde_json::Map::new();
        if let Some(m) = &r.memory {
            limits.insert("memory".into(), m.clone().into());
        }
        let control_file = Path::new(POD_CONTROL_DIR).join(
            slot.control.file_name().ok_or_else(|| CsiError::Internal("control socket has no file name".into()))?,
        );
        let host_dir = Self::control_dir(slot);
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod_name(&slot.volume_id),
                "namespace": self.cfg.namespace,
                "labels": {
                    "app.kubernetes.io/name": "s3vol-mount",
                    "app.kubernetes.io/part-of": "s3vol",
                    NODE_LABEL: label_value(&self.cfg.node_name),
                    VOLUME_LABEL: Registry::key(&slot.volume_id),
                },
                "annotations": { VOLUME_ID_ANNOTATION: slot.volume_id },
            },
            "spec": {
                "nodeName": self.cfg.node_name,
                "restartPolicy": "Always",
                "priorityClassName": "system-node-critical",
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "terminationGracePeriodSeconds": 30,
                "tolerations": [{ "operator": "Exists" }],
                "securityContext": {
                    "runAsUser": MOUNT_POD_UID,
                    "runAsGroup": MOUNT_POD_UID,
                    "runAsNonRoot": true,
                    "seccompProfile": { "type": "RuntimeDefault" },
                },
                "containers": [{
                    "name": "fuse-server",
                    "image": self.cfg.image,
                    "args": ["fuse-server", "--control", control_file.to_string_lossy()],
                    "env": [{ "name": "RUST_LOG", "value": self.cfg.log_filter }],
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "privileged": false,
                        "capabilities": { "drop": ["ALL"] },
                    },
                    "resources": { "requests": requests, "limits": limits },
                    "volumeMounts": [
                        { "name": "control", "mountPath": POD_CONTROL_DIR },
                        { "name": "tmp", "mountPath": "/tmp" },
                    ],
                }],
                "volumes": [
                    { "name": "control", "hostPath": { "path": host_dir.to_string_lossy(), "type": "Directory" } },
                    // The root is read-only; staging files of writes go to /tmp.
                    { "name": "tmp", "emptyDir": {} },
                ],
            },
        });
        serde_json::from_value(pod).map_err(|e| CsiError::Internal(format!("building the mount pod: {e}")))
    }

    /// Creates the control directory, owned by the pod's user, closed to everyone else.
    fn prepare_control_dir(slot: &ServerSlot) -> CsiResult<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = Self::control_dir(slot);
        let err = |e: std::io::Error| CsiError::Internal(format!("mount pod control dir {}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(err)?;
        let id = Some(nix::unistd::Uid::from_raw(MOUNT_POD_UID));
        nix::unistd::chown(&dir, id, Some(nix::unistd::Gid::from_raw(MOUNT_POD_UID)))
            .map_err(|e| err(std::io::Error::from(e)))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
    }

    async fn get(&self, name: &str) -> CsiResult<Option<Pod>> {
        self.pods.get_opt(name).await.map_err(|e| api_err(&format!("reading pod {name}"), e))
    }

    /// Deletes a pod and waits until it is gone (its server has exited).
    async fn delete_and_wait(&self, name: &str) -> CsiResult<()> {
        let dp = DeleteParams { grace_period_seconds: Some(1), ..Default::default() };
        match self.pods.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(api_err(&format!("deleting pod {name}"), e)),
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.get(name).await?.is_some() {
            if Instant::now() > deadline {
                return Err(CsiError::Unavailable(format!("mount pod {name} still exists 60 s after its deletion")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!(pod = name, "mount pod deleted");
        Ok(())
    }

    /// Waits until the server in the pod answers Ping with no volume yet.
    async fn wait_idle(control: &Path, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let c = control.to_path_buf();
            if tokio::task::spawn_blocking(move || ping(&c)).await.ok().flatten() == Some(false) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes mount pods of this node whose volume is not in `keep` (volume ids): pods
    /// left by a volume unstaged while the plugin was down.
    pub async fn delete_orphans(&self, keep: &[String]) -> CsiResult<usize> {
        let lp = ListParams::default()
            .labels(&format!("{MOUNT_POD_LABEL},{NODE_LABEL}={}", label_value(&self.cfg.node_name)));
        let pods = self.pods.list(&lp).await.map_err(|e| api_err("listing mount pods", e))?;
        let keep: Vec<String> = keep.iter().map(|v| self.pod_name(v)).collect();
        let mut n = 0;
        for p in pods.items {
            let Some(name) = p.metadata.name else { continue };
            if !keep.contains(&name) {
                tracing::info!(pod = %name, "deleting a mount pod whose volume is no longer staged here");
                self.delete_and_wait(&name).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[async_trait]
impl Launcher for PodLauncher {
    fn socket_in(&self, volume_dir: &Path) -> PathBuf {
        volume_dir.join("server").join("control.sock")
    }

    async fn launch(&self, slot: &ServerSlot) -> CsiResult<u32> {
        Self::prepare_control_dir(slot)?;
        let name = self.pod_name(&slot.volume_id);
        if let Some(pod) = self.get(&name).await? {
            let reusable = pod.metadata.deletion_timestamp.is_none() && pod_image(&pod) == Some(&self.cfg.image);
            if reusable && Self::wait_idle(&slot.control, RESTART_WAIT).await {
                // The kubelet restarted the pod's container: its new server waits for the volume.
                tracing::info!(pod = %name, "the mount pod's restarted server takes the volume");
                return Ok(0);
            }
            self.delete_and_wait(&name).await?;
        }
        let _ = std::fs::remove_file(&slot.control);
        let pod = self.pod_for(slot)?;
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|e| api_err(&format!("creating pod {name}"), e))?;
        tracing::info!(pod = %name, image = %self.cfg.image, "mount pod created");
        if !Self::wait_idle(&slot.control, START_WAIT).await {
            return Err(CsiError::Unavailable(format!(
                "mount pod {}/{name} did not start its FUSE server within {START_WAIT:?} (kubectl -n {} describe pod {name})",
                self.cfg.namespace, self.cfg.namespace
            )));
        }
        Ok(0)
    }

    async fn alive(&self, slot: &ServerSlot) -> bool {
        let c = slot.control.clone();
        // Only a server that says it serves counts: a silent one is dead, restarting (the
        // kubelet restarts the container) or hung, and `launch` waits for a restarted
        // container before it replaces the pod, so a restart is not cut short by a delete.
        tokio::task::spawn_blocking(move || ping(&c)).await.ok().flatten() == Some(true)
    }

    async fn stop(&self, slot: &ServerSlot) {
        let name = self.pod_name(&slot.volume_id);
        if let Err(e) = self.delete_and_wait(&name).await {
            tracing::warn!(pod = %name, error = %e, "could not delete the mount pod");
        }
    }

    async fn remove_others(&self, staged: &[String]) {
        match self.delete_orphans(staged).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "mount pods of volumes no longer staged here deleted"),
            Err(e) => tracing::warn!(error = %e, "could not clean up mount pods of unstaged volumes"),
        }
    }

    async fn outdated(&self, slot: &ServerSlot) -> bool {
        match self.get(&self.pod_name(&slot.volume_id)).await {
            Ok(Some(p)) => pod_image(&p) != Some(&self.cfg.image),
            _ => false,
        }
    }
}
