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
        }
    }
}

/// Controller settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// `host:port` or `unix:///path`.
    pub listen: String,
    /// Where the controller keeps its store.
    pub state_dir: PathBuf,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: "127.0.0.1:7450".to_string(),
            state_dir: PathBuf::from("/var/lib/volmig/controller"),
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
