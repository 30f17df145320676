//! The `volmig` binary: wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tracing::Instrument;

use volmig::commented_toml::Style;
use volmig::config::{self, ConfigFile, ControllerConfig, LogFormat, NodeConfig};

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

/// Overrides the config file's observability keys with the flags given.
macro_rules! apply_observability {
    ($cfg:expr, $args:expr) => {{
        if let Some(v) = $args.metrics_listen {
            $cfg.metrics_listen = v;
        }
        if let Some(v) = $args.log_format {
            $cfg.log_format = v;
        }
    }};
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

/// Overrides the config file's security keys with the flags given.
macro_rules! apply_security {
    ($cfg:expr, $args:expr) => {
        if let Some(v) = $args.tls_ca {
            $cfg.tls_ca = Some(v);
        }
        if let Some(v) = $args.tls_cert {
            $cfg.tls_cert = Some(v);
        }
        if let Some(v) = $args.tls_key {
            $cfg.tls_key = Some(v);
        }
        if $args.insecure_plaintext {
            $cfg.insecure_plaintext = true;
        }
        if let Some(v) = $args.token_file {
            $cfg.token_file = Some(v);
        }
    };
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

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Node(args) => {
            let mut cfg: NodeConfig = config::load(args.config.as_deref())?;
            if let Some(v) = args.node_id {
                cfg.node_id = v;
            }
            if let Some(v) = args.listen {
                cfg.listen = v;
            }
            if let Some(v) = args.libvirt_uri {
                cfg.libvirt_uri = v;
            }
            if let Some(v) = args.state_dir {
                cfg.state_dir = v;
            }
            if let Some(v) = args.max_concurrent {
                cfg.max_concurrent_migrations = v;
            }
            if let Some(v) = args.synchronized_hold_ms {
                cfg.synchronized_hold_ms = v;
            }
            if let Some(v) = args.register_with {
                cfg.controller = v;
            }
            if let Some(v) = args.advertise {
                cfg.advertise = v;
            }
            if let Some(v) = args.ceph_keyring_dir {
                cfg.ceph_keyring_dir = v;
            }
            apply_security!(cfg, args.security);
            apply_observability!(cfg, args.observability);
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
            let mut cfg: ControllerConfig = config::load(args.config.as_deref())?;
            if let Some(v) = args.listen {
                cfg.listen = v;
            }
            if let Some(v) = args.state_dir {
                cfg.state_dir = v;
            }
            apply_security!(cfg, args.security);
            apply_observability!(cfg, args.observability);
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
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
