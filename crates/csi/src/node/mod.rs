//! The Node service: one FUSE mount per volume per node at the staging path, made here
//! with mount(2) and handed to a FUSE server process over a unix socket (SCM_RIGHTS);
//! bind mounts for each pod; credential rotation. The plugin keeps a duplicate of every
//! volume's /dev/fuse descriptor and the memfd of its server's state journal, so a dead
//! server is replaced by one serving the *same* connection: no unmount, no new mount, no
//! re-bind, and pods in any mount namespace keep working. Only when that is impossible
//! (the plugin restarted and could not take the descriptor back, or the kernel cannot
//! resend requests) is the volume mounted again.

pub mod fake_launcher;
pub mod launcher;
mod manager;
pub mod mounter;
mod node_metrics;
pub mod pod_launcher;
mod recovery;
pub mod registry;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use s3vol_handoff as handoff;
use tonic::{Request, Response, Status};

use crate::connect::StoreFactory;
use crate::pb::node_server::Node;
use crate::pb::{self, node_service_capability, NodeServiceCapability};
use launcher::Launcher;
pub use manager::VolumeManager;
use manager::{is_ephemeral, mount_group};
pub use mounter::FakeMounter;
use mounter::{Mounter, SystemMounter};

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
    /// What the admin lets inline volumes reach (the store factory applies the same
    /// policy's `file://` rule to every volume).
    pub policy: crate::policy::StorePolicy,
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

/// The CSI Node service: each gRPC call handed to the [`VolumeManager`] (which it
/// dereferences to, for the plugin's start-up and health loop). Cheap to clone.
#[derive(Clone)]
pub struct NodeService {
    manager: VolumeManager,
}

impl std::ops::Deref for NodeService {
    type Target = VolumeManager;
    fn deref(&self) -> &VolumeManager {
        &self.manager
    }
}

impl NodeService {
    /// A node service; call [`VolumeManager::recover`] once and
    /// [`VolumeManager::spawn_health_loop`] to keep mounts healthy.
    pub fn new(cfg: &NodeConfig, launcher: Arc<dyn Launcher>, factory: Arc<dyn StoreFactory>) -> std::io::Result<Self> {
        Self::with_mounter(cfg, launcher, factory, Arc::new(SystemMounter))
    }

    /// A node service over `mounter` ([`FakeMounter`] runs the lifecycle without root).
    pub fn with_mounter(
        cfg: &NodeConfig,
        launcher: Arc<dyn Launcher>,
        factory: Arc<dyn StoreFactory>,
        mounter: Arc<dyn Mounter>,
    ) -> std::io::Result<Self> {
        Ok(NodeService { manager: VolumeManager::new(cfg, launcher, factory, mounter)? })
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
        let r = req.into_inner();
        // Mounts for other fsGroups end with the volume (kubelet unpublished their pods).
        for view in self.group_views(&r.volume_id) {
            let staging = view.staging_path.to_string_lossy().into_owned();
            self.unstage(pb::NodeUnstageVolumeRequest { volume_id: view.volume_id, staging_target_path: staging })
                .await?;
        }
        self.unstage(r).await?;
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        let group = r.volume_capability.as_ref().and_then(mount_group);
        let staged_group = self.inner.registry.load(&r.volume_id).map(|rec| rec.fs_group);
        if is_ephemeral(&r.volume_context) {
            self.publish_ephemeral(r).await?;
        } else if let (Some(g), Some(staged)) = (group, staged_group) {
            if staged.as_deref() == Some(g.as_str()) {
                self.publish(r).await?;
            } else {
                self.publish_for_group(r, g).await?;
            }
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
        let (volume_id, target) = (r.volume_id.clone(), PathBuf::from(&r.target_path));
        self.unpublish(r).await?;
        // An inline volume ends with its pod's unpublish (kubelet sends no unstage), and
        // so does the mount for another fsGroup with the last pod of that group.
        if let Some(rec) = self.inner.registry.load(&volume_id).filter(|rec| rec.ephemeral && rec.targets.is_empty()) {
            let staging = rec.staging_path.to_string_lossy().into_owned();
            self.unstage(pb::NodeUnstageVolumeRequest { volume_id: volume_id.clone(), staging_target_path: staging })
                .await?;
        }
        for view in self.group_views(&volume_id).into_iter().filter(|v| v.targets.iter().any(|t| t.path == target)) {
            let view_id = view.volume_id.clone();
            let r = pb::NodeUnpublishVolumeRequest {
                volume_id: view_id.clone(),
                target_path: target.to_string_lossy().into_owned(),
            };
            self.unpublish(r).await?;
            if self.inner.registry.load(&view_id).is_some_and(|v| v.targets.is_empty()) {
                let staging = view.staging_path.to_string_lossy().into_owned();
                self.unstage(pb::NodeUnstageVolumeRequest { volume_id: view_id, staging_target_path: staging }).await?;
            }
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
