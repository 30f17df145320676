//! The operator commands of the `volmig` binary (`migrate`, `watch`, `pools`, …):
//! clap arguments, one gRPC call or stream each, and their output.
//!
//! Every command talks to a node (`--node`, the default being the local unix
//! socket) or to the controller (`--controller`); see [`target`]. Output is
//! for people unless `--json` is given, in which case stdout holds only JSON.
//! Failures are one `error: CODE: message` line on stderr and exit code 1;
//! nothing from outside the process can make this module panic.

pub mod generate;
mod json;
mod progress;
pub mod quantities;
mod report;
mod table;
mod target;

use std::io::{self, IsTerminal, Write};

use clap::{Args, Subcommand, ValueEnum};

use crate::api::client::{code_name, status_message, ClientError, Peer};
use crate::proto::controller_client::ControllerClient;
use crate::proto::node_client::NodeClient;
use crate::proto::{
    ChainPolicy, CopyMode, DiskDestination, GetInfoRequest, ListClusterPoolsRequest,
    ListDisksRequest, ListMigrationsRequest, ListNodesRequest, ListPoolsRequest,
    MigrateVolumeRequest, MigrationOptions, NoConvergencePolicy, SourcePolicy, VerifyLevel,
    VolumeFormat,
};
use progress::{Detach, Style};
use quantities::{human_rate, parse_bandwidth};
use target::{Accepts, Service, TargetArgs, TargetError};

/// The operator subcommands; the binary's own subcommand enum flattens this in.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Move a disk of a running domain to another storage pool and follow it
    Migrate(MigrateArgs),
    /// Show where the controller would place a migration, without starting it
    Plan(PlanArgs),
    /// Follow a migration until it ends (Ctrl-C only stops watching)
    Watch(WatchArgs),
    /// Stop a migration before it pivots; the guest stays on its source
    Cancel(IdArgs),
    /// Show one migration
    Status(StatusArgs),
    /// List migrations, newest first
    List(ListArgs),
    /// Change the copy bandwidth of a running migration
    SetBandwidth(SetBandwidthArgs),
    /// List storage pools (with --controller: every node's, shared ones merged)
    Pools(OutputArgs),
    /// List the disks of a domain
    Disks(DisksArgs),
    /// Show what a node is and what it can migrate
    Info(OutputArgs),
    /// List the controller's nodes
    Nodes(OutputArgs),
}

/// Destination format of the new volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Raw image or block device.
    Raw,
    /// qcow2 image (file pools only).
    Qcow2,
}

/// How much is checked before a migration counts as completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyArg {
    /// Live and persistent domain XML both name the destination.
    Xml,
    /// XML, plus the destination volume and the guest's block device have the source's size.
    Strict,
}

/// What a migration does when its copy does not converge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NoConvergenceArg {
    /// Report it once and keep copying.
    Warn,
    /// Fail and roll back (the guest stays on its source).
    Fail,
    /// Restart the disk's copy in synchronous-writes mode, which always converges.
    SwitchToSyncWrites,
}

/// What to migrate and how; shared by `migrate` and `plan`.
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// Domain name or UUID
    #[arg(long)]
    pub domain: String,
    /// Disk target (vda) or the disk's current source path; repeat it to move several
    /// disks as one migration (pivoted together once all are synchronized)
    #[arg(
        long = "disk",
        value_name = "DISK",
        required_unless_present = "all_disks"
    )]
    pub disks: Vec<String>,
    /// Move every disk of the domain that can move, as one migration (cdroms, empty,
    /// read-only and shareable disks are skipped and listed)
    #[arg(long, conflicts_with = "disks")]
    pub all_disks: bool,
    /// With several disks: at most this many copies at once [default: all]
    #[arg(long, value_name = "N")]
    pub max_parallel_copies: Option<u32>,
    /// With several disks through the controller: all must land on one pool
    #[arg(long)]
    pub same_pool: bool,
    /// Destination storage pool; required with a node, chosen by the controller when omitted
    #[arg(long, value_name = "POOL")]
    pub to_pool: Option<String>,
    /// Destination volume name [default: the source volume's name]
    #[arg(long, value_name = "NAME")]
    pub to_volume: Option<String>,
    /// Destination format [default: qcow2 on file pools when the source is qcow2, raw otherwise]
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Copy bandwidth limit per second, e.g. 50MiB, 10M, 1G [default: unlimited]
    #[arg(long, value_name = "SIZE", value_parser = parse_bandwidth)]
    pub bandwidth: Option<u64>,
    /// Complete guest writes only once they reach both disks: always converges, slows guest writes
    #[arg(long)]
    pub sync_writes: bool,
    /// When the copy cannot catch up with the guest's writes within the convergence window
    /// [default: warn]
    #[arg(long, value_enum, value_name = "POLICY")]
    pub on_no_convergence: Option<NoConvergenceArg>,
    /// Seconds the bytes left to copy may fail to shrink before the copy counts as not
    /// converging (5-86400) [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub convergence_window: Option<u64>,
    /// Copy only the top image and keep its backing file, which the destination must reach
    #[arg(long)]
    pub shallow: bool,
    /// Delete the source volume once the migration is verified
    #[arg(long)]
    pub delete_source: bool,
    /// Cancel the migration if it has not pivoted after this many seconds [default: no timeout]
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// What to check before the migration counts as completed [default: xml]
    #[arg(long, value_enum)]
    pub verify: Option<VerifyArg>,
    /// Idempotency key: rerunning with the same id attaches to the migration it started
    /// [default: a new UUID for migrate]
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
    /// The destination pool must carry this tag (repeatable; used by the controller's placement)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

impl RequestArgs {
    fn to_request(&self, request_id: String) -> MigrateVolumeRequest {
        let pick = |on: bool, yes: i32, no: i32| if on { yes } else { no };
        // One --disk is today's single-disk request; several are one group.
        let (disk, disks) = match self.disks.as_slice() {
            [one] if !self.all_disks => (one.clone(), Vec::new()),
            many => (
                String::new(),
                many.iter()
                    .map(|d| DiskDestination {
                        disk: d.clone(),
                        ..Default::default()
                    })
                    .collect(),
            ),
        };
        MigrateVolumeRequest {
            request_id,
            domain: self.domain.clone(),
            disk,
            disks,
            all_disks: self.all_disks,
            max_parallel_copies: self.max_parallel_copies.unwrap_or(0),
            same_pool: self.same_pool,
            destination_pool: self.to_pool.clone().unwrap_or_default(),
            destination_volume: self.to_volume.clone().unwrap_or_default(),
            destination_format: match self.format {
                Some(FormatArg::Raw) => VolumeFormat::Raw,
                Some(FormatArg::Qcow2) => VolumeFormat::Qcow2,
                None => VolumeFormat::Unspecified,
            } as i32,
            options: Some(MigrationOptions {
                bandwidth_bytes_per_sec: self.bandwidth.unwrap_or(0),
                copy_mode: pick(
                    self.sync_writes,
                    CopyMode::SynchronousWrites as i32,
                    CopyMode::Background as i32,
                ),
                chain_policy: pick(
                    self.shallow,
                    ChainPolicy::Shallow as i32,
                    ChainPolicy::Flatten as i32,
                ),
                source_policy: pick(
                    self.delete_source,
                    SourcePolicy::Delete as i32,
                    SourcePolicy::Keep as i32,
                ),
                timeout_seconds: self.timeout.unwrap_or(0),
                verify: match self.verify {
                    Some(VerifyArg::Strict) => VerifyLevel::Strict,
                    Some(VerifyArg::Xml) | None => VerifyLevel::Xml,
                } as i32,
                source_users_elsewhere: Vec::new(),
                on_no_convergence: match self.on_no_convergence {
                    Some(NoConvergenceArg::Warn) => NoConvergencePolicy::Warn,
                    Some(NoConvergenceArg::Fail) => NoConvergencePolicy::Fail,
                    Some(NoConvergenceArg::SwitchToSyncWrites) => {
                        NoConvergencePolicy::SwitchToSyncWrites
                    }
                    None => NoConvergencePolicy::Unspecified,
                } as i32,
                convergence_window_seconds: self.convergence_window.unwrap_or(0),
            }),
            required_tags: self.tags.clone(),
        }
    }
}

/// `--json`, for commands that have nothing else to say.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Print JSON instead of a table (one object; for migrate and watch, one per event)
    #[arg(long)]
    json: bool,
}

/// Arguments of `migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    request: RequestArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `plan`.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    request: RequestArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Migration id
    id: String,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `cancel`.
#[derive(Debug, Clone, Args)]
pub struct IdArgs {
    /// Migration id
    id: String,
    #[command(flatten)]
    target: TargetArgs,
}

/// Arguments of `status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Migration id
    id: String,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only migrations of this domain
    #[arg(long)]
    domain: Option<String>,
    /// Only migrations that have not ended
    #[arg(long)]
    active: bool,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `set-bandwidth`.
#[derive(Debug, Clone, Args)]
pub struct SetBandwidthArgs {
    /// Migration id
    id: String,
    /// New limit per second, e.g. 50MiB; 0 removes the limit
    #[arg(value_name = "SIZE", value_parser = parse_bandwidth)]
    bandwidth: u64,
    #[command(flatten)]
    target: TargetArgs,
}

/// Arguments of `disks`.
#[derive(Debug, Clone, Args)]
pub struct DisksArgs {
    /// Domain name or UUID
    #[arg(long)]
    domain: String,
    #[command(flatten)]
    output: OutputArgs,
}

/// Why a command failed. All but [`CliError::Output`] are the operator's to
/// fix or the server's to report, and end the command with exit code 1.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{code}: {0}", code = code_name(.0.code()))]
    Connect(#[from] ClientError),
    #[error("{}", status_message(.0))]
    Rpc(#[from] tonic::Status),
    #[error("INVALID_ARGUMENT: {0}")]
    Target(#[from] TargetError),
    #[error("INVALID_ARGUMENT: {0}")]
    Usage(&'static str),
    #[error("cannot write output")]
    Output(#[from] io::Error),
}

/// Runs one operator command and returns the process exit code: 0 on success,
/// 1 on any failure (already reported on stderr), 130 when a followed
/// migration was detached with Ctrl-C (it goes on in the node). An `Err`
/// means the output itself could not be written (e.g. stdout closed).
pub async fn run(cmd: OperatorCommand) -> anyhow::Result<i32> {
    match execute(cmd).await {
        Ok(code) => Ok(code),
        Err(CliError::Output(err)) => Err(anyhow::Error::new(err).context("cannot write output")),
        Err(err) => {
            writeln!(io::stderr(), "error: {err}")
                .map_err(|e| anyhow::Error::new(e).context("cannot write to stderr"))?;
            Ok(1)
        }
    }
}

async fn execute(cmd: OperatorCommand) -> Result<i32, CliError> {
    match cmd {
        OperatorCommand::Migrate(args) => migrate(args).await,
        OperatorCommand::Plan(args) => plan(args).await,
        OperatorCommand::Watch(args) => watch(args).await,
        OperatorCommand::Cancel(args) => cancel(args).await,
        OperatorCommand::Status(args) => status(args).await,
        OperatorCommand::List(args) => list(args).await,
        OperatorCommand::SetBandwidth(args) => set_bandwidth(args).await,
        OperatorCommand::Pools(args) => pools(args).await,
        OperatorCommand::Disks(args) => disks(args).await,
        OperatorCommand::Info(args) => info(args).await,
        OperatorCommand::Nodes(args) => nodes(args).await,
    }
}

fn style(json: bool) -> Style {
    if json {
        Style::Json
    } else if io::stderr().is_terminal() {
        Style::Live
    } else {
        Style::Plain
    }
}

/// Writes a command's whole output to stdout: a JSON value on one line, or text.
fn print(
    json: bool,
    value: impl FnOnce() -> serde_json::Value,
    text: impl FnOnce() -> String,
) -> Result<i32, CliError> {
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", value())?;
    } else {
        write!(out, "{}", text())?;
    }
    out.flush()?;
    Ok(0)
}

async fn migrate(args: MigrateArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("migrate", Accepts::Either)?;
    if target.peer == Peer::Node && args.request.to_pool.is_none() {
        return Err(CliError::Usage(
            "--to-pool is required with a node; only the controller chooses a pool (--controller)",
        ));
    }
    // A request id chosen here, not by the server, lets the operator reattach
    // with the same command if the stream is lost before its first event.
    let request_id = args
        .request
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let request = args.request.to_request(request_id.clone());
    let stream = Service::connect(&target).await?.migrate(request).await?;
    let detach = Detach {
        target_flags: target.flags(),
        migration_id: None,
        request: Some((request_id, args.request.domain.clone())),
    };
    Ok(progress::follow(stream, style(args.output.json), &detach).await?)
}

async fn plan(args: PlanArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("plan", Accepts::Controller)?;
    let request = args
        .request
        .to_request(args.request.request_id.clone().unwrap_or_default());
    let reply = ControllerClient::new(target.channel().await?)
        .plan_migration(request)
        .await?
        .into_inner();
    print(
        args.output.json,
        || json::plan(&reply),
        || report::plan(&reply),
    )
}

async fn watch(args: WatchArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("watch", Accepts::Either)?;
    let stream = Service::connect(&target)
        .await?
        .watch(args.id.clone())
        .await?;
    let detach = Detach {
        target_flags: target.flags(),
        migration_id: Some(args.id),
        request: None,
    };
    Ok(progress::follow(stream, style(args.output.json), &detach).await?)
}

async fn cancel(args: IdArgs) -> Result<i32, CliError> {
    let target = args.target.resolve("cancel", Accepts::Either)?;
    let reply = Service::connect(&target)
        .await?
        .cancel(args.id.clone())
        .await?;
    let was = reply
        .latest
        .map(|ev| format!(" (it was {})", progress::phase_name(ev.phase())))
        .unwrap_or_default();
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "cancelling migration {id}{was}: the guest stays on its source and the destination volume is deleted\n  \
         follow it: volmig watch {id}{flags}",
        id = args.id,
        flags = target.flags()
    )?;
    Ok(0)
}

async fn status(args: StatusArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("status", Accepts::Either)?;
    let record = Service::connect(&target).await?.get(args.id).await?;
    print(
        args.output.json,
        || json::record(&record),
        || report::record(&record),
    )
}

async fn list(args: ListArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("list", Accepts::Either)?;
    let request = ListMigrationsRequest {
        domain: args.domain.unwrap_or_default(),
        active_only: args.active,
        ..Default::default()
    };
    let reply = Service::connect(&target).await?.list(request).await?;
    print(
        args.output.json,
        || json::records(&reply.migrations),
        || report::migrations(&reply.migrations),
    )
}

async fn set_bandwidth(args: SetBandwidthArgs) -> Result<i32, CliError> {
    let target = args.target.resolve("set-bandwidth", Accepts::Either)?;
    Service::connect(&target)
        .await?
        .set_bandwidth(args.id.clone(), args.bandwidth)
        .await?;
    let limit = if args.bandwidth == 0 {
        "limit removed".to_string()
    } else {
        format!("limit set to {}", human_rate(args.bandwidth))
    };
    writeln!(
        io::stdout().lock(),
        "migration {}: copy bandwidth {limit}",
        args.id
    )?;
    Ok(0)
}

async fn pools(args: OutputArgs) -> Result<i32, CliError> {
    let target = args.target.resolve("pools", Accepts::Either)?;
    let channel = target.channel().await?;
    match target.peer {
        Peer::Node => {
            let reply = NodeClient::new(channel)
                .list_pools(ListPoolsRequest {})
                .await?
                .into_inner();
            print(
                args.json,
                || json::pools(&reply.pools),
                || report::pools(&reply.pools),
            )
        }
        Peer::Controller => {
            let reply = ControllerClient::new(channel)
                .list_pools(ListClusterPoolsRequest {})
                .await?
                .into_inner();
            print(
                args.json,
                || json::cluster_pools(&reply.pools),
                || report::cluster_pools(&reply.pools),
            )
        }
    }
}

async fn disks(args: DisksArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("disks", Accepts::Node)?;
    let reply = NodeClient::new(target.channel().await?)
        .list_disks(ListDisksRequest {
            domain: args.domain,
        })
        .await?
        .into_inner();
    print(
        args.output.json,
        || json::disks(&reply),
        || report::disks(&reply),
    )
}

async fn info(args: OutputArgs) -> Result<i32, CliError> {
    let target = args.target.resolve("info", Accepts::Node)?;
    let reply = NodeClient::new(target.channel().await?)
        .get_info(GetInfoRequest {})
        .await?
        .into_inner();
    print(
        args.json,
        || json::node_info(&reply),
        || report::node_info(&reply),
    )
}

async fn nodes(args: OutputArgs) -> Result<i32, CliError> {
    let target = args.target.resolve("nodes", Accepts::Controller)?;
    let reply = ControllerClient::new(target.channel().await?)
        .list_nodes(ListNodesRequest {})
        .await?
        .into_inner();
    print(
        args.json,
        || json::nodes(&reply.nodes),
        || report::nodes(&reply.nodes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        cmd: OperatorCommand,
    }

    fn parse(args: &[&str]) -> Result<OperatorCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("volmig").chain(args.iter().copied()))
            .map(|c| c.cmd)
    }

    #[test]
    fn command_definitions_are_consistent() {
        use clap::CommandFactory;
        TestCli::command().debug_assert();
    }

    #[test]
    fn migrate_flags_become_the_request() {
        let cmd = parse(&[
            "migrate",
            "--domain",
            "vm1",
            "--disk",
            "vda",
            "--to-pool",
            "fast",
            "--to-volume",
            "vm1-new",
            "--format",
            "qcow2",
            "--bandwidth",
            "50MiB",
            "--sync-writes",
            "--shallow",
            "--delete-source",
            "--timeout",
            "600",
            "--verify",
            "strict",
            "--request-id",
            "r1",
            "--tag",
            "ssd",
            "--tag",
            "eu",
            "--on-no-convergence",
            "switch-to-sync-writes",
            "--convergence-window",
            "30",
            "--json",
        ])
        .expect("parses");
        let OperatorCommand::Migrate(args) = cmd else {
            panic!("not migrate: {cmd:?}");
        };
        assert!(args.output.json);
        let request = args.request.to_request("r1".into());
        assert_eq!(
            request,
            MigrateVolumeRequest {
                request_id: "r1".into(),
                domain: "vm1".into(),
                disk: "vda".into(),
                destination_pool: "fast".into(),
                destination_volume: "vm1-new".into(),
                destination_format: VolumeFormat::Qcow2 as i32,
                options: Some(MigrationOptions {
                    bandwidth_bytes_per_sec: 50 << 20,
                    copy_mode: CopyMode::SynchronousWrites as i32,
                    chain_policy: ChainPolicy::Shallow as i32,
                    source_policy: SourcePolicy::Delete as i32,
                    timeout_seconds: 600,
                    verify: VerifyLevel::Strict as i32,
                    source_users_elsewhere: vec![],
                    on_no_convergence: NoConvergencePolicy::SwitchToSyncWrites as i32,
                    convergence_window_seconds: 30,
                }),
                required_tags: vec!["ssd".into(), "eu".into()],
                ..Default::default()
            }
        );
    }

    fn migrate_request(args: &[&str]) -> MigrateVolumeRequest {
        let cmd = parse(&[&["migrate", "--domain", "vm1"], args].concat()).expect("parses");
        let OperatorCommand::Migrate(args) = cmd else {
            panic!("not migrate: {cmd:?}");
        };
        args.request.to_request("r1".into())
    }

    #[test]
    fn several_disks_or_all_disks_make_one_multi_disk_request() {
        let request = migrate_request(&[
            "--disk",
            "vda",
            "--disk",
            "vdb",
            "--to-pool",
            "fast",
            "--max-parallel-copies",
            "1",
        ]);
        assert!(request.disk.is_empty());
        let named: Vec<&str> = request.disks.iter().map(|d| d.disk.as_str()).collect();
        assert_eq!(named, ["vda", "vdb"]);
        assert_eq!(request.max_parallel_copies, 1);
        let request = migrate_request(&["--all-disks", "--to-pool", "fast"]);
        assert!(request.all_disks && request.disk.is_empty() && request.disks.is_empty());
        assert!(parse(&["migrate", "--domain", "vm1", "--all-disks", "--disk", "vda"]).is_err());
        assert!(parse(&["migrate", "--domain", "vm1"]).is_err());
    }

    #[test]
    fn migrate_defaults_are_the_safe_choices() {
        let cmd = parse(&["migrate", "--domain", "vm1", "--disk", "vda"]).expect("parses");
        let OperatorCommand::Migrate(args) = cmd else {
            panic!("not migrate: {cmd:?}");
        };
        let options = args
            .request
            .to_request(String::new())
            .options
            .expect("options");
        assert_eq!(options.copy_mode(), CopyMode::Background);
        assert_eq!(options.chain_policy(), ChainPolicy::Flatten);
        assert_eq!(options.source_policy(), SourcePolicy::Keep);
        assert_eq!(options.bandwidth_bytes_per_sec, 0);
        assert_eq!(options.timeout_seconds, 0);
    }

    #[test]
    fn bad_bandwidth_is_a_usage_error() {
        let err = parse(&["set-bandwidth", "m1", "fast"]).expect_err("not a size");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn node_and_controller_flags_are_exclusive() {
        let err = parse(&[
            "list",
            "--node",
            "unix:///n.sock",
            "--controller",
            "http://c:1",
        ])
        .expect_err("both targets");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[tokio::test]
    async fn migrate_at_a_node_needs_a_pool_before_connecting() {
        let cmd = parse(&[
            "migrate",
            "--domain",
            "vm1",
            "--disk",
            "vda",
            "--node",
            "unix:///nonexistent.sock",
        ])
        .expect("parses");
        let err = execute(cmd).await.expect_err("no pool");
        assert!(matches!(err, CliError::Usage(_)), "{err}");
        assert!(
            err.to_string()
                .starts_with("INVALID_ARGUMENT: --to-pool is required"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unreachable_node_is_reported_as_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let endpoint = format!("unix://{}/node.sock", dir.path().display());
        let cmd = parse(&["pools", "--node", &endpoint]).expect("parses");
        let err = execute(cmd).await.expect_err("nothing listens");
        assert_eq!(
            err.to_string(),
            format!("UNAVAILABLE: cannot connect to node at {endpoint}: No such file or directory — is `volmig node` running?")
        );
    }
}
