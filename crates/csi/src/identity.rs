use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::pb::identity_server::Identity;
use crate::pb::{
    self, plugin_capability, GetPluginCapabilitiesResponse, GetPluginInfoResponse, PluginCapability, ProbeResponse,
};

/// Answers "is the plugin ready": the node half needs /dev/fuse and its state dir.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The Identity service: name, version, capabilities, readiness.
pub struct IdentityService {
    name: String,
    controller: bool,
    ready: ReadinessCheck,
}

impl IdentityService {
    /// `controller`: whether the Controller service is served by this process.
    pub fn new(name: impl Into<String>, controller: bool, ready: ReadinessCheck) -> Self {
        IdentityService { name: name.into(), controller, ready }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = Vec::new();
        if self.controller {
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::Service(plugin_capability::Service {
                    r#type: plugin_capability::service::Type::ControllerService as i32,
                })),
            });
        }
        capabilities.push(PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(plugin_capability::VolumeExpansion {
                r#type: plugin_capability::volume_expansion::Type::Online as i32,
            })),
        });
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities }))
    }

    async fn probe(&self, _req: Request<pb::ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        match (self.ready)() {
            Ok(()) => Ok(Response::new(ProbeResponse { ready: Some(true) })),
            Err(why) => Err(Status::failed_precondition(format!("not ready: {why}"))),
        }
    }
}
