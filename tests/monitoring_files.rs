//! The shipped monitoring files: the alert rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), and every volmig metric the
//! rules and the Grafana dashboard name is one that volmig exposes.

mod harness;

use std::collections::BTreeSet;

use prometheus_client::encoding::prometheus_text;
use volmig::controller::ControllerObserver as _;
use volmig::hypervisor::CallObserver as _;
use volmig::metrics::{ControllerMetrics, NodeMetrics};
use volmig::migration::model::{Event, Phase, Progress};
use volmig::migration::Observer as _;

const ALERTS: &str = "deploy/prometheus/volmig-alerts.yml";
const ALERT_TESTS: &str = "deploy/prometheus/volmig-alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/volmig-dashboard.json";

fn promtool(args: &[&str]) {
    harness::ensure_host();
    let root = harness::repo_root().to_string_lossy().into_owned();
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool (deploy/setup-tests.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    promtool(&["check", "rules", ALERTS]);
    promtool(&["test", "rules", ALERT_TESTS]);
}

fn event(id: &str, phase: Phase) -> Event {
    Event {
        migration_id: id.to_string(),
        phase,
        progress: Progress {
            bytes_done: 1,
            bytes_total: 1,
            rate: 1,
            eta_seconds: 0,
        },
        timestamp_ms: 0,
        started_ms: 0,
        message: String::new(),
        result: None,
        failure: None,
        node_id: "n".into(),
        domain: "d".into(),
        disk: "vda".into(),
        disks: Vec::new(),
        skipped: Vec::new(),
        pivot_window_ms: 0,
        convergence: None,
        trace_id: String::new(),
    }
}

/// The metric names (histograms by their base name) both components expose
/// once every labelled family has a series.
fn exposed() -> BTreeSet<String> {
    let node = NodeMetrics::new();
    for phase in [
        Phase::Copying,
        Phase::Synchronized,
        Phase::Pivoting,
        Phase::Completed,
    ] {
        node.event(&event("done", phase));
    }
    node.event(&event("copying", Phase::Copying));
    node.call("virDomainBlockCopy", Default::default(), true);
    let mut text = String::new();
    prometheus_text::encode(&mut text, &node.registry()).expect("encode");
    let controller = ControllerMetrics::new();
    controller.read_nodes_from(|| vec![("n".to_string(), true, Some(Default::default()))]);
    controller.placement_rejected(volmig::controller::placement::Rule::Inactive);
    prometheus_text::encode(&mut text, &controller.registry()).expect("encode");
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

/// Every `volmig_…` name in `text`, without histogram sample suffixes.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("volmig_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_and_alerts_name_only_exposed_metrics() {
    let exposed = exposed();
    for file in [ALERTS, DASHBOARD] {
        let text = std::fs::read_to_string(harness::repo_root().join(file)).expect(file);
        let names = referenced(&text);
        assert!(!names.is_empty(), "{file}");
        let unknown: Vec<&String> = names.difference(&exposed).collect();
        assert!(
            unknown.is_empty(),
            "{file} names {unknown:?}, which volmig does not expose; exposed: {exposed:?}"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(harness::repo_root().join(DASHBOARD)).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "volmig");
}

#[test]
fn readme_metrics_tables_list_exactly_the_exposed_metrics() {
    let readme = std::fs::read_to_string(harness::repo_root().join("docs/observability.md"))
        .expect("docs/observability.md");
    let section = readme
        .split("\n### Metrics\n")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("docs/observability.md has a Metrics section");
    // The first cell of each table row.
    let listed: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `volmig_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("volmig_{name}"))
        .collect();
    let exposed: BTreeSet<String> = exposed()
        .into_iter()
        .map(|name| {
            // A counter's family is named without the `_total` its sample has.
            if listed.contains(&format!("{name}_total")) {
                format!("{name}_total")
            } else {
                name
            }
        })
        .collect();
    assert_eq!(
        listed, exposed,
        "docs/observability.md's metrics tables differ from what node and controller expose"
    );
}
