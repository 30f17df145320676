//! Component configuration: a TOML file per component, and defaults that work
//! on a single host with no file at all. Some keys can also be given as a flag
//! or an environment variable (the flag wins over the variable, which wins
//! over the file); the README's configuration table names them key by key,
//! and every other key is read from the file only.

use std::path::{Path, PathBuf};

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

use commented_toml::{RenderError, Style, TableDocs};

pub mod commented_toml;
mod connections;
pub use connections::ConnectionConfig;

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
    /// Reads: Get/List/Watch/Plan, GetInfo, ListPools, ListDisks, FindVolumeUsers.
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

/// Node settings.
#[derive(Debug, Clone, Deserialize, Serialize, DocumentedFields, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Stable id of this node; defaults to the host name.
    pub node_id: String,
    /// `unix:///path` or `host:port`.
    pub listen: String,
    /// `host:port` serving only `grpc.health.v1` in plaintext, for probes that
    /// cannot present a client certificate (kubelet); empty: off.
    pub health_listen: String,
    /// libvirt connection URI.
    pub libvirt_uri: String,
    /// Where the journal lives.
    pub state_dir: PathBuf,
    /// Most migrations at once.
    pub max_concurrent_migrations: usize,
    /// Milliseconds a migration stays SYNCHRONIZED before pivoting (0: pivot at once).
    pub synchronized_hold_ms: u64,
    /// Controller to register with (heartbeats); empty for none.
    pub controller: String,
    /// Endpoint the controller should use to reach this node; defaults to `listen`.
    pub advertise: String,
    /// Finished migrations are forgotten (journal record deleted) after this many days.
    pub journal_retention_days: u64,
    /// At most this many finished migrations are remembered (the newest).
    pub journal_retention_records: usize,
    /// Where `ceph.client.<user>.keyring` files are, for RBD pools whose libvirt
    /// secret is private (the key is needed to read object sizes and usage).
    pub ceph_keyring_dir: PathBuf,
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
    /// A file holding the bearer token the node presents to its controller,
    /// only over `https://` or `unix://`; owner-only, at least 32 characters,
    /// re-read when it changes.
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
}

/// OpenTelemetry trace export, the `[telemetry]` table. Each key gives way
/// to its standard environment variable (named beside it), as OpenTelemetry
/// SDKs do; with neither an endpoint key nor the variable, nothing is exported.
#[derive(Debug, Clone, Default, Deserialize, Serialize, DocumentedFields, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`); empty: off.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans (`OTEL_SERVICE_NAME`); empty:
    /// `volmig-node` or `volmig-controller`.
    pub service_name: String,
    /// Sampler: `always_on`, `always_off`, `traceidratio`,
    /// `parentbased_always_on`, `parentbased_always_off` or
    /// `parentbased_traceidratio` (`OTEL_TRACES_SAMPLER`); empty:
    /// `parentbased_always_on`.
    pub traces_sampler: String,
    /// The ratio of the `traceidratio` samplers, 0.0 to 1.0
    /// (`OTEL_TRACES_SAMPLER_ARG`).
    pub traces_sampler_arg: Option<f64>,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the fields of the enclosing spans.
    Json,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: String::new(),
            listen: "unix:///run/volmig/node.sock".to_string(),
            health_listen: String::new(),
            libvirt_uri: volmig_types::host::DEFAULT_URI.to_string(),
            state_dir: PathBuf::from("/var/lib/volmig/node"),
            max_concurrent_migrations: 4,
            synchronized_hold_ms: 0,
            controller: String::new(),
            advertise: String::new(),
            journal_retention_days: 7,
            journal_retention_records: 1000,
            ceph_keyring_dir: PathBuf::from(volmig_types::host::DEFAULT_CEPH_KEYRING_DIR),
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
        }
    }
}

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

/// A component's configuration file: its keys and what they mean, so it can
/// be printed as commented TOML (`--print-config`, the packaged examples).
pub trait ConfigFile: Serialize + for<'de> Deserialize<'de> + Default {
    /// The doc comments of the file's keys, nested tables included.
    fn docs() -> TableDocs;
}

impl ConfigFile for NodeConfig {
    fn docs() -> TableDocs {
        TableDocs::of::<NodeConfig>()
            .with("telemetry", TableDocs::of::<TelemetryConfig>())
            .with("connections", TableDocs::of::<ConnectionConfig>())
            .with("identities", TableDocs::of::<GrantConfig>())
            .with("tokens", TableDocs::of::<GrantConfig>())
    }
}

impl ConfigFile for ControllerConfig {
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

/// `config` as TOML with every key preceded by its doc comment: active
/// settings, or (`Style::CommentedOut`) an example that sets nothing.
pub fn to_commented_toml<T: ConfigFile>(config: &T, style: Style) -> Result<String, RenderError> {
    commented_toml::render(config, &T::docs(), style)
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid for this component.
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads a component's config file, or the defaults when `path` is `None`.
pub fn load<T: for<'de> Deserialize<'de> + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_keep_defaults_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "node_id = \"kvm1\"\nmax_concurrent_migrations = 2\n")
            .expect("write");
        let cfg: NodeConfig = load(Some(&path)).expect("load");
        assert_eq!(cfg.node_id, "kvm1");
        assert_eq!(cfg.max_concurrent_migrations, 2);
        assert_eq!(cfg.libvirt_uri, "qemu:///system");
        std::fs::write(&path, "nod_id = \"typo\"\n").expect("write");
        assert!(matches!(
            load::<NodeConfig>(Some(&path)),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("controller.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\nhistory_retention_dayz = 3\n",
        )
        .expect("write");
        let err = load::<ControllerConfig>(Some(&path))
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("history_retention_dayz"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, "[pool_defaults]\nused_treshold = 0.5\n").expect("write");
        let err = load::<ControllerConfig>(Some(&path))
            .expect_err("unknown nested key")
            .to_string();
        assert!(err.contains("used_treshold"), "{err}");
    }

    /// Every key of every table, as printed.
    fn printed_keys(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| l.trim_start_matches("# "))
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_string()))
            .filter(|k| !k.contains(' '))
            .collect()
    }

    /// Each printed key line is directly below its doc comment.
    fn assert_documented(text: &str) {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let key_line = line.trim_start_matches("# ");
            let is_key = key_line
                .split_once(" = ")
                .is_some_and(|(k, _)| !k.contains(' '));
            if is_key || key_line.starts_with('[') {
                let above = if i > 0 { lines[i - 1] } else { "" };
                let doc_above = above.starts_with("# ")
                    && !above.trim_start_matches("# ").contains(" = ")
                    || above.trim_start_matches("# ").starts_with("[[");
                assert!(doc_above, "no doc comment above {line:?}:\n{text}");
            }
        }
    }

    #[test]
    fn printed_node_config_parses_back_to_the_same_configuration() {
        let mut cfg = NodeConfig {
            node_id: "kvm1".into(),
            tls_ca: Some(PathBuf::from("/etc/volmig/ca.pem")),
            socket_group: Some("kvm".into()),
            log_format: LogFormat::Json,
            ..NodeConfig::default()
        };
        cfg.tokens.push(GrantConfig {
            name: "ci".into(),
            role: Role::Operator,
            sha256: Some("ab".repeat(32)),
            ..GrantConfig::default()
        });
        cfg.identities.push(GrantConfig {
            dns: Some("ctl.example".into()),
            role: Role::Operator,
            ..GrantConfig::default()
        });
        cfg.identities.push(GrantConfig {
            name: "kvm1".into(),
            uri: Some("spiffe://example/node/kvm1".into()),
            role: Role::Node,
            node_id: Some("kvm1".into()),
            ..GrantConfig::default()
        });
        let text = to_commented_toml(&cfg, Style::Active).expect("render");
        assert_documented(&text);
        let back: NodeConfig = toml::from_str(&text).expect("parses back");
        assert_eq!(back, cfg);
        assert!(text.contains("# tls_cert = (unset)"), "{text}");
    }

    #[test]
    fn printed_controller_config_parses_back_to_the_same_configuration() {
        let mut cfg = ControllerConfig {
            listen: "0.0.0.0:7450".into(),
            ..ControllerConfig::default()
        };
        cfg.nodes.push(StaticNode {
            id: "kvm1".into(),
            endpoint: "unix:///run/volmig/node.sock".into(),
        });
        cfg.pools.push(PoolOverride {
            pool: "ssd".into(),
            used_threshold: Some(0.5),
            overprovision_factor: None,
            max_in_flight: Some(2),
            tags: vec!["ssd".into()],
        });
        cfg.pool_defaults.max_in_flight = Some(3);
        let text = to_commented_toml(&cfg, Style::Active).expect("render");
        assert_documented(&text);
        let back: ControllerConfig = toml::from_str(&text).expect("parses back");
        assert_eq!(back, cfg);
    }

    #[test]
    fn the_example_files_name_every_key_and_set_nothing() {
        let node = to_commented_toml(&NodeConfig::default(), Style::CommentedOut).expect("node");
        let controller = to_commented_toml(&ControllerConfig::default(), Style::CommentedOut)
            .expect("controller");
        for (text, names) in [
            (&node, NodeConfig::FIELD_NAMES),
            (&controller, ControllerConfig::FIELD_NAMES),
        ] {
            assert_documented(text);
            let keys = printed_keys(text);
            for name in names {
                assert!(
                    keys.iter().any(|k| k == name) || text.contains(&format!("[{name}]")),
                    "{name} missing from:\n{text}"
                );
            }
            assert!(
                text.lines().all(|l| l.is_empty() || l.starts_with('#')),
                "{text}"
            );
        }
        assert_eq!(
            toml::from_str::<NodeConfig>(&node).expect("node"),
            NodeConfig::default()
        );
        assert_eq!(
            toml::from_str::<ControllerConfig>(&controller).expect("controller"),
            ControllerConfig::default()
        );
    }

    #[test]
    fn telemetry_table_is_read_and_checked() {
        let cfg: ControllerConfig = toml::from_str(
            "[telemetry]\notlp_endpoint = \"http://c:4317\"\ntraces_sampler = \"traceidratio\"\ntraces_sampler_arg = 0.5\n",
        )
        .expect("parse");
        assert_eq!(cfg.telemetry.otlp_endpoint, "http://c:4317");
        assert_eq!(cfg.telemetry.traces_sampler_arg, Some(0.5));
        assert!(cfg.telemetry.service_name.is_empty());
        assert_eq!(NodeConfig::default().telemetry, TelemetryConfig::default());
        assert!(toml::from_str::<NodeConfig>("[telemetry]\nendpoint = \"x\"\n").is_err());
    }
}
