//! End-to-end: the CLI, the controller and the node export spans to a real
//! OTLP/gRPC receiver (the OpenTelemetry collector's TraceService, served in
//! this test). The controller and the node are pointed at it by their config
//! files' `[telemetry]` keys, the CLI by `OTEL_EXPORTER_OTLP_ENDPOINT`. One
//! migration of a writing guest is one trace across the three processes: the
//! controller's resolve, plan and relay spans, the node's migration span with
//! a span per phase beneath it, libvirt calls and journal writes beneath the
//! phases, every one carrying the migration's identity. The trace id is in
//! the first event, in `volmig status`, and on every JSON log line of the
//! migration. A cancelled migration's spans carry the error status.

mod harness;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::controller::{cli_migrate_vda_tagged, wait_nodes_up, ControllerProcess};
use harness::node::{self, NodeProcess};
use harness::{writing_guest_with_data, DirPool, Pool};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use volmig::proto;

/// A received span.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    attrs: HashMap<String, String>,
    error: Option<String>,
    nanos: u64,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

fn text(v: &Option<Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(&a.value.as_ref().and_then(|v| v.value.clone())))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let status = span.status.unwrap_or_default();
                    spans.push(Received {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: span.span_id,
                        parent: span.parent_span_id,
                        name: span.name,
                        attrs: span
                            .attributes
                            .iter()
                            .map(|a| {
                                (
                                    a.key.clone(),
                                    text(&a.value.as_ref().and_then(|v| v.value.clone())),
                                )
                            })
                            .collect(),
                        error: (status.code == StatusCode::Error as i32).then_some(status.message),
                        nanos: span
                            .end_time_unix_nano
                            .saturating_sub(span.start_time_unix_nano),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    fn spans(&self) -> Vec<Received> {
        self.0.lock().expect("lock").clone()
    }

    /// Waits until `check` passes on the spans received (they arrive in
    /// batches), then returns them; panics with the last complaint.
    async fn wait_for(&self, what: &str, check: impl Fn(&[Received]) -> Result<(), String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            match check(&spans) {
                Ok(()) => return,
                Err(why) if Instant::now() > deadline => panic!(
                    "{what}: {why}; received {} spans: {:#?}",
                    spans.len(),
                    spans
                        .iter()
                        .map(|s| format!("{} {} {}", s.service, s.trace_id, s.name))
                        .collect::<BTreeSet<_>>()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

/// The node's spans of migration `id`: its migration span, and every span
/// beneath it.
fn migration_tree<'a>(spans: &'a [Received], id: &str) -> Result<Vec<&'a Received>, String> {
    let root = spans
        .iter()
        .find(|s| s.name == "migration" && s.attrs.get("migration.id").is_some_and(|m| m == id))
        .ok_or("no migration span")?;
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = &tree[i].span_id;
        tree.extend(spans.iter().filter(|s| &s.parent == parent));
        i += 1;
    }
    Ok(tree)
}

fn run_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_volmig"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("volmig {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "volmig {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn one_migration_is_one_trace_across_cli_controller_and_node() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://{addr}");
    // Batches every 200 ms instead of 5 s (inherited by every process).
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");

    let src = DirPool::new("tr-src");
    let dest = DirPool::new("tr-dest");
    let guest = writing_guest_with_data("tr-guest", &src, "qcow2");
    let tag = harness::unique_name("tag");
    // The services find the collector in their config files only.
    let ctl = ControllerProcess::start(
        "tr-ctl",
        &format!(
            "heartbeat_interval_seconds = 1\ndown_after_seconds = 3\n\
             [[pools]]\npool = \"{}\"\ntags = [\"{tag}\"]\n\
             [telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"volmig-controller-from-config\"\n",
            dest.name()
        ),
    );
    let node_dir = harness::make_dir(&harness::unique_name("tr-node-cfg"));
    let node_toml = node_dir.join("node.toml");
    std::fs::write(
        &node_toml,
        format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\n"),
    )
    .expect("node.toml");
    let node = NodeProcess::start(
        "tr-node",
        &[
            "--controller",
            &ctl.endpoint(),
            "--config",
            &node_toml.to_string_lossy(),
            "--log-format",
            "json",
        ],
    );
    wait_nodes_up(&ctl, &[node.node_id()]).await;
    // The CLI, started after the services, by the standard variable.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    let events = cli_migrate_vda_tagged(&ctl, guest.name(), &tag);
    assert_eq!(events.last().expect("events")["phase"], "PHASE_COMPLETED");
    let id = events[0]["migration_id"].as_str().expect("id").to_string();
    let trace = events[0]["trace_id"]
        .as_str()
        .expect("trace id")
        .to_string();
    assert_eq!(trace.len(), 32, "first event: {}", events[0]);

    // The trace id is kept in the node's journal record, in the controller's
    // history (which answers for a finished migration) and shown by status.
    let journaled = std::fs::read_to_string(
        node.state_dir()
            .join("migrations")
            .join(format!("{id}.json")),
    )
    .expect("the journal record");
    let journaled: serde_json::Value = serde_json::from_str(&journaled).expect("json");
    assert_eq!(
        journaled["latest"]["trace_id"],
        trace.as_str(),
        "{journaled}"
    );
    let status = run_cli(&["status", "--controller", &ctl.endpoint(), &id]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("trace id") && l.ends_with(&trace)),
        "{status}"
    );
    let status: serde_json::Value = serde_json::from_str(&run_cli(&[
        "status",
        "--controller",
        &ctl.endpoint(),
        &id,
        "--json",
    ]))
    .expect("status --json");
    assert_eq!(status["latest"]["trace_id"], trace.as_str(), "{status}");

    let node_id = node.node_id().to_string();
    let domain = guest.name().to_string();
    receiver
        .wait_for("one trace of the migration", |spans| {
            // The migrating CLI's span is the root of the trace the first
            // event names (each `status` above is a trace of its own).
            let cli: Vec<&Received> = spans
                .iter()
                .filter(|s| s.name == "volmig.cli" && s.trace_id == trace)
                .collect();
            if cli.len() != 1 || !cli[0].parent.is_empty() || cli[0].service != "volmig-cli" {
                return Err(format!(
                    "CLI spans {cli:?}, expected one root in trace {trace}"
                ));
            }
            let in_trace: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace).collect();
            for name in ["controller.resolve", "controller.plan", "controller.relay"] {
                let span = in_trace
                    .iter()
                    .find(|s| s.name == name)
                    .ok_or(format!("no {name} span in the trace"))?;
                if span.service != "volmig-controller-from-config" {
                    return Err(format!("{name} from service {}", span.service));
                }
                if span.attrs.get("domain") != Some(&domain)
                    || span.attrs.get("node.id") != Some(&node_id)
                {
                    return Err(format!("{name} lacks domain/node.id: {:?}", span.attrs));
                }
            }
            let relay = in_trace.iter().find(|s| s.name == "controller.relay");
            if relay.and_then(|s| s.attrs.get("migration.id")) != Some(&id) {
                return Err(format!("relay span without migration.id: {relay:?}"));
            }

            let tree = migration_tree(spans, &id)?;
            let root = tree[0];
            if root.trace_id != trace || !root.service.contains("volmig-node") {
                return Err(format!("node migration span {root:?} not in trace {trace}"));
            }
            // Every span of the migration carries its identity.
            for s in &tree {
                let want = [
                    ("migration.id", id.as_str()),
                    ("domain", domain.as_str()),
                    ("disk", "vda"),
                    ("node.id", node_id.as_str()),
                ];
                for (key, value) in want {
                    if s.attrs.get(key).map(String::as_str) != Some(value) {
                        return Err(format!("span {} has {key}={:?}", s.name, s.attrs.get(key)));
                    }
                }
            }
            // Phases under the migration span, libvirt calls under the phases.
            let phases: HashMap<&Vec<u8>, &str> = tree
                .iter()
                .filter(|s| s.parent == root.span_id && s.name.starts_with("phase "))
                .map(|s| (&s.span_id, s.name.as_str()))
                .collect();
            for want in [
                "phase validating",
                "phase preparing destination",
                "phase copying",
                "phase pivoting",
                "phase verifying",
            ] {
                if !phases.values().any(|p| *p == want) {
                    return Err(format!("no {want} span under the migration: {phases:?}"));
                }
            }
            let libvirt_under = |phase: &str| {
                tree.iter()
                    .filter(|s| s.name.starts_with("libvirt "))
                    .filter(|s| phases.get(&s.parent) == Some(&phase))
                    .count()
            };
            for phase in ["phase validating", "phase copying", "phase pivoting"] {
                if libvirt_under(phase) == 0 {
                    return Err(format!("no libvirt call span under {phase}"));
                }
            }
            let journal: Vec<&&Received> =
                tree.iter().filter(|s| s.name == "journal.write").collect();
            if journal.len() < 5 || journal.iter().any(|s| s.nanos == 0) {
                return Err(format!("journal write spans: {journal:?}"));
            }
            if let Some(s) = tree.iter().find(|s| s.error.is_some()) {
                return Err(format!(
                    "span {} of a completed migration has an error",
                    s.name
                ));
            }
            Ok(())
        })
        .await;

    let spans = receiver.spans();
    let in_trace: BTreeSet<String> = spans
        .iter()
        .filter(|s| s.trace_id == trace)
        .map(|s| {
            let parent = spans
                .iter()
                .find(|p| p.span_id == s.parent)
                .map_or("-", |p| p.name.as_str());
            format!("{}: {} (under {parent})", s.service, s.name)
        })
        .collect();
    eprintln!("the migration's trace: {in_trace:#?}");

    // Every JSON log line of the migration names the migration and its trace.
    let log = node.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of_migration: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["migration.id"] == id.as_str()))
        })
        .collect();
    assert!(of_migration.len() >= 5, "{log}");
    for line in of_migration {
        assert_eq!(line["trace_id"], trace.as_str(), "{line}");
    }

    // A cancelled migration (straight to the node, of the same guest): its
    // migration span and the phase it stopped in carry the error.
    let other = DirPool::new("tr-other");
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::limited(guest.name(), "vda", other.name(), 2 << 20))
        .await
        .expect("start")
        .into_inner();
    let seen = node::read_until(&mut stream, node::copying_with_progress).await;
    let cancelled = seen[0].migration_id.clone();
    client
        .cancel_migration(proto::CancelMigrationRequest {
            migration_id: cancelled.clone(),
        })
        .await
        .expect("cancel");
    let rest = node::collect(stream).await.expect("stream");
    node::assert_terminal(&rest, proto::Phase::Cancelled);
    receiver
        .wait_for("error status of the cancelled migration", |spans| {
            let tree = migration_tree(spans, &cancelled)?;
            let error = |name: &str| {
                tree.iter()
                    .find(|s| s.name == name)
                    .and_then(|s| s.error.clone())
            };
            match (error("migration"), error("phase copying")) {
                (Some(m), Some(p)) if m.contains("cancelled") && p == m => Ok(()),
                other => Err(format!("errors of migration, phase copying: {other:?}")),
            }
        })
        .await;
}
