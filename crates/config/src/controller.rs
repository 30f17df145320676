//! The controller's settings (`controller.toml`): its store, the nodes it
//! knows without registration and the placement settings of the pools.

use std::path::PathBuf;

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

use crate::commented_toml::TableDocs;
use crate::security::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST, DEFAULT_MAX_STREAMS, DEFAULT_MAX_WATCHERS,
    DEFAULT_SOCKET_MODE,
};
use crate::{ConfigFile, ConnectionConfig, GrantConfig, LogFormat, TelemetryConfig};

/// Controller settings.
#[derive(Debug, Clone, Deserialize, Serialize, DocumentedFields, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// `host:port` or `unix:///path`.
    pub listen: String,
    /// `host:port` serving only `grpc.health.v1` in plaintext, for probes that
    /// cannot present a client certificate (kubelet); empty: off.
    pub health_listen: String,
    /// Where the controller keeps its migration history.
    pub state_dir: PathBuf,
    /// Nodes known without registration.
    pub nodes: Vec<StaticNode>,
    /// Nodes must register (heartbeat) at least this often, seconds.
    pub heartbeat_interval_seconds: u32,
    /// A node not heard from for this long is down and its pools are not chosen, seconds.
    pub down_after_seconds: u32,
    /// Placement defaults for every pool.
    pub pool_defaults: PoolSettings,
    /// Per-pool placement settings, matched by pool name or storage id.
    pub pools: Vec<PoolOverride>,
    /// Most nodes in the registry, configured ones included (more
    /// registrations are RESOURCE_EXHAUSTED).
    pub max_nodes: usize,
    /// Bound on every call to a node (streams: until their first event), seconds.
    pub node_call_timeout_seconds: u64,
    /// Finished migrations are dropped from the history after this many days.
    pub history_retention_days: u64,
    /// At most this many finished migrations are kept in the history (the newest).
    pub history_retention_records: usize,
    /// Hosts a node may advertise in its registration: CIDRs (`10.0.0.0/8`),
    /// DNS names, or `*.suffix`; empty: any host its certificate names.
    pub advertise_allow: Vec<String>,
    /// A registered node not heard from for this many seconds is forgotten,
    /// which frees its place under `max_nodes` (configured nodes never are).
    pub forget_lapsed_nodes_after_seconds: u64,
    /// CA certificate (PEM) that peers' certificates must chain to; with
    /// `tls_cert` and `tls_key`, TCP listeners serve mutual TLS and outgoing
    /// calls present this certificate.
    pub tls_ca: Option<PathBuf>,
    /// This component's certificate chain (PEM), re-read when it changes.
    pub tls_cert: Option<PathBuf>,
    /// This component's private key (PEM), re-read when it changes.
    pub tls_key: Option<PathBuf>,
    /// Certificate revocation lists (PEM, one or more) of `tls_ca`, re-read
    /// when the file changes; a revoked peer certificate is refused.
    pub tls_crl: Option<PathBuf>,
    /// Serve plaintext on a non-loopback TCP address (logged as a warning).
    pub insecure_plaintext: bool,
    /// A file holding the bearer token the controller presents to the nodes
    /// of `nodes` whose endpoint is `https://` or `unix://` (never to a
    /// registered endpoint); owner-only, at least 32 characters, re-read when
    /// it changes.
    pub token_file: Option<PathBuf>,
    /// Client certificates and the roles they have, each by one of `uri`,
    /// `dns` (SANs) or `cn` (certificates without SANs). Re-read, with
    /// `tokens`, when this file changes or on SIGHUP.
    pub identities: Vec<GrantConfig>,
    /// Bearer tokens (by SHA-256) and the roles they have.
    pub tokens: Vec<GrantConfig>,
    /// Mode of the unix socket (default 0o660).
    pub socket_mode: u32,
    /// Group of the unix socket; default `volmig` when that group exists.
    pub socket_group: Option<String>,
    /// Most concurrent HTTP/2 streams (calls) on one connection.
    pub max_concurrent_streams: u32,
    /// Largest request message accepted, bytes.
    pub max_request_bytes: usize,
    /// Most connections open at once on the listener (more wait to be accepted).
    pub max_connections: usize,
    /// Most watchers of one migration at once (more are RESOURCE_EXHAUSTED).
    pub max_watchers_per_migration: usize,
    /// `host:port` serving Prometheus metrics at `/metrics` (plain HTTP); empty: off.
    pub metrics_listen: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// OpenTelemetry trace export (`[telemetry]`).
    pub telemetry: TelemetryConfig,
    /// Bounds on connections, before and after authentication (`[connections]`).
    pub connections: ConnectionConfig,
    /// Where the history, node registrations and in-flight reservations live.
    pub store: StoreKind,
    /// How to reach etcd, for the etcd store.
    pub etcd: EtcdConfig,
}

/// The controller's store.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// One file under `state_dir`: a single controller.
    #[default]
    File,
    /// An etcd cluster shared by several controllers.
    Etcd,
}

/// The `[etcd]` table of the controller's configuration.
#[derive(Debug, Clone, Deserialize, Serialize, DocumentedFields, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs of the members, `http(s)://host:port`.
    pub endpoints: Vec<String>,
    /// Prefix of every key volmig writes (several volmig clusters can share one etcd).
    pub prefix: String,
    /// CA certificate (PEM) of the members; TLS to etcd when set.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to etcd, with `key`.
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
    /// User for etcd's password authentication.
    pub user: Option<String>,
    /// File holding that user's password (first line).
    pub password_file: Option<PathBuf>,
    /// Another controller takes over within this many seconds of the leader's
    /// death: the leader's etcd lease is granted one second shorter, leaving
    /// etcd time to notice the lapse (it checks every 500 ms) and elect the
    /// next (etcd raises a lease below its minimum, about 2 s, to it).
    pub lease_ttl_seconds: u64,
    /// Bound on every request to etcd, seconds.
    pub request_timeout_seconds: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "/volmig/".to_string(),
            ca: None,
            cert: None,
            key: None,
            user: None,
            password_file: None,
            lease_ttl_seconds: 5,
            request_timeout_seconds: 5,
        }
    }
}

/// A node listed in the controller's configuration.
#[derive(Debug, Clone, Deserialize, Serialize, DocumentedFields, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticNode {
    /// Node id (must match the node's own `node_id`).
    pub id: String,
    /// `unix:///path`, `https://host:port` or `http://host:port` (the
    /// controller's token is never sent over `http://`).
    pub endpoint: String,
}

/// Placement settings of a pool.
#[derive(Debug, Clone, Deserialize, Serialize, DocumentedFields, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Keep the pool's used fraction at or below this after placement (0..1).
    pub used_threshold: f64,
    /// Limit of (provisioned + new virtual size) / capacity; none when unset.
    pub overprovision_factor: Option<f64>,
    /// Most migrations writing to the pool at once; none when unset.
    pub max_in_flight: Option<u32>,
    /// Tags a request can require.
    pub tags: Vec<String>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            used_threshold: 0.85,
            overprovision_factor: None,
            max_in_flight: None,
            tags: Vec::new(),
        }
    }
}

/// Settings for the pools whose name or storage id is `pool`; unset keys keep the defaults.
#[derive(Debug, Clone, Deserialize, Serialize, DocumentedFields, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolOverride {
    /// Pool name or storage id.
    pub pool: String,
    /// See [`PoolSettings::used_threshold`].
    pub used_threshold: Option<f64>,
    /// See [`PoolSettings::overprovision_factor`].
    pub overprovision_factor: Option<f64>,
    /// See [`PoolSettings::max_in_flight`].
    pub max_in_flight: Option<u32>,
    /// See [`PoolSettings::tags`].
    #[serde(default)]
    pub tags: Vec<String>,
}

impl ControllerConfig {
    /// The effective settings of a pool.
    pub fn pool_settings(&self, name: &str, storage_id: &str) -> PoolSettings {
        let mut settings = self.pool_defaults.clone();
        for o in self
            .pools
            .iter()
            .filter(|o| o.pool == name || o.pool == storage_id)
        {
            if let Some(v) = o.used_threshold {
                settings.used_threshold = v;
            }
            if o.overprovision_factor.is_some() {
                settings.overprovision_factor = o.overprovision_factor;
            }
            if o.max_in_flight.is_some() {
                settings.max_in_flight = o.max_in_flight;
            }
            settings.tags.extend(o.tags.iter().cloned());
        }
        settings
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: "127.0.0.1:7450".to_string(),
            health_listen: String::new(),
            state_dir: PathBuf::from("/var/lib/volmig/controller"),
            nodes: Vec::new(),
            heartbeat_interval_seconds: 5,
            down_after_seconds: 15,
            pool_defaults: PoolSettings::default(),
            pools: Vec::new(),
            max_nodes: 10_000,
            node_call_timeout_seconds: 10,
            history_retention_days: 30,
            history_retention_records: 10_000,
            advertise_allow: Vec::new(),
            forget_lapsed_nodes_after_seconds: 3600,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_crl: None,
            insecure_plaintext: false,
            token_file: None,
            identities: Vec::new(),
            tokens: Vec::new(),
            socket_mode: DEFAULT_SOCKET_MODE,
            socket_group: None,
            max_concurrent_streams: DEFAULT_MAX_STREAMS,
            max_request_bytes: DEFAULT_MAX_REQUEST,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_watchers_per_migration: DEFAULT_MAX_WATCHERS,
            metrics_listen: String::new(),
            log_format: LogFormat::Text,
            telemetry: TelemetryConfig::default(),
            connections: ConnectionConfig::default(),
            store: StoreKind::File,
            etcd: EtcdConfig::default(),
        }
    }
}

impl ConfigFile for ControllerConfig {
    const ENV_PREFIX: &'static str = "VOLMIG_CONTROLLER__";

    fn docs() -> TableDocs {
        TableDocs::of::<ControllerConfig>()
            .with("telemetry", TableDocs::of::<TelemetryConfig>())
            .with("connections", TableDocs::of::<ConnectionConfig>())
            .with("nodes", TableDocs::of::<StaticNode>())
            .with("pool_defaults", TableDocs::of::<PoolSettings>())
            .with("pools", TableDocs::of::<PoolOverride>())
            .with("etcd", TableDocs::of::<EtcdConfig>())
            .with("identities", TableDocs::of::<GrantConfig>())
            .with("tokens", TableDocs::of::<GrantConfig>())
    }
}
