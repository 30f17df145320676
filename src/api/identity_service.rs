//! The CSI-style Identity service, shared by node and controller.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto;
use crate::proto::identity_server::Identity;

/// A readiness check: `Ok` when ready, `Err(reason)` otherwise.
pub type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Identity of one component.
pub struct IdentityService {
    capability: proto::PluginCapability,
    manifest: HashMap<String, String>,
    probe: Probe,
}

impl IdentityService {
    /// Identity for a component with one capability, its manifest and readiness probe.
    pub fn new(
        capability: proto::PluginCapability,
        manifest: HashMap<String, String>,
        probe: Probe,
    ) -> Self {
        IdentityService {
            capability,
            manifest,
            probe,
        }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<proto::GetPluginInfoRequest>,
    ) -> Result<Response<proto::GetPluginInfoResponse>, Status> {
        Ok(Response::new(proto::GetPluginInfoResponse {
            name: "volmig".to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: self.manifest.clone(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<proto::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<proto::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(proto::GetPluginCapabilitiesResponse {
            capabilities: vec![self.capability as i32],
        }))
    }

    async fn probe(
        &self,
        _req: Request<proto::ProbeRequest>,
    ) -> Result<Response<proto::ProbeResponse>, Status> {
        let result = (self.probe)().await;
        Ok(Response::new(proto::ProbeResponse {
            ready: result.is_ok(),
            message: result.err().unwrap_or_default(),
        }))
    }
}
