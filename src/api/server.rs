//! Serving the services on a Unix socket or TCP, with health and reflection.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::Server;

use crate::api::controller_service::ControllerService;
use crate::api::identity_service::{IdentityService, Probe};
use crate::api::node_service::NodeService;
use crate::migration::Engine;
use crate::proto;
use crate::proto::controller_server::ControllerServer;
use crate::proto::identity_server::IdentityServer;
use crate::proto::node_server::NodeServer;

/// Where a component listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket path (mode 0660).
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl Listen {
    /// Parses `unix:///path`, `tcp://host:port` or `host:port`.
    pub fn parse(s: &str) -> Result<Listen, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "'{s}': a unix socket path must be absolute (unix:///run/volmig/node.sock)"
                ));
            }
            return Ok(Listen::Unix(path));
        }
        let addr = s.strip_prefix("tcp://").unwrap_or(s);
        addr.parse()
            .map(Listen::Tcp)
            .map_err(|e| format!("'{s}' is neither unix:///path nor host:port ({e})"))
    }
}

/// Server errors.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be set up.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The address.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let err = |source| ServeError::Listen {
        what: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file left by a previous (killed) run would make bind fail.
    if path.exists() {
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// The reflection service over volmig's and health's descriptors.
fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    ServeError,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))
}

/// Runs a router on the listen address until `shutdown`; `what` names the component in logs.
async fn serve(
    router: tonic::transport::server::Router,
    listen: Listen,
    what: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    match listen {
        Listen::Unix(path) => {
            let listener = bind_unix(&path)?;
            tracing::info!(socket = %path.display(), "{what} listening");
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    shutdown,
                )
                .await?;
            let _ = std::fs::remove_file(&path);
        }
        Listen::Tcp(addr) => {
            tracing::info!(%addr, "{what} listening");
            router.serve_with_shutdown(addr, shutdown).await?;
        }
    }
    Ok(())
}

/// Serves the Node and Identity services (plus health and reflection) until `shutdown`.
pub async fn serve_node(
    engine: Engine,
    listen: Listen,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<NodeServer<NodeService>>().await;
    reporter
        .set_serving::<IdentityServer<IdentityService>>()
        .await;
    let probe_engine = engine.clone();
    let probe: Probe = Arc::new(move || {
        let engine = probe_engine.clone();
        Box::pin(async move { engine.probe().await.map_err(|e| e.to_string()) })
    });
    let manifest = HashMap::from([
        ("component".to_string(), "node".to_string()),
        ("node_id".to_string(), engine.node_id().to_string()),
    ]);
    let identity = IdentityService::new(proto::PluginCapability::NodeService, manifest, probe);
    let router = Server::builder()
        .add_service(health)
        .add_service(reflection()?)
        .add_service(IdentityServer::new(identity))
        .add_service(NodeServer::new(NodeService::new(engine)));
    serve(router, listen, "node", shutdown).await
}

/// Serves the Controller and Identity services (plus health and reflection) until `shutdown`.
pub async fn serve_controller(
    controller: ControllerService,
    listen: Listen,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<IdentityServer<IdentityService>>()
        .await;
    reporter
        .set_serving::<ControllerServer<ControllerService>>()
        .await;
    let probe: Probe = Arc::new(|| Box::pin(async { Ok(()) }));
    let manifest = HashMap::from([("component".to_string(), "controller".to_string())]);
    let identity =
        IdentityService::new(proto::PluginCapability::ControllerService, manifest, probe);
    let router = Server::builder()
        .add_service(health)
        .add_service(reflection()?)
        .add_service(IdentityServer::new(identity))
        .add_service(ControllerServer::new(controller));
    serve(router, listen, "controller", shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(
            Listen::parse("unix:///run/volmig/node.sock"),
            Ok(Listen::Unix(PathBuf::from("/run/volmig/node.sock")))
        );
        assert!(matches!(
            Listen::parse("127.0.0.1:7070"),
            Ok(Listen::Tcp(_))
        ));
        assert!(matches!(
            Listen::parse("tcp://[::1]:7070"),
            Ok(Listen::Tcp(_))
        ));
        assert!(Listen::parse("unix://relative.sock").is_err());
        assert!(Listen::parse("nonsense").is_err());
    }
}
