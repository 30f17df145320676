//! A component's configuration file: the trait that ties a settings struct
//! to its documented keys, its commented rendering, and reading it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::commented_toml::{self, RenderError, Style, TableDocs};
use crate::ConfigError;

/// A component's configuration file: its keys and what they mean, so it can
/// be printed as commented TOML (`--print-config`, the packaged examples).
pub trait ConfigFile: Serialize + for<'de> Deserialize<'de> + Default {
    /// The doc comments of the file's keys, nested tables included.
    fn docs() -> TableDocs;
    /// What every environment variable of the generic layer starts with
    /// (`VOLMIG_NODE__`): two underscores end it, as they separate the parts
    /// of a dotted key, which no key name contains.
    const ENV_PREFIX: &'static str;
}

/// `config` as TOML with every key preceded by its doc comment: active
/// settings, or (`Style::CommentedOut`) an example that sets nothing.
pub fn to_commented_toml<T: ConfigFile>(config: &T, style: Style) -> Result<String, RenderError> {
    commented_toml::render(config, &T::docs(), style)
}

/// Reads a component's config file, or the defaults when `path` is `None`.
pub fn load<T: for<'de> Deserialize<'de> + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    match path {
        None => Ok(T::default()),
        Some(path) => parse(&read(path)?, path),
    }
}

/// The text of a config file.
pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// `text`, the content of the file `path`, as `T`.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use documented::DocumentedFields;
    use std::path::PathBuf;

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
