//! Serving the services on a Unix socket or TCP, with health and reflection,
//! behind the authorization layer and within the configured limits.
//!
//! TCP is served with mutual TLS when certificates are configured; plaintext
//! TCP is allowed on loopback addresses, and elsewhere only with an explicit
//! `--insecure-plaintext`. A unix socket is authenticated by the operating
//! system: its mode and group decide who may connect.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tonic::transport::Server;
use tower::layer::util::{Identity, Stack};

use crate::api::auth::{AuthLayer, Policy, PolicyError, SharedPolicy};
use crate::api::listener::{self, CallsLayer, Limits};
use crate::api::peer_check::PeerCheckLayer;
use crate::api::tls::{self, TlsError, TlsFiles, Trust};
use crate::api::unix_socket::bind_unix;

use crate::api::controller_service::ControllerService;
use crate::api::fleet_service::FleetService;
use crate::api::identity_service::{IdentityService, Probe};
use crate::api::node_service::NodeService;
use crate::config::{ConnectionConfig, SecurityConfig};
use crate::migration::Engine;
use crate::proto;
use crate::proto::controller_server::ControllerServer;
use crate::proto::fleet_server::FleetServer;
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

/// How a service is exposed: transport security, who may call what, and
/// the limits every caller is held to.
#[derive(Clone)]
pub struct Exposure {
    /// Serve TCP with mutual TLS using these files.
    pub tls: Option<TlsFiles>,
    /// What peers are verified against, at the handshake and at every
    /// request (read from `tls`'s CA and CRL files).
    pub trust: Option<Arc<Trust>>,
    /// Allow plaintext TCP on a non-loopback address.
    pub insecure_plaintext: bool,
    /// Accepted identities and tokens (replaced when the configuration is reloaded).
    pub policy: SharedPolicy,
    /// Mode of a unix socket.
    pub socket_mode: u32,
    /// Group of a unix socket (`None`: `volmig` when it exists).
    pub socket_group: Option<String>,
    /// Most concurrent calls on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Largest request message, bytes.
    pub max_request_bytes: usize,
    /// Most connections open at once on the listener.
    pub max_connections: usize,
    /// Where to serve only the health service, in plaintext (probes).
    pub health_listen: Option<SocketAddr>,
    /// Bounds on connections before and after authentication.
    pub connections: ConnectionConfig,
}

impl Exposure {
    /// Local-only defaults: no TLS, no identities or tokens (so only unix
    /// socket callers are authorized), default socket mode and limits.
    pub fn local_only() -> Exposure {
        Exposure {
            tls: None,
            trust: None,
            insecure_plaintext: false,
            policy: SharedPolicy::new(Policy::local_only(), 0),
            socket_mode: crate::config::DEFAULT_SOCKET_MODE,
            socket_group: None,
            max_concurrent_streams: crate::config::DEFAULT_MAX_STREAMS,
            max_request_bytes: crate::config::DEFAULT_MAX_REQUEST,
            max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
            health_listen: None,
            connections: ConnectionConfig::default(),
        }
    }

    /// What a component serves on and how: its listener, the exposure its
    /// security settings describe, and the credentials it presents to the
    /// components it calls (the same certificate, and its token file).
    pub fn for_component(
        listen: &str,
        config: &SecurityConfig,
    ) -> anyhow::Result<(Listen, Exposure, crate::api::client::Credentials)> {
        let listen = Listen::parse(listen).map_err(anyhow::Error::msg)?;
        let exposure = Exposure::from_config(config)?;
        let credentials = crate::api::client::Credentials::load(
            exposure.tls.clone(),
            config.token_file.as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        Ok((listen, exposure, credentials))
    }

    /// The exposure a component's security settings describe; reads the CA
    /// and CRL files (the certificate and key are read when the listener starts).
    pub fn from_config(config: &SecurityConfig) -> Result<Exposure, ServeError> {
        let tls = TlsFiles::from_parts(
            config.tls_ca.clone(),
            config.tls_cert.clone(),
            config.tls_key.clone(),
        )?;
        let tls = TlsFiles::with_crl(tls, config.tls_crl.clone())?;
        let trust = tls.as_ref().map(TlsFiles::trust).transpose()?.map(Arc::new);
        let policy = Policy::new(&config.identities, &config.tokens)?;
        Ok(Exposure {
            tls,
            trust,
            insecure_plaintext: config.insecure_plaintext,
            policy: SharedPolicy::new(policy, config.connections.max_auth_failures_per_minute),
            socket_mode: config.socket_mode,
            socket_group: config.socket_group.clone(),
            max_concurrent_streams: config.max_concurrent_streams,
            max_request_bytes: config.max_request_bytes,
            max_connections: config.max_connections,
            health_listen: parse_health_listen(&config.health_listen)?,
            connections: config.connections.clone(),
        })
    }

    /// The main listener's bounds (one value per server: its connections'
    /// calls are counted by the layer [`Exposure::builder`] adds).
    fn limits(&self) -> Limits {
        Limits::new(self.max_connections, &self.connections)
    }

    fn builder(&self, limits: &Limits) -> Server<Layers> {
        let server = Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams.max(1))
            // Metadata is small; a peer sending megabytes of headers is not a client.
            .http2_max_header_list_size(MAX_HEADER_LIST)
            // A peer that vanished without closing (host gone) frees its
            // streams and watchers after a missed ping, not never.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            // Each request's span continues the caller's trace.
            .trace_fn(crate::telemetry::export::server_span);
        with_max_age(server, limits)
            .layer(PeerCheckLayer::new(self.trust.clone()))
            .layer(AuthLayer::new(self.policy.clone()))
            // Inside authorization: refused calls do not keep a connection alive.
            .layer(limits.lifetimes.layer())
    }
}

/// The layers every request passes: the peer re-check, authorization, then
/// counting calls.
type Layers = Stack<CallsLayer, Stack<AuthLayer, Stack<PeerCheckLayer, Identity>>>;

/// Past its maximum age, a connection is closed gracefully (GOAWAY: the
/// client opens a new one for its next call) once its calls are over; the
/// listener's watchdog ends it after the grace period if they are not.
fn with_max_age(server: Server, limits: &Limits) -> Server {
    match limits.lifetimes.lifetime().max_age {
        Some(age) => server.max_connection_age(age),
        None => server,
    }
}

/// How often an idle connection is pinged, and how long a ping may go unanswered.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Largest header block accepted from a client.
const MAX_HEADER_LIST: u32 = 64 * 1024;

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
    /// The unix socket path is taken by something that is not a stale socket.
    #[error("cannot listen on {path}: {reason}")]
    SocketInUse {
        /// The socket path.
        path: String,
        /// What is there.
        reason: String,
    },
    /// A plaintext listener on an address other hosts can reach.
    #[error("refusing to serve plaintext on {addr}, which is not a loopback address: configure tls_ca, tls_cert and tls_key, or pass --insecure-plaintext")]
    PlaintextRefused {
        /// The address.
        addr: SocketAddr,
    },
    /// `health_listen` is not a `host:port`.
    #[error("health_listen '{0}' is not a host:port address")]
    BadHealthListen(String),
    /// The unix socket's directory could let someone else replace the socket.
    #[error("refusing the unix socket directory {dir}: {reason}")]
    UnsafeSocketDir {
        /// The directory.
        dir: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The socket group does not exist.
    #[error("unix socket group '{0}' does not exist")]
    NoSuchGroup(String),
    /// The identities or tokens are unusable.
    #[error("authorization settings: {0}")]
    Policy(#[from] PolicyError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The health-only listen address (`""`: none).
fn parse_health_listen(text: &str) -> Result<Option<SocketAddr>, ServeError> {
    if text.is_empty() {
        return Ok(None);
    }
    match Listen::parse(text) {
        Ok(Listen::Tcp(addr)) => Ok(Some(addr)),
        _ => Err(ServeError::BadHealthListen(text.escape_debug().to_string())),
    }
}

/// Serves only the health service, in plaintext, on `exposure.health_listen`
/// until the returned guard is dropped. It tells nothing but SERVING or not,
/// which every caller of the main listener may ask too; kubelet's gRPC
/// probes cannot present a client certificate to a mutual-TLS listener.
async fn spawn_health(
    exposure: &Exposure,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    what: &'static str,
) -> Result<Option<tokio_util::sync::DropGuard>, ServeError> {
    let Some(addr) = exposure.health_listen else {
        return Ok(None);
    };
    let listener = bind_tcp(addr).await?;
    tracing::info!(%addr, "{what} health listening (plaintext, grpc.health.v1 only)");
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let limits = Limits::health(&exposure.connections);
    let mut server = with_max_age(Server::builder(), &limits)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(limits.lifetimes.layer());
    tokio::spawn(async move {
        let served = server
            .add_service(health)
            .serve_with_incoming_shutdown(
                listener::tcp(listener, limits),
                stopped.cancelled_owned(),
            )
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "health listener failed");
        }
    });
    Ok(Some(stop.drop_guard()))
}

async fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen {
            what: addr.to_string(),
            source,
        })
}

/// The reflection services (v1, and v1alpha for clients such as Python's
/// grpcio-reflection that only ask that one) over volmig's and health's
/// descriptors.
#[allow(clippy::type_complexity)]
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let v1alpha = builder()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    Ok((v1, v1alpha))
}

/// Runs a router on the listen address until `shutdown`; `what` names the component in logs.
async fn serve(
    router: tonic::transport::server::Router<Layers>,
    listen: Listen,
    exposure: &Exposure,
    limits: Limits,
    what: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    match listen {
        Listen::Unix(path) => {
            let listener = bind_unix(
                &path,
                exposure.socket_mode,
                exposure.socket_group.as_deref(),
            )?;
            tracing::info!(socket = %path.display(), mode = format!("{:o}", exposure.socket_mode), "{what} listening");
            router
                .serve_with_incoming_shutdown(
                    listener::unix(listener, exposure.max_connections),
                    shutdown,
                )
                .await?;
            let _ = std::fs::remove_file(&path);
        }
        Listen::Tcp(addr) => {
            let listener = bind_tcp(addr).await?;
            match &exposure.tls {
                Some(files) => {
                    let trust = match &exposure.trust {
                        Some(trust) => trust.clone(),
                        None => Arc::new(files.trust()?),
                    };
                    let config = tls::server_config(files, trust)?;
                    tracing::info!(%addr, "{what} listening (mutual TLS)");
                    router
                        .serve_with_incoming_shutdown(
                            listener::tls(listener, config, limits),
                            shutdown,
                        )
                        .await?;
                }
                None => {
                    if !addr.ip().is_loopback() {
                        if !exposure.insecure_plaintext {
                            return Err(ServeError::PlaintextRefused { addr });
                        }
                        tracing::warn!(%addr, "{what} serving PLAINTEXT on a non-loopback address (--insecure-plaintext): anyone on the network can read and forge its traffic");
                    }
                    tracing::info!(%addr, "{what} listening (plaintext)");
                    router
                        .serve_with_incoming_shutdown(listener::tcp(listener, limits), shutdown)
                        .await?;
                }
            }
        }
    }
    Ok(())
}

/// Serves the Node and Identity services (plus health and reflection) until `shutdown`.
pub async fn serve_node(
    engine: Engine,
    listen: Listen,
    exposure: Exposure,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let health_probe = health.clone();
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
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let limit = exposure.max_request_bytes;
    let limits = exposure.limits();
    let router = exposure
        .builder(&limits)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(IdentityServer::new(identity).max_decoding_message_size(limit))
        .add_service(NodeServer::new(NodeService::new(engine)).max_decoding_message_size(limit));
    let _health = spawn_health(&exposure, health_probe, "node").await?;
    serve(router, listen, &exposure, limits, "node", shutdown).await
}

/// Serves the Controller and Identity services (plus health and reflection) until `shutdown`.
pub async fn serve_controller(
    controller: ControllerService,
    listen: Listen,
    exposure: Exposure,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let health_probe = health.clone();
    reporter
        .set_serving::<IdentityServer<IdentityService>>()
        .await;
    reporter
        .set_serving::<ControllerServer<ControllerService>>()
        .await;
    reporter.set_serving::<FleetServer<FleetService>>().await;
    let probe: Probe = Arc::new(|| Box::pin(async { Ok(()) }));
    let manifest = HashMap::from([("component".to_string(), "controller".to_string())]);
    let identity =
        IdentityService::new(proto::PluginCapability::ControllerService, manifest, probe);
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let limit = exposure.max_request_bytes;
    let limits = exposure.limits();
    let router = exposure
        .builder(&limits)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(IdentityServer::new(identity).max_decoding_message_size(limit))
        .add_service(
            FleetServer::new(FleetService::new(controller.controller().clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(ControllerServer::new(controller).max_decoding_message_size(limit));
    let _health = spawn_health(&exposure, health_probe, "controller").await?;
    serve(router, listen, &exposure, limits, "controller", shutdown).await
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

    #[test]
    fn health_listen_is_a_tcp_address_or_off() {
        assert_eq!(parse_health_listen("").expect("off"), None);
        assert_eq!(
            parse_health_listen("0.0.0.0:7461").expect("tcp"),
            Some(SocketAddr::from(([0, 0, 0, 0], 7461)))
        );
        for bad in ["unix:///run/volmig/health.sock", "localhost", "7461"] {
            assert!(
                matches!(
                    parse_health_listen(bad),
                    Err(ServeError::BadHealthListen(_))
                ),
                "{bad}"
            );
        }
    }
}
