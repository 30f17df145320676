//! The node's settings (`node.toml`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

use crate::commented_toml::TableDocs;
use crate::security::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST, DEFAULT_MAX_STREAMS, DEFAULT_MAX_WATCHERS,
    DEFAULT_SOCKET_MODE,
};
use crate::{ConfigFile, ConnectionConfig, GrantConfig, LogFormat, TelemetryConfig};

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
    /// Seconds libvirtd may stay unreachable during a migration (while it
    /// restarts, say) before the migration fails.
    pub libvirt_grace_seconds: u64,
    /// Controller to register with (heartbeats); empty for none. Several may
    /// be given separated by commas (as `--controller a,b` does); with
    /// `controllers`, the node registers with every one named.
    pub controller: String,
    /// More controllers to register with, for several controllers sharing one
    /// etcd: the node registers with each, concurrently, and keeps a heartbeat
    /// to each on its own, so one controller down delays none of the others.
    pub controllers: Vec<String>,
    /// Endpoint the controller should use to reach this node; defaults to `listen`.
    pub advertise: String,
    /// Finished migrations are forgotten (journal record deleted) after this many days.
    pub journal_retention_days: u64,
    /// At most this many finished migrations are remembered (the newest).
    pub journal_retention_records: usize,
    /// Where `ceph.client.<user>.keyring` files are, for RBD pools whose libvirt
    /// secret is private (the key is needed to read object sizes and usage).
    pub ceph_keyring_dir: PathBuf,
    /// Pools whose storage other hosts reach too, where that cannot be told
    /// from the mount table (a bind mount, a cluster file system on a shared
    /// LUN): pool name = an id of your choice, the same on every host that
    /// reaches the storage; `nfs-vms = "filer1:/export/vms"` gives the pool the
    /// storage id `shared:filer1:/export/vms`. netfs, rbd and iscsi pools, and
    /// dir or fs pools on NFS, CIFS, CephFS, GlusterFS, OCFS2, GFS2, Lustre or
    /// BeeGFS mounts, are recognised without it.
    #[serde(deserialize_with = "crate::shared_pools::deserialize")]
    pub shared_pools: BTreeMap<String, String>,
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
            libvirt_grace_seconds: 90,
            controller: String::new(),
            controllers: Vec::new(),
            advertise: String::new(),
            journal_retention_days: 7,
            journal_retention_records: 1000,
            ceph_keyring_dir: PathBuf::from(volmig_types::host::DEFAULT_CEPH_KEYRING_DIR),
            shared_pools: BTreeMap::new(),
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

impl NodeConfig {
    /// Every controller to register with: `controller` (split at commas),
    /// then `controllers`, without blanks or repeats.
    pub fn controller_endpoints(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        let single = self.controller.split(',');
        for c in single.chain(self.controllers.iter().map(String::as_str)) {
            let c = c.trim();
            if !c.is_empty() && !all.iter().any(|a| a == c) {
                all.push(c.to_string());
            }
        }
        all
    }
}

impl ConfigFile for NodeConfig {
    const ENV_PREFIX: &'static str = "VOLMIG_NODE__";

    fn docs() -> TableDocs {
        TableDocs::of::<NodeConfig>()
            .with("telemetry", TableDocs::of::<TelemetryConfig>())
            .with("connections", TableDocs::of::<ConnectionConfig>())
            .with("identities", TableDocs::of::<GrantConfig>())
            .with("tokens", TableDocs::of::<GrantConfig>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_controller_and_a_list_are_both_registered_with_once_each() {
        let config: NodeConfig = toml::from_str(
            "controller = \"https://a:7450\"\n\
             controllers = [\"https://b:7450\", \"https://a:7450\", \"\"]\n",
        )
        .expect("valid");
        assert_eq!(
            config.controller_endpoints(),
            ["https://a:7450", "https://b:7450"]
        );
        let config: NodeConfig =
            toml::from_str("controllers = [\"https://b:7450\"]\n").expect("valid");
        assert_eq!(config.controller_endpoints(), ["https://b:7450"]);
        assert!(NodeConfig::default().controller_endpoints().is_empty());
        let config = NodeConfig {
            controller: "https://a:7450, https://b:7450".into(),
            ..NodeConfig::default()
        };
        assert_eq!(
            config.controller_endpoints(),
            ["https://a:7450", "https://b:7450"]
        );
    }
}
