//! A service's configuration from every layer: the file, the environment,
//! the flags. The named flags (`--listen`, …) and their variables
//! (`VOLMIG_NODE_LISTEN`, …) join the generic layers of
//! [`crate::config::load_layered`] in the layer clap found each in.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::ArgMatches;

use super::args::{ControllerArgs, NodeArgs, ObservabilityArgs, SecurityArgs};
use crate::config::{self, ConfigFile, ControllerConfig, NodeConfig, Setting, Source};

/// A component's settings from its named flags (`--listen`, …) and their
/// variables (`VOLMIG_NODE_LISTEN`, …), sorted by where clap found each into
/// the environment layer and the flag layer.
struct Named<'a> {
    command: &'a clap::Command,
    matches: &'a ArgMatches,
    env: Vec<Setting>,
    flags: Vec<Setting>,
}

impl<'a> Named<'a> {
    /// The named settings of the subcommand `name`.
    fn of(command: &'a clap::Command, matches: &'a ArgMatches, name: &str) -> anyhow::Result<Self> {
        let (Some(command), Some(matches)) = (
            command.find_subcommand(name),
            matches.subcommand_matches(name),
        ) else {
            anyhow::bail!("no arguments for subcommand {name}");
        };
        Ok(Named {
            command,
            matches,
            env: Vec::new(),
            flags: Vec::new(),
        })
    }

    /// `value`, the argument `id`, sets `key` (unless clap defaulted it).
    fn add<V: serde::Serialize>(
        &mut self,
        id: &str,
        key: &str,
        value: Option<&V>,
    ) -> anyhow::Result<()> {
        let Some(value) = value else {
            return Ok(());
        };
        let Some(arg) = self.command.get_arguments().find(|a| a.get_id() == id) else {
            anyhow::bail!("no argument {id}");
        };
        let source = match self.matches.value_source(id) {
            Some(ValueSource::EnvVariable) => Source::Env(
                arg.get_env()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            Some(ValueSource::CommandLine) => {
                Source::Flag(format!("--{}", arg.get_long().unwrap_or(id)))
            }
            _ => return Ok(()),
        };
        let setting = Setting::typed(key, value, source)?;
        match setting.source {
            Source::Env(_) => self.env.push(setting),
            Source::Flag(_) => self.flags.push(setting),
        }
        Ok(())
    }

    fn security(&mut self, args: &SecurityArgs) -> anyhow::Result<()> {
        self.add("tls_ca", "tls_ca", args.tls_ca.as_ref())?;
        self.add("tls_cert", "tls_cert", args.tls_cert.as_ref())?;
        self.add("tls_key", "tls_key", args.tls_key.as_ref())?;
        self.add(
            "insecure_plaintext",
            "insecure_plaintext",
            Some(&args.insecure_plaintext),
        )?;
        self.add("token_file", "token_file", args.token_file.as_ref())
    }

    fn observability(&mut self, args: &ObservabilityArgs) -> anyhow::Result<()> {
        self.add(
            "metrics_listen",
            "metrics_listen",
            args.metrics_listen.as_ref(),
        )?;
        self.add("log_format", "log_format", args.log_format.as_ref())
    }

    /// The component's configuration: its file, then the environment (the
    /// generic variables, then the named ones), then the flags (`--set`,
    /// then the named ones); within one layer the named spelling wins.
    fn load<T: ConfigFile>(
        self,
        file: Option<&Path>,
        set: &[String],
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> anyhow::Result<Layered<T>> {
        let mut settings = config::from_env::<T>(vars)?;
        settings.extend(self.env);
        for arg in set {
            settings.push(Setting::from_set_flag(arg)?);
        }
        settings.extend(self.flags);
        let config = config::load_layered(file, &settings)?;
        let grants_elsewhere = settings
            .iter()
            .any(|s| GRANT_KEYS.contains(&s.key.as_str()));
        Ok(Layered {
            config,
            grants_file: file.filter(|_| !grants_elsewhere).map(Path::to_path_buf),
            unwatched: file.is_some() && grants_elsewhere,
        })
    }
}

/// The keys a service re-reads from its file while it runs.
const GRANT_KEYS: [&str; 2] = ["identities", "tokens"];

/// A service's configuration, and the file to re-read its `identities` and
/// `tokens` from as it changes: none without a file, nor when the
/// environment or a flag set either key, since re-reading the file alone
/// would drop what they set.
pub struct Layered<T> {
    /// The configuration from every layer.
    pub config: T,
    /// The file to watch for new grants.
    pub grants_file: Option<PathBuf>,
    /// Whether there is a file that `grants_file` leaves unwatched.
    unwatched: bool,
}

impl<T> Layered<T> {
    /// Says, once logging is set up, that the file's grants are not re-read.
    pub fn warn_if_unwatched(&self) {
        if self.unwatched {
            tracing::warn!(
                "identities or tokens set by the environment or a flag: the config file is not re-read for them (restart to change them)"
            );
        }
    }
}

/// `volmig node`'s configuration from every layer.
pub fn node_config(
    args: &NodeArgs,
    command: &clap::Command,
    matches: &ArgMatches,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> anyhow::Result<Layered<NodeConfig>> {
    let mut named = Named::of(command, matches, "node")?;
    named.add("node_id", "node_id", args.node_id.as_ref())?;
    named.add("listen", "listen", args.listen.as_ref())?;
    named.add("libvirt_uri", "libvirt_uri", args.libvirt_uri.as_ref())?;
    named.add("state_dir", "state_dir", args.state_dir.as_ref())?;
    named.add(
        "max_concurrent",
        "max_concurrent_migrations",
        args.max_concurrent.as_ref(),
    )?;
    named.add(
        "synchronized_hold_ms",
        "synchronized_hold_ms",
        args.synchronized_hold_ms.as_ref(),
    )?;
    named.add("register_with", "controller", args.register_with.as_ref())?;
    named.add("advertise", "advertise", args.advertise.as_ref())?;
    named.add(
        "ceph_keyring_dir",
        "ceph_keyring_dir",
        args.ceph_keyring_dir.as_ref(),
    )?;
    named.security(&args.security)?;
    named.observability(&args.observability)?;
    named.load(args.config.as_deref(), &args.layer.set, vars)
}

/// `volmig controller`'s configuration from every layer.
pub fn controller_config(
    args: &ControllerArgs,
    command: &clap::Command,
    matches: &ArgMatches,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> anyhow::Result<Layered<ControllerConfig>> {
    let mut named = Named::of(command, matches, "controller")?;
    named.add("listen", "listen", args.listen.as_ref())?;
    named.add("state_dir", "state_dir", args.state_dir.as_ref())?;
    named.security(&args.security)?;
    named.observability(&args.observability)?;
    named.load(args.config.as_deref(), &args.layer.set, vars)
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    use super::*;
    use crate::config::LogFormat;

    /// The two services' subcommands, as the binary has them.
    fn command() -> clap::Command {
        clap::Command::new("volmig")
            .subcommand(NodeArgs::augment_args(clap::Command::new("node")))
            .subcommand(ControllerArgs::augment_args(clap::Command::new(
                "controller",
            )))
    }

    /// `argv` parsed: the arguments of its subcommand, the command, the matches.
    fn parse<A: FromArgMatches>(argv: &[&str]) -> (A, clap::Command, ArgMatches) {
        let command = command();
        let matches = command.clone().try_get_matches_from(argv).expect("parses");
        let (_, sub) = matches.subcommand().expect("a subcommand");
        let args = A::from_arg_matches(sub).expect("its arguments");
        (args, command, matches)
    }

    #[test]
    fn each_named_node_flag_sets_its_key_over_set_flags() {
        let (args, command, matches) = parse::<NodeArgs>(&[
            "volmig",
            "node",
            "--set",
            "listen=set:1",
            "--node-id",
            "n1",
            "--listen",
            "flag:1",
            "--libvirt-uri",
            "test:///default",
            "--state-dir",
            "/s",
            "--max-concurrent",
            "9",
            "--synchronized-hold-ms",
            "5",
            "--controller",
            "c:1",
            "--advertise",
            "a:1",
            "--ceph-keyring-dir",
            "/k",
            "--ca",
            "/ca.pem",
            "--cert",
            "/c.pem",
            "--key",
            "/k.pem",
            "--insecure-plaintext",
            "--token-file",
            "/t",
            "--metrics-listen",
            "m:1",
            "--log-format",
            "json",
        ]);
        let cfg = node_config(&args, &command, &matches, [])
            .expect("loads")
            .config;
        let want = NodeConfig {
            node_id: "n1".into(),
            listen: "flag:1".into(),
            libvirt_uri: "test:///default".into(),
            state_dir: "/s".into(),
            max_concurrent_migrations: 9,
            synchronized_hold_ms: 5,
            controller: "c:1".into(),
            advertise: "a:1".into(),
            ceph_keyring_dir: "/k".into(),
            tls_ca: Some("/ca.pem".into()),
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/k.pem".into()),
            insecure_plaintext: true,
            token_file: Some("/t".into()),
            metrics_listen: "m:1".into(),
            log_format: LogFormat::Json,
            ..NodeConfig::default()
        };
        assert_eq!(cfg, want);
    }

    #[test]
    fn each_named_controller_flag_sets_its_key() {
        let (args, command, matches) = parse::<ControllerArgs>(&[
            "volmig",
            "controller",
            "--listen",
            "l:1",
            "--state-dir",
            "/s",
            "--set",
            "max_nodes=7",
            "--log-format",
            "json",
        ]);
        let cfg = controller_config(&args, &command, &matches, [])
            .expect("loads")
            .config;
        let want = ControllerConfig {
            listen: "l:1".into(),
            state_dir: "/s".into(),
            max_nodes: 7,
            log_format: LogFormat::Json,
            ..ControllerConfig::default()
        };
        assert_eq!(cfg, want);
    }

    #[test]
    fn the_file_is_watched_for_grants_only_when_no_other_layer_set_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("controller.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:7450\"\n").expect("write");
        let file = file.to_string_lossy().into_owned();
        for (set, watched) in [
            ("max_nodes=3", true),
            (
                "tokens=[{ name = \"ci\", role = \"viewer\", sha256 = \"00\" }]",
                false,
            ),
        ] {
            let (args, command, matches) =
                parse::<ControllerArgs>(&["volmig", "controller", "--config", &file, "--set", set]);
            let layered = controller_config(&args, &command, &matches, []).expect("loads");
            assert_eq!(layered.grants_file.is_some(), watched, "{set}");
        }
        let vars = [("VOLMIG_CONTROLLER__IDENTITIES".into(), "[]".into())];
        let (args, command, matches) =
            parse::<ControllerArgs>(&["volmig", "controller", "--config", &file]);
        let layered = controller_config(&args, &command, &matches, vars).expect("loads");
        assert_eq!(layered.grants_file, None);
    }
}
