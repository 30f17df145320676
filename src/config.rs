//! Component configuration: a TOML file per component, every key overridable
//! by a flag or environment variable, and defaults that work on a single host
//! with no file at all.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Node settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Stable id of this node; defaults to the host name.
    pub node_id: String,
    /// `unix:///path` or `host:port`.
    pub listen: String,
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
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: String::new(),
            listen: "unix:///run/volmig/node.sock".to_string(),
            libvirt_uri: crate::libvirt::DEFAULT_URI.to_string(),
            state_dir: PathBuf::from("/var/lib/volmig/node"),
            max_concurrent_migrations: 4,
            synchronized_hold_ms: 0,
            controller: String::new(),
            advertise: String::new(),
            journal_retention_days: 7,
            journal_retention_records: 1000,
            ceph_keyring_dir: PathBuf::from(crate::libvirt::DEFAULT_CEPH_KEYRING_DIR),
        }
    }
}

/// Controller settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// `host:port` or `unix:///path`.
    pub listen: String,
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
}

/// A node listed in the controller's configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticNode {
    /// Node id (must match the node's own `node_id`).
    pub id: String,
    /// `unix:///path` or `http://host:port`.
    pub endpoint: String,
}

/// Placement settings of a pool.
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
            state_dir: PathBuf::from("/var/lib/volmig/controller"),
            nodes: Vec::new(),
            heartbeat_interval_seconds: 5,
            down_after_seconds: 15,
            pool_defaults: PoolSettings::default(),
            pools: Vec::new(),
        }
    }
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
}
