use super::*;
use crate::controller::ControllerObserver as _;
use crate::hypervisor::CallObserver as _;
use crate::migration::model::{Failure, Progress};
use crate::migration::Observer as _;

fn event(id: &str, phase: Phase, bytes_done: u64, rate: u64) -> Event {
    Event {
        migration_id: id.to_string(),
        phase,
        progress: Progress {
            bytes_done,
            bytes_total: 1 << 20,
            rate,
            eta_seconds: 0,
        },
        timestamp_ms: 3_000,
        started_ms: 1_000,
        message: String::new(),
        result: None,
        failure: None,
        node_id: "n1".into(),
        domain: "web\"01".into(),
        disk: "vda".into(),
        disks: Vec::new(),
        skipped: Vec::new(),
        pivot_window_ms: 0,
        convergence: None,
        trace_id: String::new(),
    }
}

fn scrape(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_text::encode(&mut out, registry).expect("encode");
    out
}

use prometheus_client::encoding::prometheus_text;

/// The sample line of `name` (with labels as written), its value.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every family has HELP and TYPE, and every name has the prefix.
fn well_formed(text: &str) {
    let mut helped = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().expect("name");
            assert!(name.starts_with("volmig_"), "{line}");
            assert!(rest.len() > name.len() + 1, "empty help: {line}");
            helped.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().expect("name");
            assert!(helped.contains(name), "TYPE before HELP: {line}");
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().expect("name");
            assert!(
                helped.iter().any(|h| name.starts_with(h.as_str())),
                "sample without HELP: {line}"
            );
        }
    }
}

#[test]
fn a_completed_migration_moves_every_node_metric() {
    let m = NodeMetrics::new();
    let id = "mig-1";
    m.event(&event(id, Phase::Validating, 0, 0));
    m.event(&event(id, Phase::PreparingDestination, 0, 0));
    m.event(&event(id, Phase::Copying, 0, 0));
    m.event(&event(id, Phase::Copying, 600, 300));
    let during = scrape(&m.registry());
    well_formed(&during);
    assert_eq!(
        value(&during, r#"volmig_migrations_in_flight{phase="copying"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            &during,
            r#"volmig_copy_rate_bytes_per_second{migration_id="mig-1",domain="web\"01",disk="vda"}"#
        ),
        Some(300.0),
        "{during}"
    );
    m.event(&event(id, Phase::Synchronized, 1000, 0));
    m.event(&event(id, Phase::Pivoting, 1000, 0));
    m.event(&event(id, Phase::Verifying, 1000, 0));
    m.event(&event(id, Phase::Completed, 1000, 0));
    m.call("virDomainBlockCopy", Duration::from_millis(3), false);
    m.call("virDomainLookupByName", Duration::from_millis(1), true);
    m.journal_write(Duration::from_millis(2), false);
    let after = scrape(&m.registry());
    well_formed(&after);
    assert_eq!(value(&after, "volmig_migrations_started_total"), Some(1.0));
    assert_eq!(
        value(
            &after,
            r#"volmig_migrations_ended_total{result="completed",code="OK"}"#
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(value(&after, "volmig_copied_bytes_total"), Some(1000.0));
    assert_eq!(
        value(&after, r#"volmig_migrations_in_flight{phase="copying"}"#),
        Some(0.0)
    );
    assert!(
        !after.contains("volmig_copy_rate_bytes_per_second{"),
        "{after}"
    );
    assert_eq!(
        value(&after, "volmig_synchronized_to_pivoted_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            r#"volmig_migration_phase_duration_seconds_count{phase="copying"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            r#"volmig_migration_duration_seconds_sum{result="completed"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &after,
            r#"volmig_libvirt_call_errors_total{call="virDomainLookupByName"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "volmig_journal_write_duration_seconds_count"),
        Some(1.0)
    );
    assert!(
        after.contains("volmig_process_cpu_seconds_total "),
        "{after}"
    );
    assert!(after.contains("volmig_process_open_fds "), "{after}");
}

#[test]
fn a_failure_is_counted_by_its_code_and_a_resumed_copy_is_not_double_counted() {
    let m = NodeMetrics::new();
    // Resumed mid-copy after a restart: first seen in COPYING.
    m.event(&event("mig-2", Phase::Copying, 500, 10));
    m.event(&event("mig-2", Phase::Copying, 700, 10));
    let mut failed = event("mig-2", Phase::Failed, 700, 0);
    failed.failure = Some(Failure {
        code: ErrorCode::ResourceExhausted,
        message: "full".into(),
        phase: Phase::Copying,
        disk_state: "on source".into(),
    });
    m.event(&failed);
    let text = scrape(&m.registry());
    assert_eq!(
        value(
            &text,
            r#"volmig_migrations_ended_total{result="failed",code="RESOURCE_EXHAUSTED"}"#
        ),
        Some(1.0)
    );
    assert_eq!(value(&text, "volmig_copied_bytes_total"), Some(700.0));
}

#[test]
fn controller_metrics_show_nodes_rejections_and_lag() {
    let m = ControllerMetrics::new();
    m.read_nodes_from(|| {
        vec![
            ("kvm1".to_string(), true, Some(Duration::from_secs(2))),
            ("kvm2".to_string(), false, None),
        ]
    });
    m.placement_rejected(Rule::UsedThreshold);
    m.placement_rejected(Rule::UsedThreshold);
    m.event_relayed(Duration::from_millis(4));
    let text = scrape(&m.registry());
    well_formed(&text);
    assert_eq!(value(&text, r#"volmig_nodes{state="up"}"#), Some(1.0));
    assert_eq!(value(&text, r#"volmig_nodes{state="down"}"#), Some(1.0));
    assert_eq!(value(&text, r#"volmig_node_up{node="kvm2"}"#), Some(0.0));
    assert_eq!(
        value(&text, r#"volmig_node_heartbeat_age_seconds{node="kvm1"}"#),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            r#"volmig_placement_rejections_total{rule="used_threshold"}"#
        ),
        Some(2.0)
    );
    assert_eq!(value(&text, "volmig_relay_lag_seconds_count"), Some(1.0));
}

/// The scrape budget of issue 11 (≤ 5 ms with 1,000 finished migrations,
/// measured by `bench/observability-bench.sh`) holds because a scrape's work
/// does not grow with the migrations a node has finished: no label or series
/// is kept per migration, so the exposition after 1,000 is as long as after 10.
#[test]
fn a_scrape_after_a_thousand_migrations_is_as_long_as_after_ten() {
    let after = |migrations: usize| {
        let m = NodeMetrics::new();
        for i in 0..migrations {
            let id = format!("mig-{i}");
            for phase in [Phase::Validating, Phase::Copying, Phase::Completed] {
                m.event(&event(&id, phase, 1000, 5));
            }
            m.call(
                "virDomainGetBlockJobInfo",
                Duration::from_micros(300),
                false,
            );
        }
        scrape(&m.registry()).lines().count()
    };
    assert_eq!(after(1000), after(10));
}

#[test]
fn refused_unauthenticated_calls_are_counted_by_reason_on_both_components() {
    let series = r#"volmig_auth_refusals_total{reason="unknown_token"}"#;
    let node = NodeMetrics::new();
    let controller = ControllerMetrics::new();
    // The family is process-wide: other tests may count too, so compare.
    let before = value(&scrape(&node.registry()), series).unwrap_or(0.0);
    auth_refused("unknown_token");
    auth_refused("unknown_token");
    let node_text = scrape(&node.registry());
    well_formed(&node_text);
    assert!(
        value(&node_text, series).expect("counted") >= before + 2.0,
        "{node_text}"
    );
    let controller_text = scrape(&controller.registry());
    well_formed(&controller_text);
    assert!(
        value(&controller_text, series).is_some(),
        "{controller_text}"
    );
}

#[test]
fn connections_closed_by_the_listeners_bounds_are_counted_on_both_components() {
    let series = r#"volmig_connections_closed_total{reason="handshakes_per_peer"}"#;
    let node = NodeMetrics::new();
    let controller = ControllerMetrics::new();
    // The family is process-wide: other tests may count too, so compare.
    let before = value(&scrape(&node.registry()), series).unwrap_or(0.0);
    connection_closed("handshakes_per_peer");
    let node_text = scrape(&node.registry());
    well_formed(&node_text);
    assert!(
        value(&node_text, series).expect("counted") >= before + 1.0,
        "{node_text}"
    );
    let controller_text = scrape(&controller.registry());
    well_formed(&controller_text);
    assert!(
        value(&controller_text, series).is_some(),
        "{controller_text}"
    );
}
