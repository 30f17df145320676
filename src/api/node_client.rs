//! The controller's [`NodeAccess`] over gRPC: channels to nodes kept and
//! reused, every call bounded by the node call timeout (a stream until its
//! first event), and the caller the controller acts for named to the node.
//!
//! The controller authenticates to nodes with its certificate. Its bearer
//! token, when it has one, goes only to the nodes of its own configuration
//! whose configured endpoint is `https://` or `unix://`: a registered
//! endpoint is a place a node chose, and a token sent there could be
//! replayed against every node. The token is held only by
//! [`ConfiguredToken`], keyed by the configuration; a channel to any other
//! endpoint is built from the certificate alone.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status};

use super::client::{self, AuthChannel, Credentials, Token};
use super::controller_service::convert;
use super::tls::TlsFiles;
use crate::config::StaticNode;
use crate::controller::error::{NodeError, NodeErrorKind};
use crate::controller::model::{
    DomainInfo, NodeEvent, NodeRecord, Order, PoolInfo, PoolVolumeInfo,
};
use crate::controller::nodes::{NodeAccess, NodeEventStream};
use crate::controller::registry::{NodeEntry, NodeFacts};
use crate::proto;
use crate::proto::node_client::NodeClient;

/// A channel to a node, reused while its endpoint and the controller's client
/// certificate files stay the same (a rotated certificate opens new ones).
struct OpenChannel {
    endpoint: String,
    generation: Vec<Option<SystemTime>>,
    channel: AuthChannel,
}

/// The controller's token and the only endpoints it is presented to.
struct ConfiguredToken {
    token: Token,
    /// Configured node id → its configured endpoint, `https://` or `unix://`.
    endpoints: HashMap<String, String>,
}

impl ConfiguredToken {
    /// The token, when `node` is the configured node at its configured endpoint.
    fn for_node(&self, node: &NodeEntry) -> Option<Token> {
        (self.endpoints.get(&node.id) == Some(&node.endpoint)).then(|| self.token.clone())
    }
}

/// A configured node the controller's token would reach in plaintext.
#[derive(Debug, thiserror::Error)]
#[error("static node '{id}' is reached at {endpoint}, where the token of token_file would travel in plaintext; the controller sends its token only over https:// or unix://: reach the node over https:// (tls_ca, tls_cert, tls_key) or remove token_file")]
pub struct PlaintextTokenNode {
    /// The node's id.
    pub id: String,
    /// Its configured endpoint.
    pub endpoint: String,
}

/// Refuses a configuration whose token would be sent to a static node over
/// plaintext (the token is never sent there; better to say so at start than
/// to have the node refuse every call).
pub fn check_token_reach(
    nodes: &[StaticNode],
    credentials: &Credentials,
) -> Result<(), PlaintextTokenNode> {
    if credentials.token().is_none() {
        return Ok(());
    }
    match nodes
        .iter()
        .find(|n| !client::encrypted_or_local(&n.endpoint))
    {
        Some(n) => Err(PlaintextTokenNode {
            id: n.id.clone(),
            endpoint: n.endpoint.escape_debug().to_string(),
        }),
        None => Ok(()),
    }
}

/// Nodes reached over gRPC.
pub struct GrpcNodes {
    tls: Option<TlsFiles>,
    token: Option<ConfiguredToken>,
    timeout: Duration,
    channels: Mutex<HashMap<String, OpenChannel>>,
}

/// The node error class of a gRPC status.
fn kind(code: Code) -> NodeErrorKind {
    match code {
        Code::Ok | Code::Unknown => NodeErrorKind::Unknown,
        Code::Cancelled => NodeErrorKind::Cancelled,
        Code::InvalidArgument => NodeErrorKind::InvalidArgument,
        Code::DeadlineExceeded => NodeErrorKind::DeadlineExceeded,
        Code::NotFound => NodeErrorKind::NotFound,
        Code::AlreadyExists => NodeErrorKind::AlreadyExists,
        Code::PermissionDenied => NodeErrorKind::PermissionDenied,
        Code::ResourceExhausted => NodeErrorKind::ResourceExhausted,
        Code::FailedPrecondition => NodeErrorKind::FailedPrecondition,
        Code::Aborted => NodeErrorKind::Aborted,
        Code::OutOfRange => NodeErrorKind::OutOfRange,
        Code::Unimplemented => NodeErrorKind::Unimplemented,
        Code::Internal => NodeErrorKind::Internal,
        Code::Unavailable => NodeErrorKind::Unavailable,
        Code::DataLoss => NodeErrorKind::DataLoss,
        Code::Unauthenticated => NodeErrorKind::Unauthenticated,
    }
}

fn node_error(status: Status) -> NodeError {
    NodeError {
        kind: kind(status.code()),
        message: status.message().to_string(),
    }
}

fn timed_out(message: &str) -> NodeError {
    NodeError {
        kind: NodeErrorKind::DeadlineExceeded,
        message: message.to_string(),
    }
}

/// The `x-volmig-caller` value for `actor`: printable ASCII only.
fn caller_header(actor: &str) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    let text: String = actor.escape_default().take(256).collect();
    text.parse().ok()
}

fn events(stream: tonic::Streaming<proto::MigrationEvent>) -> NodeEventStream {
    Box::pin(stream.map(|item| {
        item.map(|e| convert::event_from_proto(&e))
            .map_err(node_error)
    }))
}

impl GrpcNodes {
    /// Nodes reached presenting the certificate of `credentials`, and its
    /// token only to the `configured` nodes reached over `https://` or
    /// `unix://`; each call bounded by `timeout`.
    pub fn new(
        credentials: Credentials,
        configured: &[StaticNode],
        timeout: Duration,
    ) -> GrpcNodes {
        let token = credentials.token().cloned().map(|token| ConfiguredToken {
            token,
            endpoints: configured
                .iter()
                .filter(|n| client::encrypted_or_local(&n.endpoint))
                .map(|n| (n.id.clone(), n.endpoint.clone()))
                .collect(),
        });
        GrpcNodes {
            tls: credentials.tls,
            token,
            timeout,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// What `node` is presented: the certificate, and the token only when
    /// [`ConfiguredToken`] has it for this node and endpoint.
    fn credentials_for(&self, node: &NodeEntry) -> Credentials {
        let token = self.token.as_ref().and_then(|t| t.for_node(node));
        Credentials::from_parts(self.tls.clone(), token)
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, OpenChannel>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client for `node`, over its open channel or a new one.
    async fn client(&self, node: &NodeEntry) -> Result<NodeClient<AuthChannel>, NodeError> {
        let generation = self
            .tls
            .as_ref()
            .map(super::tls::generation)
            .unwrap_or_default();
        if let Some(open) = self.channels().get(&node.id) {
            if open.endpoint == node.endpoint && open.generation == generation {
                return Ok(NodeClient::new(open.channel.clone()));
            }
        }
        let credentials = self.credentials_for(node);
        let channel = client::connect_with(client::Peer::Node, &node.endpoint, &credentials)
            .await
            .map_err(|e| NodeError::unavailable(e.to_string()))?;
        self.channels().insert(
            node.id.clone(),
            OpenChannel {
                endpoint: node.endpoint.clone(),
                generation,
                channel: channel.clone(),
            },
        );
        Ok(NodeClient::new(channel))
    }

    /// A request naming, for the node's audit log, the caller the controller acts for.
    fn request<T>(actor: Option<&str>, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = actor.and_then(caller_header) {
            request
                .metadata_mut()
                .insert(crate::api::auth::CALLER_HEADER, value);
        }
        request
    }

    /// Runs a call within the timeout; for a stream, until its response headers.
    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, NodeError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| timed_out("the node did not answer in time"))?
            .map(Response::into_inner)
            .map_err(node_error)
    }
}

#[tonic::async_trait]
impl NodeAccess for GrpcNodes {
    async fn info(&self, node: &NodeEntry) -> Result<NodeFacts, NodeError> {
        let mut c = self.client(node).await?;
        let info = self.timed(c.get_info(proto::GetInfoRequest {})).await?;
        Ok(convert::facts_from_proto(&info))
    }

    async fn list_pools(&self, node: &NodeEntry) -> Result<Vec<PoolInfo>, NodeError> {
        let mut c = self.client(node).await?;
        let pools = self.timed(c.list_pools(proto::ListPoolsRequest {})).await?;
        Ok(pools
            .pools
            .into_iter()
            .map(convert::pool_from_proto)
            .collect())
    }

    async fn list_disks(&self, node: &NodeEntry, domain: &str) -> Result<DomainInfo, NodeError> {
        let mut c = self.client(node).await?;
        let disks = self
            .timed(c.list_disks(proto::ListDisksRequest {
                domain: domain.to_string(),
            }))
            .await?;
        Ok(convert::disks_from_proto(disks))
    }

    async fn list_pool_volumes(
        &self,
        node: &NodeEntry,
        pool: &str,
    ) -> Result<Vec<PoolVolumeInfo>, NodeError> {
        let mut c = self.client(node).await?;
        let reply = self
            .timed(c.list_pool_volumes(proto::ListPoolVolumesRequest {
                pool: pool.to_string(),
            }))
            .await?;
        Ok(convert::pool_volumes_from_proto(reply))
    }

    async fn find_volume_users(
        &self,
        node: &NodeEntry,
        source: &str,
        exclude_domain: &str,
    ) -> Result<Vec<String>, NodeError> {
        let mut c = self.client(node).await?;
        let reply = self
            .timed(c.find_volume_users(proto::FindVolumeUsersRequest {
                source: source.to_string(),
                exclude_domain: exclude_domain.to_string(),
            }))
            .await?;
        Ok(reply.users)
    }

    async fn migrate(
        &self,
        node: &NodeEntry,
        actor: Option<&str>,
        order: &Order,
    ) -> Result<(Option<NodeEvent>, NodeEventStream), NodeError> {
        let mut c = self.client(node).await?;
        let request = Self::request(actor, convert::order_to_proto(order));
        // Bounded until the first event: the node answers at once (it
        // validates before it streams); later events may be minutes apart.
        tokio::time::timeout(self.timeout, async {
            let mut stream = c
                .migrate_volume(request)
                .await
                .map_err(node_error)?
                .into_inner();
            let first = stream.message().await.map_err(node_error)?;
            Ok((
                first.as_ref().map(convert::event_from_proto),
                events(stream),
            ))
        })
        .await
        .map_err(|_| {
            timed_out(&format!(
                "node {} did not start the migration in time",
                node.id
            ))
        })?
    }

    async fn watch(
        &self,
        node: &NodeEntry,
        migration_id: &str,
    ) -> Result<NodeEventStream, NodeError> {
        let mut c = self.client(node).await?;
        let request = Self::request(
            None,
            proto::WatchMigrationRequest {
                migration_id: migration_id.to_string(),
            },
        );
        Ok(events(self.timed(c.watch_migration(request)).await?))
    }

    async fn get(&self, node: &NodeEntry, migration_id: &str) -> Result<NodeRecord, NodeError> {
        let mut c = self.client(node).await?;
        let request = Self::request(
            None,
            proto::GetMigrationRequest {
                migration_id: migration_id.to_string(),
            },
        );
        let record = self.timed(c.get_migration(request)).await?;
        Ok(convert::node_record_from_proto(&record))
    }

    async fn cancel(
        &self,
        node: &NodeEntry,
        actor: Option<&str>,
        migration_id: &str,
    ) -> Result<Option<NodeEvent>, NodeError> {
        let mut c = self.client(node).await?;
        let request = Self::request(
            actor,
            proto::CancelMigrationRequest {
                migration_id: migration_id.to_string(),
            },
        );
        let reply = self.timed(c.cancel_migration(request)).await?;
        Ok(reply.latest.as_ref().map(convert::event_from_proto))
    }

    async fn set_bandwidth(
        &self,
        node: &NodeEntry,
        actor: Option<&str>,
        migration_id: &str,
        bytes_per_sec: u64,
    ) -> Result<(), NodeError> {
        let mut c = self.client(node).await?;
        let request = Self::request(
            actor,
            proto::SetBandwidthRequest {
                migration_id: migration_id.to_string(),
                bytes_per_sec,
            },
        );
        self.timed(c.set_bandwidth(request)).await.map(|_| ())
    }

    fn forget(&self, node_id: &str) {
        self.channels().remove(node_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, endpoint: &str) -> NodeEntry {
        NodeEntry {
            id: id.into(),
            endpoint: endpoint.into(),
            configured: true,
            facts: None,
            last_seen: None,
            last_heard: None,
            last_seen_ms: 0,
            last_error: None,
        }
    }

    fn configured() -> Vec<StaticNode> {
        [
            ("tls", "https://kvm1.example:7451"),
            ("local", "unix:///run/volmig/node.sock"),
            ("plain", "http://127.0.0.1:7451"),
        ]
        .iter()
        .map(|(id, endpoint)| StaticNode {
            id: id.to_string(),
            endpoint: endpoint.to_string(),
        })
        .collect()
    }

    #[test]
    fn the_token_goes_only_to_configured_nodes_at_their_encrypted_or_local_endpoints() {
        let creds = Credentials::new(None, Some("s3cret")).expect("token");
        let nodes = GrpcNodes::new(creds.clone(), &configured(), Duration::from_secs(1));
        let gets = |id: &str, endpoint: &str| {
            nodes
                .credentials_for(&entry(id, endpoint))
                .token()
                .is_some()
        };
        assert!(gets("tls", "https://kvm1.example:7451"));
        assert!(gets("local", "unix:///run/volmig/node.sock"));
        // Plaintext, even configured and on loopback.
        assert!(!gets("plain", "http://127.0.0.1:7451"));
        // A registered node, or a configured id at another endpoint, whatever
        // the registry's `configured` flag says.
        assert!(!gets("kvm9", "https://kvm9.example:7451"));
        assert!(!gets("tls", "https://evil.example:7451"));

        let err = check_token_reach(&configured(), &creds).expect_err("plain");
        assert_eq!(err.id, "plain");
        assert!(
            err.to_string().contains("only over https:// or unix://"),
            "{err}"
        );
        assert!(check_token_reach(&configured(), &Credentials::default()).is_ok());
        assert!(check_token_reach(&configured()[..2], &creds).is_ok());
    }
}
