//! End-to-end: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the CLI, the
//! controller and the node export spans to a real OTLP/gRPC receiver (the
//! OpenTelemetry collector's TraceService, served in this test), and one
//! migration of a writing guest is one trace across the three processes,
//! with the node's migration span and libvirt call spans in it.

mod harness;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::controller::{cli_migrate_vda_tagged, wait_nodes_up, ControllerProcess};
use harness::node::NodeProcess;
use harness::{writing_guest_with_data, DirPool, Pool};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// A received span: service, trace id, span name.
type Received = (String, Vec<u8>, String);

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

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
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span.trace_id, span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
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
    // Inherited by every process this test starts (this binary has one test).
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");

    let src = DirPool::new("tr-src");
    let dest = DirPool::new("tr-dest");
    let guest = writing_guest_with_data("tr-guest", &src, "qcow2");
    let tag = harness::unique_name("tag");
    let ctl = ControllerProcess::start(
        "tr-ctl",
        &format!(
            "heartbeat_interval_seconds = 1\ndown_after_seconds = 3\n\
             [[pools]]\npool = \"{}\"\ntags = [\"{tag}\"]\n",
            dest.name()
        ),
    );
    let node = NodeProcess::start("tr-node", &["--controller", &ctl.endpoint()]);
    wait_nodes_up(&ctl, &[node.node_id()]).await;
    let events = cli_migrate_vda_tagged(&ctl, guest.name(), &tag);
    assert_eq!(events.last().expect("events")["phase"], "PHASE_COMPLETED");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = receiver.0.lock().expect("lock").clone();
        let cli_traces: BTreeSet<&Vec<u8>> = spans
            .iter()
            .filter(|(s, _, n)| s.contains("volmig-cli") && n == "volmig.cli")
            .map(|(_, t, _)| t)
            .collect();
        let in_trace = |trace: &Vec<u8>| {
            let mut by_service: HashMap<&str, BTreeSet<&str>> = HashMap::new();
            for (s, t, n) in &spans {
                if t == trace {
                    let service = ["volmig-cli", "volmig-controller", "volmig-node"]
                        .into_iter()
                        .find(|x| s.contains(x))
                        .unwrap_or("other");
                    by_service.entry(service).or_default().insert(n.as_str());
                }
            }
            by_service
        };
        let found = cli_traces.iter().find(|t| {
            let by = in_trace(t);
            by.contains_key("volmig-controller")
                && by
                    .get("volmig-node")
                    .is_some_and(|n| n.contains("migration") && n.contains("libvirt"))
        });
        if let Some(trace) = found {
            eprintln!("one trace: {:#?}", in_trace(trace));
            assert_eq!(cli_traces.len(), 1, "the CLI ran once");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no trace spans CLI, controller and node (migration, libvirt); received {} spans ({:?}), CLI traces {cli_traces:?}; by trace of the CLI: {:#?}",
            spans.len(),
            spans.iter().map(|(s, _, n)| format!("{s} {n}")).collect::<BTreeSet<_>>(),
            cli_traces.iter().map(|t| in_trace(t)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
