//! The `volmig` binary: wiring only.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing::Instrument;

use volmig::commented_toml::Style;
use volmig::config::{self, ConfigFile, ControllerConfig, LogFormat, NodeConfig, Setting, Source};

#[derive(Parser)]
#[command(
    name = "volmig",
    version,
    about = "Live migration of a running KVM guest's disk between storage pools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node service on this KVM host.
    Node(NodeArgs),
    /// Run the controller service.
    Controller(ControllerArgs),
    /// Print a shell completion script to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (volmig.1 and one per subcommand) into DIR.
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
    #[command(flatten)]
    Operator(volmig::cli::OperatorCommand),
}

#[derive(clap::Args)]
struct NodeArgs {
    /// TOML config file.
    #[arg(long, env = "VOLMIG_NODE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    print: PrintArgs,
    #[command(flatten)]
    layer: SetArgs,
    /// Node id (default: host name).
    #[arg(long, env = "VOLMIG_NODE_ID")]
    node_id: Option<String>,
    /// unix:///path or host:port.
    #[arg(long, env = "VOLMIG_NODE_LISTEN")]
    listen: Option<String>,
    /// libvirt URI.
    #[arg(long, env = "VOLMIG_LIBVIRT_URI")]
    libvirt_uri: Option<String>,
    /// Directory for the journal.
    #[arg(long, env = "VOLMIG_NODE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Most migrations at once.
    #[arg(long, env = "VOLMIG_MAX_CONCURRENT")]
    max_concurrent: Option<usize>,
    /// Milliseconds to stay SYNCHRONIZED before pivoting.
    #[arg(long, env = "VOLMIG_SYNCHRONIZED_HOLD_MS")]
    synchronized_hold_ms: Option<u64>,
    /// Controller to register with (heartbeats), e.g. http://10.0.0.1:7450.
    #[arg(long = "controller", env = "VOLMIG_REGISTER_WITH")]
    register_with: Option<String>,
    /// Endpoint the controller should use to reach this node (default: --listen).
    #[arg(long, env = "VOLMIG_NODE_ADVERTISE")]
    advertise: Option<String>,
    /// Directory of ceph.client.<user>.keyring files (for private libvirt secrets).
    #[arg(long, env = "VOLMIG_CEPH_KEYRING_DIR")]
    ceph_keyring_dir: Option<PathBuf>,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    observability: ObservabilityArgs,
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// TOML config file.
    #[arg(long, env = "VOLMIG_CONTROLLER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    print: PrintArgs,
    #[command(flatten)]
    layer: SetArgs,
    /// host:port or unix:///path.
    #[arg(long, env = "VOLMIG_CONTROLLER_LISTEN")]
    listen: Option<String>,
    /// Directory for the migration history.
    #[arg(long, env = "VOLMIG_CONTROLLER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    observability: ObservabilityArgs,
}

#[derive(clap::Args)]
struct SetArgs {
    /// Set any key of the file, dotted for a table's (`telemetry.otlp_endpoint=…`);
    /// VALUE is TOML (`5`, `true`, `["a"]`), else taken as text. Repeatable;
    /// wins over the environment (`VOLMIG_NODE__KEY`, `VOLMIG_CONTROLLER__KEY`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(clap::Args)]
struct PrintArgs {
    /// Print the effective configuration (file, environment and flags) as
    /// commented TOML and exit.
    #[arg(long, conflicts_with = "example_config")]
    print_config: bool,
    /// Print every key commented out at its default (the packaged
    /// /etc/volmig file) and exit.
    #[arg(long)]
    example_config: bool,
}

/// Prints the configuration when asked to; whether it did.
fn print_config<T: ConfigFile>(cfg: &T, args: &PrintArgs) -> anyhow::Result<bool> {
    let text = if args.print_config {
        config::to_commented_toml(cfg, Style::Active)?
    } else if args.example_config {
        config::to_commented_toml(&T::default(), Style::CommentedOut)?
    } else {
        return Ok(false);
    };
    print!("{text}");
    Ok(true)
}

#[derive(clap::Args)]
struct ObservabilityArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9450; off by default).
    #[arg(long, env = "VOLMIG_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, env = "VOLMIG_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(clap::Args)]
struct SecurityArgs {
    /// CA certificate (PEM) that clients' and peers' certificates must chain to.
    #[arg(long = "ca", env = "VOLMIG_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This service's certificate chain (PEM); re-read when the file changes.
    #[arg(long = "cert", env = "VOLMIG_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// This service's private key (PEM); re-read when the file changes.
    #[arg(long = "key", env = "VOLMIG_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve plaintext TCP on a non-loopback address (insecure; logged at every start).
    #[arg(long)]
    insecure_plaintext: bool,
    /// File holding the bearer token presented to the services this one calls.
    #[arg(long, env = "VOLMIG_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

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
    ) -> anyhow::Result<T> {
        let mut settings = config::from_env::<T>(vars)?;
        settings.extend(self.env);
        for arg in set {
            settings.push(Setting::from_set_flag(arg)?);
        }
        settings.extend(self.flags);
        Ok(config::load_layered(file, &settings)?)
    }
}

/// `volmig node`'s configuration from every layer.
fn node_config(
    args: &NodeArgs,
    command: &clap::Command,
    matches: &ArgMatches,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> anyhow::Result<NodeConfig> {
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
fn controller_config(
    args: &ControllerArgs,
    command: &clap::Command,
    matches: &ArgMatches,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> anyhow::Result<ControllerConfig> {
    let mut named = Named::of(command, matches, "controller")?;
    named.add("listen", "listen", args.listen.as_ref())?;
    named.add("state_dir", "state_dir", args.state_dir.as_ref())?;
    named.security(&args.security)?;
    named.observability(&args.observability)?;
    named.load(args.config.as_deref(), &args.layer.set, vars)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<i32> {
    match cli.command {
        Command::Node(args) => {
            let cfg = node_config(&args, &Cli::command(), matches, std::env::vars_os())?;
            if print_config(&cfg, &args.print)? {
                return Ok(0);
            }
            // Logging (and trace export if configured) in the chosen format.
            let _traces = volmig::telemetry::init(cfg.log_format, "volmig-node", &cfg.telemetry)?;
            #[cfg(feature = "node")]
            volmig::serve::node::run(cfg, args.config, shutdown_signal()).await?;
            #[cfg(not(feature = "node"))]
            anyhow::bail!(
                "this volmig was built without the node service (cargo feature `node`, which links libvirt): install the full build on KVM hosts"
            );
            #[cfg(feature = "node")]
            Ok(0)
        }
        Command::Controller(args) => {
            let cfg = controller_config(&args, &Cli::command(), matches, std::env::vars_os())?;
            if print_config(&cfg, &args.print)? {
                return Ok(0);
            }
            let _traces =
                volmig::telemetry::init(cfg.log_format, "volmig-controller", &cfg.telemetry)?;
            volmig::serve::controller::run(cfg, args.config, shutdown_signal()).await?;
            Ok(0)
        }
        Command::Completions { shell } => {
            volmig::cli::generate::completions(Cli::command(), shell, &mut std::io::stdout())?;
            Ok(0)
        }
        Command::Man { dir } => {
            volmig::cli::generate::man_pages(Cli::command(), &dir)?;
            Ok(0)
        }
        Command::Operator(cmd) => {
            let _traces = volmig::telemetry::init(
                LogFormat::Text,
                "volmig-cli",
                &config::TelemetryConfig::default(),
            )?;
            // The root of the trace the controller and the node continue.
            volmig::cli::run(cmd)
                .instrument(tracing::info_span!("volmig.cli"))
                .await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // The matches, not only the parsed values, tell whether a named setting
    // came from its flag or its variable, which decides its layer.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli, &matches).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> (Cli, clap::Command, ArgMatches) {
        let command = Cli::command();
        let matches = command.clone().try_get_matches_from(argv).expect("parses");
        let cli = Cli::from_arg_matches(&matches).expect("matches");
        (cli, command, matches)
    }

    #[test]
    fn each_named_node_flag_sets_its_key_over_set_flags() {
        let (cli, command, matches) = parse(&[
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
        let Command::Node(args) = cli.command else {
            panic!("not the node command");
        };
        let cfg = node_config(&args, &command, &matches, []).expect("loads");
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
        let (cli, command, matches) = parse(&[
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
        let Command::Controller(args) = cli.command else {
            panic!("not the controller command");
        };
        let cfg = controller_config(&args, &command, &matches, []).expect("loads");
        let want = ControllerConfig {
            listen: "l:1".into(),
            state_dir: "/s".into(),
            max_nodes: 7,
            log_format: LogFormat::Json,
            ..ControllerConfig::default()
        };
        assert_eq!(cfg, want);
    }
}
