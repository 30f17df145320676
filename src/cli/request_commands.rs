//! `migrate` and `plan`: the flags that describe a migration, the
//! MigrateVolumeRequest they become, and sending it to start a migration (and
//! follow it) or to ask the controller where it would go.

use clap::{Args, ValueEnum};

use super::progress::{self, Detach};
use super::quantities::parse_bandwidth;
use super::target::{Accepts, Service};
use super::{json, print, report, style, CliError, OutputArgs};
use crate::api::client::Peer;
use crate::proto::{
    ChainPolicy, CopyMode, DiskDestination, MigrateVolumeRequest, MigrationOptions,
    NoConvergencePolicy, SourcePolicy, VerifyLevel, VolumeFormat,
};

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
    /// If the domain is shut off, copy its disk offline and switch its definition (refused
    /// otherwise); a guest started during the copy is left on its source
    #[arg(long)]
    pub offline_if_stopped: bool,
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
    pub(super) fn to_request(&self, request_id: String) -> MigrateVolumeRequest {
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
                offline_if_stopped: self.offline_if_stopped,
            }),
            required_tags: self.tags.clone(),
        }
    }
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

pub(super) async fn migrate(args: MigrateArgs) -> Result<i32, CliError> {
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
    // Repeated on another controller only with the same request id, which
    // attaches to the migration a first attempt may have started.
    let start = || {
        target.failover(|mut s: Service| {
            let request = request.clone();
            async move { s.migrate(request).await }
        })
    };
    let stream = start().await?;
    let detach = Detach {
        target_flags: target.flags(),
        migration_id: None,
        request: Some((request_id, args.request.domain.clone())),
    };
    let (target, start) = (&target, &start);
    let reattach = move |id: Option<String>| async move {
        match id {
            Some(id) => super::migration_commands::watch_through(target, id).await,
            None => start().await.ok(),
        }
    };
    Ok(progress::follow(stream, style(args.output.json), &detach, reattach).await?)
}

pub(super) async fn plan(args: PlanArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("plan", Accepts::Controller)?;
    let request = args
        .request
        .to_request(args.request.request_id.clone().unwrap_or_default());
    let reply = target
        .failover(|mut s: Service| {
            let request = request.clone();
            async move { s.plan(request).await }
        })
        .await?;
    print(
        args.output.json,
        || json::plan(&reply),
        || report::plan(&reply),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::parse;
    use crate::cli::{execute, OperatorCommand};

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
            "--offline-if-stopped",
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
                    offline_if_stopped: true,
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
}
