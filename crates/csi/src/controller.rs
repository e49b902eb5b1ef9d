use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::CsiError;
use crate::inflight::InFlight;
use crate::pb::controller_server::Controller;
use crate::pb::{
    self, controller_service_capability, validate_volume_capabilities_response, volume_capability,
    ControllerServiceCapability, VolumeCapability,
};
use crate::provision::{CapacityRequest, Provisioner};
use crate::snapshot::{ContentSource, SnapshotInfo};
use crate::snapshot_list::ListQuery;

/// The Controller service: provisioning against the object store.
pub struct ControllerService {
    provisioner: Arc<Provisioner>,
    inflight: InFlight,
}

impl ControllerService {
    /// A controller that provisions through `provisioner`.
    pub fn new(provisioner: Arc<Provisioner>) -> Self {
        ControllerService { provisioner, inflight: InFlight::default() }
    }
}

/// Why a capability cannot be served, or `None` when it can. Every access mode works
/// on object storage (it is shared by nature); only block volumes do not.
pub fn unsupported_capability(cap: &VolumeCapability) -> Option<String> {
    use volume_capability::access_mode::Mode;
    match &cap.access_type {
        Some(volume_capability::AccessType::Block(_)) => {
            return Some("block volumes are not supported; use a mount volume".into())
        }
        None => return Some("volume_capability.access_type is required (mount)".into()),
        Some(volume_capability::AccessType::Mount(m)) => {
            if let Err(e) = s3vol_fs::MountOptions::parse(&m.mount_flags) {
                return Some(format!("mount flags: {e}"));
            }
        }
    }
    match cap.access_mode.as_ref().map(|m| Mode::try_from(m.mode)) {
        None => Some("volume_capability.access_mode is required".into()),
        Some(Ok(Mode::Unknown)) | Some(Err(_)) => Some("volume_capability.access_mode is unknown".into()),
        Some(Ok(_)) => None,
    }
}

fn check_capabilities(caps: &[VolumeCapability]) -> Result<(), CsiError> {
    if caps.is_empty() {
        return Err(CsiError::invalid("volume_capabilities is required"));
    }
    for c in caps {
        if let Some(why) = unsupported_capability(c) {
            return Err(CsiError::invalid(why));
        }
    }
    Ok(())
}

fn capacity(range: Option<&pb::CapacityRange>) -> CapacityRequest {
    range.map(|r| CapacityRequest { required: r.required_bytes, limit: r.limit_bytes }).unwrap_or_default()
}

/// The snapshot or volume a new volume is made from, if any.
fn content_source(src: Option<&pb::VolumeContentSource>) -> Result<Option<ContentSource>, CsiError> {
    use pb::volume_content_source::Type;
    Ok(match src.map(|s| s.r#type.as_ref()) {
        None => None,
        Some(Some(Type::Snapshot(s))) if !s.snapshot_id.is_empty() => {
            Some(ContentSource::Snapshot(s.snapshot_id.clone()))
        }
        Some(Some(Type::Volume(v))) if !v.volume_id.is_empty() => Some(ContentSource::Volume(v.volume_id.clone())),
        Some(_) => return Err(CsiError::invalid("volume_content_source: a snapshot_id or volume_id is required")),
    })
}

/// A snapshot as CSI reports it.
fn snapshot_pb(s: SnapshotInfo) -> pb::Snapshot {
    pb::Snapshot {
        size_bytes: s.marker.size,
        snapshot_id: s.id,
        source_volume_id: s.marker.source_volume_id,
        creation_time: Some(prost_types::Timestamp { seconds: s.marker.created_unix, nanos: 0 }),
        ready_to_use: s.marker.ready,
        group_snapshot_id: String::new(),
    }
}

fn rpc_cap(t: controller_service_capability::rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(controller_service_capability::Rpc { r#type: t as i32 })),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let r = req.into_inner();
        if r.name.is_empty() {
            return Err(CsiError::invalid("name is required").into());
        }
        check_capabilities(&r.volume_capabilities)?;
        let source = content_source(r.volume_content_source.as_ref())?;
        let _guard = self.inflight.claim(&r.name)?;
        let v = self
            .provisioner
            .create(&r.name, capacity(r.capacity_range.as_ref()), &r.parameters, &r.secrets, source.as_ref())
            .await?;
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(pb::Volume {
                capacity_bytes: v.capacity,
                volume_id: v.id,
                volume_context: v.context,
                content_source: r.volume_content_source,
                accessible_topology: Vec::new(),
            }),
        }))
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let r = req.into_inner();
        if r.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required").into());
        }
        let _guard = self.inflight.claim(&r.volume_id)?;
        self.provisioner.delete(&r.volume_id, &r.secrets).await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        let r = req.into_inner();
        if r.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required").into());
        }
        if r.volume_capabilities.is_empty() {
            return Err(CsiError::invalid("volume_capabilities is required").into());
        }
        self.provisioner.lookup(&r.volume_id, &r.secrets).await?;
        let problems: Vec<String> = r.volume_capabilities.iter().filter_map(unsupported_capability).collect();
        let resp = if problems.is_empty() {
            pb::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: r.mutable_parameters,
                }),
                message: String::new(),
            }
        } else {
            pb::ValidateVolumeCapabilitiesResponse { confirmed: None, message: problems.join("; ") }
        };
        Ok(Response::new(resp))
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::rpc::Type;
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse {
            capabilities: vec![
                rpc_cap(Type::CreateDeleteVolume),
                rpc_cap(Type::CreateDeleteSnapshot),
                rpc_cap(Type::ListSnapshots),
                rpc_cap(Type::CloneVolume),
                rpc_cap(Type::ExpandVolume),
                rpc_cap(Type::SingleNodeMultiWriter),
            ],
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let r = req.into_inner();
        if r.name.is_empty() {
            return Err(CsiError::invalid("name is required").into());
        }
        let _guard = self.inflight.claim(&format!("snapshot/{}", r.name))?;
        let s = self.provisioner.create_snapshot(&r.name, &r.source_volume_id, &r.secrets).await?;
        Ok(Response::new(pb::CreateSnapshotResponse { snapshot: Some(snapshot_pb(s)) }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let r = req.into_inner();
        let _guard = self.inflight.claim(&format!("snapshot-id/{}", r.snapshot_id))?;
        self.provisioner.delete_snapshot(&r.snapshot_id, &r.secrets).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let r = req.into_inner();
        let q = ListQuery {
            snapshot_id: r.snapshot_id,
            source_volume_id: r.source_volume_id,
            max_entries: r.max_entries,
            starting_token: r.starting_token,
        };
        let page = self.provisioner.list_snapshots(&q, &r.secrets).await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            entries: page
                .entries
                .into_iter()
                .map(|s| pb::list_snapshots_response::Entry { snapshot: Some(snapshot_pb(s)) })
                .collect(),
            next_token: page.next_token,
        }))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        if r.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required").into());
        }
        let Some(range) = r.capacity_range.as_ref() else {
            return Err(CsiError::invalid("capacity_range is required").into());
        };
        let _guard = self.inflight.claim(&r.volume_id)?;
        let cap = self.provisioner.expand(&r.volume_id, capacity(Some(range)), &r.secrets).await?;
        // The node pushes the new size to the running mount (df, hard quotas).
        Ok(Response::new(pb::ControllerExpandVolumeResponse { capacity_bytes: cap, node_expansion_required: true }))
    }
}
