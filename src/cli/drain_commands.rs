//! `drain …`: empty a storage pool across every node through the controller
//! (`drain POOL`, `drain status|watch|cancel ID`, `drain list`).

use std::io::{self, Write};

use clap::{Args, Subcommand, ValueEnum};
use tokio_stream::StreamExt;

use super::drain_json;
use super::quantities::{human_bytes, human_rate, parse_bandwidth};
use super::target::{Accepts, TargetArgs};
use super::{print, CliError};
use crate::api::client::AuthChannel;
use crate::proto::fleet_client::FleetClient;
use crate::proto::{self, Drain, DrainPlan};

/// `drain POOL [options]`, or one of the subcommands for drains already started.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DrainArgs {
    #[command(subcommand)]
    command: Option<DrainCommand>,
    #[command(flatten)]
    start: StartArgs,
}

/// The subcommands of `drain`.
#[derive(Debug, Clone, Subcommand)]
pub enum DrainCommand {
    /// Show a drain: its items, where each volume went, what stays and why
    Status(DrainIdArgs),
    /// Follow a drain until it ends (Ctrl-C only stops watching)
    Watch(DrainIdArgs),
    /// Stop starting items and cancel the running ones
    Cancel(DrainIdArgs),
    /// List every drain, oldest first
    List(ListDrainsArgs),
}

/// Which guests start first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderArg {
    /// Most bytes first
    Largest,
    /// Fewest bytes first
    Smallest,
}

/// What becomes of each source volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourcePolicyArg {
    /// Keep it (the report says where it is)
    Keep,
    /// Delete it once nothing else uses it
    Delete,
}

/// Arguments of `drain POOL`.
#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// The pool to empty: its name, or its storage id when the name is several pools'
    #[arg(required = true)]
    pool: Option<String>,
    /// Move every guest to this pool (name or storage id) [default: placement chooses]
    #[arg(long, value_name = "POOL", conflicts_with = "to_tags")]
    to_pool: Option<String>,
    /// Only choose among pools carrying all these tags
    #[arg(long, value_name = "TAG", num_args = 1..)]
    to_tags: Vec<String>,
    /// Guests migrating at once [default: 2]
    #[arg(long, value_name = "N")]
    max_parallel: Option<u32>,
    /// Guests migrating at once on one node [default: 1]
    #[arg(long, value_name = "N")]
    per_node: Option<u32>,
    /// Guests writing to one destination pool at once [default: no limit but the pool's]
    #[arg(long, value_name = "N")]
    per_destination: Option<u32>,
    /// Bandwidth shared by all running copies, e.g. 400MiB [default: none]
    #[arg(long, value_name = "SIZE", value_parser = parse_bandwidth)]
    bandwidth_budget: Option<u64>,
    /// Move stopped guests too, offline (one disk on the pool each; several stay, with the reason)
    #[arg(long)]
    include_stopped: bool,
    /// What becomes of each source volume
    #[arg(long, value_enum, default_value = "keep")]
    source_policy: SourcePolicyArg,
    /// Which guests start first
    #[arg(long, value_enum, default_value = "largest")]
    order: OrderArg,
    /// Attempts per guest before it is reported failed [default: 3]
    #[arg(long, value_name = "N")]
    max_tries: Option<u32>,
    /// Print the plan and exit: nothing is recorded or started
    #[arg(long)]
    dry_run: bool,
    /// Print the drain's id and return at once; it goes on in the controller
    #[arg(long, conflicts_with = "dry_run")]
    detach: bool,
    #[command(flatten)]
    target: TargetArgs,
    /// Print JSON (the plan; or one object per change of the drain)
    #[arg(long)]
    json: bool,
}

/// A drain id and the output flags.
#[derive(Debug, Clone, Args)]
pub struct DrainIdArgs {
    /// The drain's id (`d-…`)
    id: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `drain list`.
#[derive(Debug, Clone, Args)]
pub struct ListDrainsArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(args: DrainArgs) -> Result<i32, CliError> {
    match args.command {
        Some(DrainCommand::Status(a)) => status(a).await,
        Some(DrainCommand::Watch(a)) => watch(a).await,
        Some(DrainCommand::Cancel(a)) => cancel(a).await,
        Some(DrainCommand::List(a)) => list(a).await,
        None => start(args.start).await,
    }
}

async fn client(
    target: &TargetArgs,
    command: &'static str,
) -> Result<FleetClient<AuthChannel>, CliError> {
    let target = target.resolve(command, Accepts::Controller)?;
    Ok(FleetClient::new(target.channel().await?))
}

fn request(args: &StartArgs) -> proto::DrainRequest {
    proto::DrainRequest {
        pool: args.pool.clone().unwrap_or_default(),
        destination_pool: args.to_pool.clone().unwrap_or_default(),
        destination_tags: args.to_tags.clone(),
        max_parallel: args.max_parallel.unwrap_or(0),
        per_node: args.per_node.unwrap_or(0),
        per_destination: args.per_destination.unwrap_or(0),
        bandwidth_budget_bytes_per_sec: args.bandwidth_budget.unwrap_or(0),
        include_stopped: args.include_stopped,
        source_policy: match args.source_policy {
            SourcePolicyArg::Keep => proto::SourcePolicy::Keep,
            SourcePolicyArg::Delete => proto::SourcePolicy::Delete,
        } as i32,
        order: match args.order {
            OrderArg::Largest => proto::DrainOrder::LargestFirst,
            OrderArg::Smallest => proto::DrainOrder::SmallestFirst,
        } as i32,
        max_tries: args.max_tries.unwrap_or(0),
    }
}

async fn start(args: StartArgs) -> Result<i32, CliError> {
    let mut fleet = client(&args.target, "drain").await?;
    let req = request(&args);
    if args.dry_run {
        let plan = fleet.plan_drain(req).await?.into_inner();
        return print(args.json, || drain_json::plan(&plan), || plan_text(&plan));
    }
    let mut stream = fleet.start_drain(req).await?.into_inner();
    if args.detach {
        let Some(first) = stream.next().await.transpose()? else {
            return Err(CliError::Usage(
                "the controller ended the drain's stream at once",
            ));
        };
        let drain = first.drain.unwrap_or_default();
        return print(
            args.json,
            || drain_json::drain(&drain),
            || format!("{}\n", drain.drain_id),
        );
    }
    follow(&mut stream, args.json).await
}

/// Prints the drain on every change until it ends; exit 0 only when every item moved.
async fn follow(
    stream: &mut tonic::Streaming<proto::DrainEvent>,
    json: bool,
) -> Result<i32, CliError> {
    let mut last: Option<Drain> = None;
    let mut shown_id = false;
    while let Some(event) = stream.next().await.transpose()? {
        let Some(drain) = event.drain else { continue };
        let mut out = io::stdout().lock();
        if json {
            writeln!(out, "{}", drain_json::drain(&drain))?;
        } else {
            if !shown_id {
                writeln!(out, "drain {} of pool {}", drain.drain_id, pool_of(&drain))?;
                shown_id = true;
            }
            writeln!(out, "{}", total_line(&drain))?;
        }
        out.flush()?;
        last = Some(drain);
    }
    let Some(drain) = last else {
        return Err(CliError::Usage("the controller sent no state of the drain"));
    };
    if !json {
        write!(io::stdout().lock(), "{}", report_text(&drain))?;
    }
    Ok(exit_code(&drain))
}

fn exit_code(drain: &Drain) -> i32 {
    i32::from(drain.state() != proto::DrainState::Succeeded)
}

async fn status(args: DrainIdArgs) -> Result<i32, CliError> {
    let drain = client(&args.target, "drain status")
        .await?
        .get_drain(proto::GetDrainRequest { drain_id: args.id })
        .await?
        .into_inner();
    print(
        args.json,
        || drain_json::drain(&drain),
        || format!("{}\n{}", total_line(&drain), report_text(&drain)),
    )
}

async fn watch(args: DrainIdArgs) -> Result<i32, CliError> {
    let mut stream = client(&args.target, "drain watch")
        .await?
        .watch_drain(proto::WatchDrainRequest { drain_id: args.id })
        .await?
        .into_inner();
    follow(&mut stream, args.json).await
}

async fn cancel(args: DrainIdArgs) -> Result<i32, CliError> {
    let drain = client(&args.target, "drain cancel")
        .await?
        .cancel_drain(proto::CancelDrainRequest { drain_id: args.id })
        .await?
        .into_inner();
    print(
        args.json,
        || drain_json::drain(&drain),
        || {
            format!(
            "{}: cancel asked; nothing more starts, running guests roll back (follow with `volmig drain watch {}`)\n",
            drain.drain_id, drain.drain_id
        )
        },
    )
}

async fn list(args: ListDrainsArgs) -> Result<i32, CliError> {
    let drains = client(&args.target, "drain list")
        .await?
        .list_drains(proto::ListDrainsRequest {})
        .await?
        .into_inner()
        .drains;
    print(
        args.json,
        || serde_json::Value::Array(drains.iter().map(drain_json::drain).collect()),
        || {
            drains
                .iter()
                .map(|d| format!("{}\n", total_line(d)))
                .collect()
        },
    )
}

fn pool_of(drain: &Drain) -> String {
    drain
        .request
        .as_ref()
        .map(|r| r.pool.clone())
        .unwrap_or_default()
}

fn state_word(drain: &Drain) -> String {
    drain
        .state()
        .as_str_name()
        .trim_start_matches("DRAIN_STATE_")
        .to_lowercase()
}

/// One line: the drain's id, state, counts and bytes.
fn total_line(drain: &Drain) -> String {
    let c = drain.counts.unwrap_or_default();
    let total = c.pending + c.running + c.done + c.failed + c.skipped;
    let mut line = format!(
        "{} {} pool {}: {}/{total} done, {} running, {} pending, {} failed, {} skipped; {} moved, {} to go",
        drain.drain_id,
        state_word(drain),
        pool_of(drain),
        c.done,
        c.running,
        c.pending,
        c.failed,
        c.skipped,
        human_bytes(drain.bytes_done),
        human_bytes(drain.bytes_remaining),
    );
    for item in drain.plan.iter().flat_map(|p| &p.items) {
        if item.state() == proto::DrainItemState::Running {
            line.push_str(&format!(
                "\n  {} on {}: {} of {}{}",
                item.domain,
                item.node_id,
                human_bytes(item.bytes_done),
                human_bytes(item.bytes_total),
                if item.bandwidth_bytes_per_sec > 0 {
                    format!(" at most {}", human_rate(item.bandwidth_bytes_per_sec))
                } else {
                    String::new()
                }
            ));
        }
    }
    line
}

fn left_text(plan: &DrainPlan) -> String {
    let mut out = String::new();
    if !plan.left.is_empty() {
        out.push_str("stays on the pool:\n");
    }
    for l in &plan.left {
        let what = if l.domain.is_empty() {
            l.volumes.join(", ")
        } else {
            format!("{} ({})", l.domain, l.volumes.join(", "))
        };
        out.push_str(&format!("  {what} on {}: {}\n", l.node_id, l.reason));
    }
    out
}

/// The dry run: each guest → destination, the destinations afterwards, what stays.
fn plan_text(plan: &DrainPlan) -> String {
    let mut out = format!(
        "drain of storage {}: {} guest(s) to move\n",
        plan.storage_id,
        plan.items.len()
    );
    for item in &plan.items {
        out.push_str(&format!(
            "  {}. {} on {}\n",
            item.index + 1,
            item.domain,
            item.node_id
        ));
        for d in &item.disks {
            out.push_str(&format!(
                "     {} {} ({} allocated of {}) → {} ({} free after)\n",
                d.disk,
                d.volume,
                human_bytes(d.allocation_bytes),
                human_bytes(d.capacity_bytes),
                d.destination_pool,
                human_bytes(d.destination_free_after_bytes),
            ));
        }
    }
    if !plan.destinations.is_empty() {
        out.push_str("destinations afterwards:\n");
    }
    for p in &plan.destinations {
        out.push_str(&format!(
            "  {} ({}): {} guest(s), {}; used {:.1} % → {:.1} %\n",
            p.pool,
            p.storage_id,
            p.items,
            human_bytes(p.bytes),
            p.used_before * 100.0,
            p.used_after * 100.0
        ));
    }
    out.push_str(&left_text(plan));
    out
}

/// Where every volume went, what failed and what stays.
fn report_text(drain: &Drain) -> String {
    let Some(plan) = &drain.plan else {
        return String::new();
    };
    let mut out = String::new();
    for item in &plan.items {
        match item.state() {
            proto::DrainItemState::Done => {
                for m in &item.moves {
                    out.push_str(&format!(
                        "  moved {}:{} {} → {} ({})\n",
                        item.domain, m.disk, m.old_source, m.new_source, m.new_pool
                    ));
                }
            }
            proto::DrainItemState::Failed => out.push_str(&format!(
                "  failed {} after {} attempt(s): {}\n",
                item.domain, item.attempts, item.last_error
            )),
            proto::DrainItemState::Skipped => out.push_str(&format!(
                "  skipped {}: {}\n",
                item.domain, item.skipped_because
            )),
            _ => {}
        }
    }
    out.push_str(&left_text(plan));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::parse;
    use crate::cli::OperatorCommand;

    fn drain_args(args: &[&str]) -> DrainArgs {
        match parse(args).expect("parses") {
            OperatorCommand::Drain(a) => a,
            other => panic!("not drain: {other:?}"),
        }
    }

    #[test]
    fn a_pool_and_its_budgets_parse_into_the_request() {
        let args = drain_args(&[
            "drain",
            "old",
            "--max-parallel",
            "2",
            "--bandwidth-budget",
            "64MiB",
            "--source-policy",
            "delete",
            "--dry-run",
        ]);
        assert!(args.command.is_none());
        let req = request(&args.start);
        assert_eq!(req.pool, "old");
        assert_eq!(req.max_parallel, 2);
        assert_eq!(req.bandwidth_budget_bytes_per_sec, 64 << 20);
        assert_eq!(req.source_policy, proto::SourcePolicy::Delete as i32);
        assert!(args.start.dry_run);
    }

    #[test]
    fn subcommands_take_an_id_and_a_bare_drain_needs_a_pool() {
        let args = drain_args(&["drain", "status", "d-1"]);
        assert!(matches!(args.command, Some(DrainCommand::Status(ref a)) if a.id == "d-1"));
        assert!(parse(&["drain"]).is_err());
        assert!(matches!(
            drain_args(&["drain", "list"]).command,
            Some(DrainCommand::List(_))
        ));
    }
}
