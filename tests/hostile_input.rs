//! End-to-end: a generated corpus of hostile inputs (XML metacharacters,
//! `..`, NUL and control characters, terminal escapes, 1 MB strings,
//! unicode, boundary numbers) through every RPC of a real node and a real
//! controller. Every answer must be one of INVALID_ARGUMENT, NOT_FOUND,
//! RESOURCE_EXHAUSTED, OUT_OF_RANGE, FAILED_PRECONDITION (or OK for a read
//! that finds nothing) — never INTERNAL, UNKNOWN or UNAVAILABLE — neither
//! process may panic, and no log line may carry a raw control character.

#[path = "hostile_input/controller_rpcs.rs"]
mod controller_rpcs;
#[path = "hostile_input/corpus.rs"]
mod corpus;
mod harness;
#[path = "hostile_input/node_rpcs.rs"]
mod node_rpcs;
#[path = "hostile_input/tally.rs"]
mod tally;

use controller_rpcs::controller_rpcs;
use harness::controller::{wait_nodes_up, ControllerProcess};
use harness::node::NodeProcess;
use node_rpcs::node_rpcs;
use tally::Tally;
use volmig::proto;

/// Lines of `log` that carry a raw control character.
fn raw_control_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.chars().any(|c| c.is_control()))
        .map(|l| l.escape_debug().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_inputs_through_every_rpc_get_contract_codes_and_clean_logs() {
    let ctl = ControllerProcess::start(
        "hostile-ctl",
        "heartbeat_interval_seconds = 1\ndown_after_seconds = 30\n",
    );
    let endpoint = ctl.endpoint();
    let node = NodeProcess::start("hostile-node", &["--controller", &endpoint]);
    wait_nodes_up(&ctl, &[node.node_id()]).await;

    let mut tally = Tally::default();
    let mut nc = node.client().await;
    node_rpcs(&mut tally, &mut nc).await;
    let mut cc = ctl.client().await;
    controller_rpcs(&mut tally, &mut cc).await;

    for (rpc, codes) in &tally.codes {
        eprintln!("{rpc:<28} {codes:?}");
    }
    // Both still serve.
    nc.get_info(proto::GetInfoRequest {})
        .await
        .expect("node alive");
    cc.list_nodes(proto::ListNodesRequest {})
        .await
        .expect("controller alive");
    let (node_log, ctl_log) = (node.log(), ctl.log());
    assert!(
        tally.wrong.is_empty(),
        "codes outside the contract:\n{}",
        tally.wrong.join("\n")
    );
    for (who, log) in [("node", &node_log), ("controller", &ctl_log)] {
        assert!(!log.contains("panicked"), "{who} panicked:\n{log}");
        let bad = raw_control_lines(log);
        assert!(
            bad.is_empty(),
            "{who} log lines with raw control characters:\n{}",
            bad.join("\n")
        );
        assert!(
            !log.contains("forged line\n") || !log.lines().any(|l| l.starts_with("2026-01-01")),
            "{who}: forged line"
        );
    }
}
