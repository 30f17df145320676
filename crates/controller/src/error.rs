//! The controller's one error type. The edge maps it to a gRPC status in one
//! place (`volmig::api::status`); here each variant names the situation.

use super::store::StoreError;

/// How a call to a node failed, in the classes the node's API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeErrorKind {
    /// The node could not be reached (or the call broke off).
    Unavailable,
    /// No answer in time.
    DeadlineExceeded,
    /// The node found the request malformed.
    InvalidArgument,
    /// The node does not know the object.
    NotFound,
    /// The node already has the object.
    AlreadyExists,
    /// The node's state does not allow it.
    FailedPrecondition,
    /// The node is at a limit.
    ResourceExhausted,
    /// The node refused the controller's identity.
    PermissionDenied,
    /// The node did not accept the controller's credentials.
    Unauthenticated,
    /// A value out of range.
    OutOfRange,
    /// Cancelled.
    Cancelled,
    /// Aborted.
    Aborted,
    /// The node does not implement the call.
    Unimplemented,
    /// The node failed.
    Internal,
    /// Data loss.
    DataLoss,
    /// Anything else.
    Unknown,
}

/// A failed call to a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NodeError {
    /// Its class.
    pub kind: NodeErrorKind,
    /// What the node (or the transport) said.
    pub message: String,
}

impl NodeError {
    /// A node that could not be reached.
    pub fn unavailable(message: impl Into<String>) -> NodeError {
        NodeError {
            kind: NodeErrorKind::Unavailable,
            message: message.into(),
        }
    }

    /// Whether the node (not the request) is the problem.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self.kind,
            NodeErrorKind::Unavailable | NodeErrorKind::Unknown
        )
    }
}

/// Why the controller refused or failed a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControllerError {
    /// The request is malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A pool name that several storage ids carry (on different nodes).
    #[error("pool name '{name}' is several pools' (storage ids {storage_ids}); name one by its storage id")]
    AmbiguousPool {
        /// The name given.
        name: String,
        /// The storage ids carrying it.
        storage_ids: String,
    },
    /// The history has no such migration.
    #[error("no migration with id '{0}' in the controller's history")]
    UnknownMigration(String),
    /// No node runs the domain, it has no such disk, or no such pool is known.
    #[error("{0}")]
    NotFound(String),
    /// The domain is defined somewhere but does not run.
    #[error("domain '{domain}' is defined on node(s) {nodes} but not running; live migration needs a running guest (a guest defined on one node only can be moved offline: option offline_if_stopped, `volmig migrate --offline-if-stopped`)")]
    NotRunning {
        /// The domain.
        domain: String,
        /// Where it is defined.
        nodes: String,
    },
    /// The domain runs on no reachable node and some nodes could not be asked.
    #[error("domain '{domain}' runs on no reachable node; unreachable: {unreachable}")]
    NoReachableNode {
        /// The domain.
        domain: String,
        /// The nodes that could not be asked.
        unreachable: String,
    },
    /// The request cannot be carried out in the cluster's state (a named
    /// pool that its rules refuse, a domain without movable disks).
    #[error("{0}")]
    Precondition(String),
    /// No pool can take the disk, or a limit is reached.
    #[error("{0}")]
    Exhausted(String),
    /// The node that runs a migration is not registered.
    #[error("node {node} that runs migration {migration_id} is not registered (it has not sent a heartbeat since the controller started)")]
    NodeNotRegistered {
        /// The node.
        node: String,
        /// The migration.
        migration_id: String,
    },
    /// A node could not be reached.
    #[error(
        "node {node} at {endpoint} is unreachable: {message}; check that `volmig node` runs there"
    )]
    NodeUnreachable {
        /// The node.
        node: String,
        /// Its endpoint.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// A node refused or failed the call; its answer is passed on.
    #[error("{0}")]
    Node(NodeError),
    /// The node's stream of a watched migration was lost.
    #[error("lost the node's event stream: {0}; the migration goes on there, follow it with WatchMigration")]
    StreamLost(String),
    /// A node answered with something it should not have.
    #[error("{0}")]
    NodeMisbehaved(String),
    /// No up node knows a pool by this name or storage id.
    #[error("no up node knows a storage pool named '{0}' or with that storage id (see `volmig pools --controller …`)")]
    UnknownPool(String),
    /// A drain of a pool with no guest to move.
    #[error("nothing to drain on pool '{pool}': {why}")]
    NothingToDrain {
        /// The pool.
        pool: String,
        /// What was found instead (e.g. what stays, and why).
        why: String,
    },
    /// The store has no such drain.
    #[error("no drain with id '{0}' (see the list of drains)")]
    UnknownDrain(String),
    /// The drain has ended; it cannot be cancelled.
    #[error("drain '{0}' has already finished")]
    DrainFinished(String),
    /// A registration was refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ControllerError {
    /// A failed call to `node` (id, endpoint): unreachable nodes are named,
    /// other answers passed on as the node gave them.
    pub fn from_node(node: &str, endpoint: &str, err: NodeError) -> ControllerError {
        if err.is_unreachable() {
            ControllerError::NodeUnreachable {
                node: node.to_string(),
                endpoint: endpoint.to_string(),
                message: err.message,
            }
        } else {
            ControllerError::Node(err)
        }
    }
}

/// Why a registration was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry holds its limit of nodes and this one is new.
    #[error("the controller already knows its limit of {0} nodes (max_nodes)")]
    Full(usize),
    /// The endpoint a node registered with is not one the controller may dial.
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    /// A registration advertised a host its client certificate does not name.
    #[error("the advertised host {host} is not named by the registering certificate (its SAN DNS names and IP addresses: {names}): advertise a host it names, or give the node a certificate naming this one")]
    HostNotNamed {
        /// The advertised host.
        host: String,
        /// The certificate's DNS names and addresses.
        names: String,
    },
    /// A registration advertised a host outside `advertise_allow`.
    #[error("the advertised host {host} is outside the controller's advertise_allow: advertise an allowed host, or ask the operator to allow this one")]
    HostNotAllowed {
        /// The advertised host.
        host: String,
    },
    /// An `advertise_allow` entry is malformed (refused at start).
    #[error("advertise_allow entry \"{entry}\": {reason}")]
    BadAllow {
        /// The entry, escaped.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller may not register as this node.
    #[error("{caller} may not register as node '{node_id}'{}", bound.as_ref().map(|b| format!(": its identity is bound to node '{b}'")).unwrap_or_default())]
    NotThisNode {
        /// Who asked.
        caller: String,
        /// The node id it asked for.
        node_id: String,
        /// The node id it may register as, if any.
        bound: Option<String>,
    },
}
