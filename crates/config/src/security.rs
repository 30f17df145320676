//! Who may call and how a listener is bounded: the roles, the grants of
//! identities and tokens, and the security keys every component shares,
//! gathered into one [`SecurityConfig`] for the transport.

use std::path::PathBuf;

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

use crate::{ConnectionConfig, ControllerConfig, NodeConfig};

/// Default mode of a unix socket: owner and group may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Default limit of concurrent calls on one HTTP/2 connection.
pub const DEFAULT_MAX_STREAMS: u32 = 128;
/// Default limit of a request message: requests are small; 256 KiB leaves
/// room for every legitimate one.
pub const DEFAULT_MAX_REQUEST: usize = 256 * 1024;
/// Default limit of connections open at once on a listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default limit of watchers of one migration.
pub const DEFAULT_MAX_WATCHERS: usize = 64;

/// A role a caller can have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: Get/List/Watch/Plan, GetInfo, ListPools, ListDisks, FindVolumeUsers,
    /// ListPoolVolumes.
    #[default]
    Viewer,
    /// A viewer that may also migrate, cancel and change bandwidth.
    Operator,
    /// A node: may only register itself (its bound node id).
    Node,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Node => "node",
        })
    }
}

/// A role given to a certificate identity (`identities`) or a token (`tokens`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, DocumentedFields, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// For a token: its name in logs (required). For an identity: its name in
    /// logs (optional: defaults to its `uri`, `dns` or `cn`).
    #[serde(default)]
    pub name: String,
    /// For an identity: a SAN URI of the client certificate (`spiffe://…`).
    #[serde(default)]
    pub uri: Option<String>,
    /// For an identity: a SAN DNS name of the client certificate.
    #[serde(default)]
    pub dns: Option<String>,
    /// For an identity: the subject CN of a client certificate that has no
    /// SANs at all (a certificate with SANs is never matched by its CN).
    #[serde(default)]
    pub cn: Option<String>,
    /// The role.
    pub role: Role,
    /// For the node role: the node id it may register as.
    #[serde(default)]
    pub node_id: Option<String>,
    /// For a token: the SHA-256 of the token, hex.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// The security settings every component has, gathered from its config.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityConfig {
    /// See [`NodeConfig::tls_ca`].
    pub tls_ca: Option<PathBuf>,
    /// See [`NodeConfig::tls_cert`].
    pub tls_cert: Option<PathBuf>,
    /// See [`NodeConfig::tls_key`].
    pub tls_key: Option<PathBuf>,
    /// See [`NodeConfig::tls_crl`].
    pub tls_crl: Option<PathBuf>,
    /// See [`NodeConfig::insecure_plaintext`].
    pub insecure_plaintext: bool,
    /// See [`NodeConfig::token_file`].
    pub token_file: Option<PathBuf>,
    /// See [`NodeConfig::identities`].
    pub identities: Vec<GrantConfig>,
    /// See [`NodeConfig::tokens`].
    pub tokens: Vec<GrantConfig>,
    /// See [`NodeConfig::socket_mode`].
    pub socket_mode: u32,
    /// See [`NodeConfig::socket_group`].
    pub socket_group: Option<String>,
    /// See [`NodeConfig::max_concurrent_streams`].
    pub max_concurrent_streams: u32,
    /// See [`NodeConfig::max_request_bytes`].
    pub max_request_bytes: usize,
    /// See [`NodeConfig::max_connections`].
    pub max_connections: usize,
    /// See [`NodeConfig::health_listen`].
    pub health_listen: String,
    /// See [`NodeConfig::connections`].
    pub connections: ConnectionConfig,
}

macro_rules! security_of {
    ($cfg:expr) => {
        SecurityConfig {
            tls_ca: $cfg.tls_ca.clone(),
            tls_cert: $cfg.tls_cert.clone(),
            tls_key: $cfg.tls_key.clone(),
            tls_crl: $cfg.tls_crl.clone(),
            insecure_plaintext: $cfg.insecure_plaintext,
            token_file: $cfg.token_file.clone(),
            identities: $cfg.identities.clone(),
            tokens: $cfg.tokens.clone(),
            socket_mode: $cfg.socket_mode,
            socket_group: $cfg.socket_group.clone(),
            max_concurrent_streams: $cfg.max_concurrent_streams,
            max_request_bytes: $cfg.max_request_bytes,
            max_connections: $cfg.max_connections,
            health_listen: $cfg.health_listen.clone(),
            connections: $cfg.connections.clone(),
        }
    };
}

impl NodeConfig {
    /// The node's security settings.
    pub fn security(&self) -> SecurityConfig {
        security_of!(self)
    }
}

impl ControllerConfig {
    /// The controller's security settings.
    pub fn security(&self) -> SecurityConfig {
        security_of!(self)
    }
}
