//! The layers of a configuration: the file, then the environment, then the
//! flags, each over the one before. Every key of the file can be given in
//! every layer: in the environment as the component's prefix and the key in
//! capitals, the parts of a dotted key joined by `__`
//! (`VOLMIG_NODE__TELEMETRY__OTLP_ENDPOINT`), and as a flag by
//! `--set key=value`. Values are merged into the file's TOML before it is
//! deserialised, so they are checked exactly as the file's are.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use serde::Serialize;
use toml::{Table, Value};

use crate::file::{parse, read};
use crate::keys::{keys, nearest};
use crate::{ConfigError, ConfigFile};

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An environment variable, by name.
    Env(String),
    /// A command-line flag, as spelled (`--set`, `--listen`).
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// One key set outside the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key, dotted.
    pub key: String,
    /// The value as TOML (`5`, `true`, `"a"`, `["x"]`, `[{ role = "viewer" }]`);
    /// text that is not TOML, or whose TOML does not fit the key, is taken
    /// as a string, so `--set listen=0.0.0.0:7451` needs no quotes.
    pub value: String,
    /// Where it was given.
    pub source: Source,
}

impl Setting {
    /// A `--set` flag's `key=value`.
    pub fn from_set_flag(arg: &str) -> Result<Setting, ConfigError> {
        let source = Source::Flag("--set".to_string());
        let Some((key, value)) = arg.split_once('=') else {
            return Err(ConfigError::Malformed {
                origin: source,
                message: format!("{arg:?} is not KEY=VALUE"),
            });
        };
        Ok(Setting {
            key: key.trim().to_string(),
            value: value.to_string(),
            source,
        })
    }

    /// A value already typed (a flag clap has parsed), as the TOML that means it.
    pub fn typed<V: Serialize>(
        key: &str,
        value: &V,
        source: Source,
    ) -> Result<Setting, ConfigError> {
        match Value::try_from(value) {
            Ok(value) => Ok(Setting {
                key: key.to_string(),
                value: value.to_string(),
                source,
            }),
            Err(e) => Err(ConfigError::Malformed {
                origin: source,
                message: e.to_string(),
            }),
        }
    }
}

/// The environment variable that sets `key` of `T`'s file.
pub fn env_name<T: ConfigFile>(key: &str) -> String {
    format!(
        "{}{}",
        T::ENV_PREFIX,
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// The settings of `T`'s environment layer among `vars`: every variable
/// whose name starts with `T::ENV_PREFIX`, ordered by key. A variable that
/// names no key is refused rather than ignored: a typo must not leave a
/// setting silently at its default.
pub fn from_env<T: ConfigFile>(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<Setting>, ConfigError> {
    let keys = keys::<T>();
    let mut out = Vec::new();
    for (name, value) in vars {
        let name = name.to_string_lossy();
        let Some(rest) = name.strip_prefix(T::ENV_PREFIX) else {
            continue;
        };
        let origin = Source::Env(name.to_string());
        let key = rest.split("__").collect::<Vec<_>>().join(".");
        let key = key.to_ascii_lowercase();
        if !keys.contains(&key) {
            let nearest = nearest(&key, &keys).map(str::to_string);
            return Err(ConfigError::UnknownKey {
                key,
                origin,
                nearest,
            });
        }
        if env_name::<T>(&key) != name {
            return Err(ConfigError::Malformed {
                message: format!("spell it {}", env_name::<T>(&key)),
                origin,
            });
        }
        let Ok(value) = value.into_string() else {
            return Err(ConfigError::Malformed {
                origin,
                message: "the value is not UTF-8".to_string(),
            });
        };
        out.push(Setting {
            key,
            value,
            source: origin,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Reads `T` from `file` (its defaults when there is none), then applies
/// `settings` in order, each over the ones before: the environment's first,
/// then the flags'.
pub fn load_layered<T: ConfigFile>(
    file: Option<&Path>,
    settings: &[Setting],
) -> Result<T, ConfigError> {
    let (mut config, mut table) = match file {
        None => (T::default(), Table::new()),
        Some(path) => {
            let text = read(path)?;
            (parse::<T>(&text, path)?, parse::<Table>(&text, path)?)
        }
    };
    let keys = keys::<T>();
    for setting in settings {
        if !keys.contains(&setting.key) {
            return Err(ConfigError::UnknownKey {
                key: setting.key.clone(),
                origin: setting.source.clone(),
                nearest: nearest(&setting.key, &keys).map(str::to_string),
            });
        }
        (config, table) = apply(&table, setting)?;
    }
    Ok(config)
}

/// `table` with `setting` merged in, and what it deserialises to.
fn apply<T: ConfigFile>(table: &Table, setting: &Setting) -> Result<(T, Table), ConfigError> {
    let as_toml = toml::from_str::<Table>(&format!("v = {}", setting.value))
        .ok()
        .and_then(|mut t| t.remove("v"));
    let as_text = Value::String(setting.value.clone());
    let mut attempts = Vec::new();
    let is_string = matches!(as_toml, Some(Value::String(_)));
    attempts.extend(as_toml);
    if !is_string {
        attempts.push(as_text);
    }
    let mut first_error = None;
    for value in attempts {
        let mut candidate = table.clone();
        insert(&mut candidate, &setting.key, value);
        match Value::Table(candidate.clone()).try_into::<T>() {
            Ok(config) => return Ok((config, candidate)),
            Err(e) => {
                // One line, so the message reads as one sentence in a log.
                first_error.get_or_insert_with(|| e.to_string().trim().replace('\n', " "));
            }
        }
    }
    Err(ConfigError::Invalid {
        key: setting.key.clone(),
        origin: setting.source.clone(),
        value: setting.value.clone(),
        message: first_error.unwrap_or_default(),
    })
}

/// Sets the dotted `key` of `table`, making the tables on the way.
fn insert(table: &mut Table, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let inner = table
                .entry(head)
                .or_insert_with(|| Value::Table(Table::new()));
            if !inner.is_table() {
                *inner = Value::Table(Table::new());
            }
            if let Value::Table(inner) = inner {
                insert(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ControllerConfig, NodeConfig};

    /// Values to try on a key until one changes it: one fits each kind of
    /// key the files have (numbers, booleans, strings and paths, the enums,
    /// lists of strings, each array of tables).
    const CANDIDATES: &[&str] = &[
        "11",
        "true",
        "json",
        "etcd",
        "/set/by/a/layer",
        "[\"set-by-a-layer\"]",
        "[{ role = \"viewer\" }]",
        "[{ id = \"n1\", endpoint = \"unix:///n1.sock\" }]",
        "[{ pool = \"p1\" }]",
        "{ set-by-a-layer = \"filer:/x\" }",
    ];

    fn as_table<T: ConfigFile>(config: &T) -> Table {
        match Value::try_from(config) {
            Ok(Value::Table(t)) => t,
            other => panic!("not a table: {other:?}"),
        }
    }

    /// Removes the dotted `key` from `table`, returning its value.
    fn take(table: &mut Table, key: &str) -> Option<Value> {
        match key.split_once('.') {
            None => table.remove(key),
            Some((head, rest)) => take(table.get_mut(head)?.as_table_mut()?, rest),
        }
    }

    /// Whether `config` differs from the defaults at `key` and nowhere else.
    fn changed_only<T: ConfigFile>(config: &T, key: &str) -> bool {
        let (mut got, mut default) = (as_table(config), as_table(&T::default()));
        take(&mut got, key) != take(&mut default, key) && got == default
    }

    /// Every key, through `layer` (which turns a key and a value into a
    /// setting), reaches the loaded configuration.
    fn every_key_is_settable<T: ConfigFile>(layer: impl Fn(&str, &str) -> Vec<Setting>) {
        let keys = keys::<T>();
        assert!(keys.len() > 30, "{keys:?}");
        for key in &keys {
            let set = CANDIDATES.iter().any(|value| {
                load_layered::<T>(None, &layer(key, value))
                    .is_ok_and(|config| changed_only(&config, key))
            });
            assert!(set, "no value set {key}");
        }
    }

    fn through_env<T: ConfigFile>(key: &str, value: &str) -> Vec<Setting> {
        let vars = [(env_name::<T>(key).into(), value.into())];
        from_env::<T>(vars).expect("known key")
    }

    fn through_flag(key: &str, value: &str) -> Vec<Setting> {
        vec![Setting::from_set_flag(&format!("{key}={value}")).expect("key=value")]
    }

    #[test]
    fn every_node_key_can_be_set_from_the_environment_and_by_flag() {
        every_key_is_settable::<NodeConfig>(through_env::<NodeConfig>);
        every_key_is_settable::<NodeConfig>(through_flag);
    }

    #[test]
    fn every_controller_key_can_be_set_from_the_environment_and_by_flag() {
        every_key_is_settable::<ControllerConfig>(through_env::<ControllerConfig>);
        every_key_is_settable::<ControllerConfig>(through_flag);
    }

    #[test]
    fn each_variable_names_one_key() {
        for keys in [keys::<NodeConfig>(), keys::<ControllerConfig>()] {
            assert!(keys.iter().all(|k| !k.contains("__")), "{keys:?}");
        }
        assert_eq!(
            env_name::<NodeConfig>("telemetry.otlp_endpoint"),
            "VOLMIG_NODE__TELEMETRY__OTLP_ENDPOINT"
        );
        assert_eq!(
            env_name::<ControllerConfig>("listen"),
            "VOLMIG_CONTROLLER__LISTEN"
        );
        // The named variables of the flags have one underscore and are not
        // read by this layer.
        let vars = [("VOLMIG_NODE_LISTEN".into(), "x".into())];
        assert_eq!(from_env::<NodeConfig>(vars).expect("ignored"), vec![]);
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "listen = \"file:1\"\nnode_id = \"file\"\n").expect("write");
        let vars = [
            ("VOLMIG_NODE__LISTEN".into(), "env:1".into()),
            ("VOLMIG_NODE__STATE_DIR".into(), "/env".into()),
        ];
        let mut settings = from_env::<NodeConfig>(vars).expect("env");
        let cfg: NodeConfig = load_layered(Some(&path), &settings).expect("load");
        assert_eq!(
            (cfg.listen.as_str(), cfg.node_id.as_str()),
            ("env:1", "file")
        );
        settings.push(Setting::from_set_flag("listen=flag:1").expect("set"));
        let cfg: NodeConfig = load_layered(Some(&path), &settings).expect("load");
        assert_eq!(cfg.listen, "flag:1");
        assert_eq!(cfg.state_dir, Path::new("/env"));
    }

    #[test]
    fn a_value_that_is_not_toml_or_does_not_fit_is_a_string() {
        let settings = [
            Setting::from_set_flag("node_id=123").expect("set"),
            Setting::from_set_flag("listen=0.0.0.0:7451").expect("set"),
            Setting::from_set_flag("socket_mode=0o600").expect("set"),
        ];
        let cfg: NodeConfig = load_layered(None, &settings).expect("load");
        assert_eq!(cfg.node_id, "123");
        assert_eq!(cfg.listen, "0.0.0.0:7451");
        assert_eq!(cfg.socket_mode, 0o600);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_key_and_source() {
        let vars = [("VOLMIG_NODE__LISEN".into(), "x".into())];
        let err = from_env::<NodeConfig>(vars)
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("VOLMIG_NODE__LISEN"), "{err}");
        assert!(err.contains("did you mean `listen`"), "{err}");
        let vars = [("VOLMIG_NODE__LISTEN_ON".into(), "x".into())];
        let err = from_env::<NodeConfig>(vars)
            .expect_err("unknown")
            .to_string();
        assert_eq!(
            err,
            "environment variable VOLMIG_NODE__LISTEN_ON: unknown key `listen_on` (did you mean `listen`?)"
        );
        let vars = [("VOLMIG_NODE__listen".into(), "x".into())];
        let err = from_env::<NodeConfig>(vars).expect_err("case").to_string();
        assert!(err.contains("spell it VOLMIG_NODE__LISTEN"), "{err}");

        let set = Setting::from_set_flag("etcd.prefx=/a/").expect("set");
        let err = load_layered::<ControllerConfig>(None, &[set])
            .expect_err("unknown")
            .to_string();
        assert!(
            err.contains("flag --set") && err.contains("`etcd.prefx`"),
            "{err}"
        );
        assert!(err.contains("did you mean `etcd.prefix`"), "{err}");

        let set = Setting::from_set_flag("max_connections=-1").expect("set");
        let err = load_layered::<NodeConfig>(None, &[set])
            .expect_err("negative")
            .to_string();
        assert!(
            err.contains("flag --set") && err.contains("`max_connections`") && err.contains("-1"),
            "{err}"
        );
        let err = Setting::from_set_flag("listen")
            .expect_err("no =")
            .to_string();
        assert!(err.contains("KEY=VALUE"), "{err}");
    }
}
