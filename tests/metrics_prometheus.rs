//! End-to-end: a real Prometheus scrapes a node and a controller while a
//! writing guest's disk is migrated through the controller; PromQL then sees
//! one completed migration and exactly the bytes the copy reported, and
//! `promtool check metrics` accepts both expositions, and every query of the
//! shipped Grafana dashboard is valid PromQL. The node logs JSON, each line
//! of the migration naming it.

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::controller::{cli_migrate_vda_tagged, wait_nodes_up, ControllerProcess};
use harness::node::NodeProcess;
use harness::prometheus::{free_port, get, promtool_check_metrics, Prometheus};
use harness::{writing_guest_with_data, DirPool, Pool};

const SCRAPED: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_sees_the_completed_migration_and_its_bytes() {
    let src = DirPool::new("pm-src");
    let dest = DirPool::new("pm-dest");
    let guest = writing_guest_with_data("pm-guest", &src, "qcow2");
    let tag = harness::unique_name("tag");
    let node_metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let ctl_metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let ctl = ControllerProcess::start(
        "pm-ctl",
        &format!(
            "heartbeat_interval_seconds = 1\ndown_after_seconds = 3\nmetrics_listen = \"{ctl_metrics}\"\n\
             [[pools]]\npool = \"{}\"\ntags = [\"{tag}\"]\n",
            dest.name()
        ),
    );
    let node = NodeProcess::start(
        "pm-node",
        &[
            "--controller",
            &ctl.endpoint(),
            "--metrics-listen",
            &node_metrics.to_string(),
            "--log-format",
            "json",
        ],
    );
    wait_nodes_up(&ctl, &[node.node_id()]).await;
    let prometheus = Prometheus::start(
        "pm-prometheus",
        &[("node", node_metrics), ("controller", ctl_metrics)],
    );
    prometheus.wait_for(r#"up{job="node"}"#, SCRAPED, |v| v == 1.0);
    prometheus.wait_for(r#"up{job="controller"}"#, SCRAPED, |v| v == 1.0);

    let events = cli_migrate_vda_tagged(&ctl, guest.name(), &tag);
    let last = events.last().expect("events");
    assert_eq!(last["phase"], "PHASE_COMPLETED", "{last:#}");
    let copied = last["progress"]["bytes_done"].as_u64().expect("bytes_done");
    assert!(
        copied >= guest.prefilled(),
        "the copy reported {copied} bytes; the disk held {}",
        guest.prefilled()
    );

    let completed = prometheus.wait_for(
        r#"sum(volmig_migrations_ended_total{job="node",result="completed"})"#,
        SCRAPED,
        |v| v >= 1.0,
    );
    assert_eq!(completed, 1.0);
    let bytes = prometheus.wait_for(r#"volmig_copied_bytes_total{job="node"}"#, SCRAPED, |v| {
        v > 0.0
    });
    assert_eq!(bytes, copied as f64, "Prometheus vs the completed event");
    let started = prometheus.wait_for(
        r#"volmig_migrations_started_total{job="node"}"#,
        SCRAPED,
        |v| v >= 1.0,
    );
    assert_eq!(started, 1.0);
    prometheus.wait_for(
        r#"sum(volmig_migrations_in_flight{job="node"})"#,
        SCRAPED,
        |v| v == 0.0,
    );
    prometheus.wait_for(
        r#"volmig_synchronized_to_pivoted_seconds_count{job="node"}"#,
        SCRAPED,
        |v| v == 1.0,
    );
    prometheus.wait_for(
        r#"sum(volmig_libvirt_call_duration_seconds_count{job="node"})"#,
        SCRAPED,
        |v| v > 0.0,
    );
    prometheus.wait_for(
        r#"volmig_journal_write_duration_seconds_count{job="node"}"#,
        SCRAPED,
        |v| v > 0.0,
    );
    prometheus.wait_for(
        r#"volmig_nodes{job="controller",state="up"}"#,
        SCRAPED,
        |v| v == 1.0,
    );
    prometheus.wait_for(
        r#"volmig_relay_lag_seconds_count{job="controller"}"#,
        SCRAPED,
        |v| v > 0.0,
    );
    // The pool the disk is on is always judged, and rejected by its own rule.
    prometheus.wait_for(
        r#"volmig_placement_rejections_total{job="controller",rule="source_pool"}"#,
        SCRAPED,
        |v| v > 0.0,
    );
    for job in ["node", "controller"] {
        prometheus.wait_for(
            &format!(r#"volmig_process_resident_memory_bytes{{job="{job}"}}"#),
            SCRAPED,
            |v| v > 0.0,
        );
    }

    // JSON logs: every line is one object, and every line the migration's
    // task logged (each phase change does) names the migration.
    let id = events[0]["migration_id"].as_str().expect("id");
    let log = node.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let phases: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["phase"].is_string())
        .collect();
    assert!(phases.len() >= 5, "{log}");
    for line in phases {
        let spans = line["spans"].as_array().expect("spans");
        assert!(spans.iter().any(|s| s["migration.id"] == id), "{line}");
    }

    // Every query of the shipped dashboard is valid PromQL to a real Prometheus.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(harness::repo_root().join("deploy/grafana/volmig-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("json");
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() > 10);
    for expr in exprs {
        let concrete = expr
            .replace("$instance", ".*")
            .replace("$__rate_interval", "1m");
        if let Err(e) = prometheus.query(&concrete) {
            panic!("dashboard query {expr}: {e}");
        }
    }

    for (what, addr) in [("node", node_metrics), ("controller", ctl_metrics)] {
        let (status, text) = get(addr, "/metrics").expect("scrape");
        assert_eq!(status, 200, "{what}: {text}");
        if let Err(e) = promtool_check_metrics(&text) {
            panic!("promtool check metrics on the {what}'s exposition: {e}\n{text}");
        }
    }
}
