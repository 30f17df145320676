//! Scale benchmark of the controller (a script, not a timed test): a simulated
//! fleet of fake nodes registered with one in-process controller.
//!
//! `cargo bench --bench controller_scale` prints a markdown table. Knobs (env):
//! `VOLMIG_BENCH_NODES` (1000), `VOLMIG_BENCH_PLANS` (2000),
//! `VOLMIG_BENCH_STREAMS` (100), `VOLMIG_BENCH_EVENTS` (100 per migration, 10/s),
//! `VOLMIG_BENCH_COLD` (200: domains first planned without a hint; the warm
//! calls pick among them, since a cold call asks every node and takes long),
//! `VOLMIG_BENCH_ETCD` (comma-separated etcd client URLs: the controller keeps
//! its registrations, history and reservations there instead of in a file;
//! `bench/etcd-bench.sh` starts one).
//!
//! With `VOLMIG_BENCH_BED_DOMAINS` set (by `bench/bed-bench.sh`, in the controller's
//! namespace of a simulated-hosts bed) it measures the bed's real controller and nodes
//! instead of a fake fleet (see `controller_scale/bed.rs`).
//!
//! Three tokio runtimes share the process: the fake nodes, the controller
//! (gRPC server, its calls to the nodes, history) and the bench client. The
//! controller's CPU is the CPU time of its runtime's threads only, read from
//! `/proc/self/task/<tid>/stat`, so the fake nodes and the client do not count.
#[path = "controller_scale/bed.rs"]
mod bed;
#[path = "controller_scale/fake_node.rs"]
mod fake_node;
#[path = "controller_scale/measure.rs"]
mod measure;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Request;

use fake_node::{domain_of, serve_fake_node, FakeNode, POOLS_PER_NODE};
use measure::{ms, percentile, raise_nofile, threads_cpu, XorShift};
use volmig::api::client::{self, Peer};
use volmig::api::controller_service::ControllerService;
use volmig::api::server::{self, Listen};
use volmig::config::ControllerConfig;
use volmig::config::EtcdConfig;
use volmig::controller::store::etcd::EtcdStore;
use volmig::controller::store::file::FileStore;
use volmig::proto;
use volmig::proto::controller_client::ControllerClient;
use volmig::proto::controller_server::Controller;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn plan_request(i: usize) -> proto::MigrateVolumeRequest {
    proto::MigrateVolumeRequest {
        domain: domain_of(i),
        disk: "vda".into(),
        ..Default::default()
    }
}

fn endpoint(path: &Path) -> String {
    format!("unix://{}", path.display())
}

struct Row(String, String, String);

/// The one test this binary offers to `cargo test` and cargo-nextest.
const SMOKE_TEST: &str = "controller_scale_smoke";

fn main() {
    // cargo-nextest lists a binary's tests first (libtest's `--list --format
    // terse`, once more with `--ignored`), then runs each by name.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("{SMOKE_TEST}: test");
        }
        return;
    }
    let nofile = raise_nofile();
    if let Some(target) = bed::BedTarget::from_env() {
        let plans = knob("VOLMIG_BENCH_PLANS", 500);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        print_rows(rt.block_on(bed::measure(&target, plans)));
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary
    // without it, and then a small fleet only checks that the bench still works.
    let full = args.iter().any(|a| a == "--bench");
    let scale = |full_size: usize, smoke: usize| if full { full_size } else { smoke };
    let nodes = knob("VOLMIG_BENCH_NODES", scale(1000, 20));
    let plans = knob("VOLMIG_BENCH_PLANS", scale(2000, 50));
    let streams = knob("VOLMIG_BENCH_STREAMS", scale(100, 5)).min(nodes);
    let events = knob("VOLMIG_BENCH_EVENTS", scale(100, 10)) as u64;
    let cold_n = knob("VOLMIG_BENCH_COLD", scale(200, 10)).clamp(1, nodes);
    let dir = tempfile::tempdir().expect("tempdir");

    let node_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fake-nodes")
        .enable_all()
        .build()
        .expect("node runtime");
    let ctrl_tids = Arc::new(Mutex::new(Vec::<i32>::new()));
    let tids = ctrl_tids.clone();
    let ctrl_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("controller")
        .on_thread_start(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            tids.lock().unwrap_or_else(|p| p.into_inner()).push(tid);
        })
        .enable_all()
        .build()
        .expect("controller runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .expect("client runtime");

    // The fake fleet.
    let started = Instant::now();
    let sock_dir = dir.path().join("nodes");
    std::fs::create_dir_all(&sock_dir).expect("socket dir");
    let node_endpoints: Vec<(String, String)> = node_rt.block_on(async {
        let mut out = Vec::new();
        for i in 0..nodes {
            let id = format!("node-{i:04}");
            let path = sock_dir.join(format!("{i}.sock"));
            serve_fake_node(
                FakeNode {
                    id: id.clone(),
                    domain: domain_of(i),
                    events,
                },
                path.clone(),
            )
            .await
            .unwrap_or_else(|e| panic!("fake node {i}: {e} (open-file limit {nofile})"));
            out.push((id, endpoint(&path)));
        }
        out
    });

    // The controller, served on a unix socket.
    let config = ControllerConfig {
        listen: String::new(),
        state_dir: dir.path().join("controller"),
        heartbeat_interval_seconds: 5,
        down_after_seconds: 15,
        ..Default::default()
    };
    let ctrl_sock = dir.path().join("controller.sock");
    let service = ctrl_rt.block_on(async {
        let store: std::sync::Arc<dyn volmig::controller::store::Store> =
            match std::env::var("VOLMIG_BENCH_ETCD") {
                Ok(endpoints) => std::sync::Arc::new(
                    EtcdStore::connect(&EtcdConfig {
                        endpoints: endpoints.split(',').map(str::to_string).collect(),
                        prefix: format!("/volmig-bench-{}/", std::process::id()),
                        ..Default::default()
                    })
                    .await
                    .expect("etcd"),
                ),
                Err(_) => std::sync::Arc::new(FileStore::open(&config.state_dir).expect("store")),
            };
        let service = ControllerService::start(
            config,
            store,
            volmig::api::client::Credentials::default(),
            std::sync::Arc::new(()),
        )
        .await
        .expect("controller");
        let served = service.clone();
        let listen = Listen::Unix(ctrl_sock.clone());
        tokio::spawn(async move {
            let _ = server::serve_controller(
                served,
                listen,
                server::Exposure::local_only(),
                std::future::pending(),
            )
            .await;
        });
        service
    });
    let ctrl_endpoint = endpoint(&ctrl_sock);

    // Nodes register and keep sending heartbeats, as `volmig node` does.
    node_rt.block_on(async {
        let channel = loop {
            match client::connect_to(Peer::Controller, &ctrl_endpoint).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        for (id, ep) in &node_endpoints {
            let mut c = ControllerClient::new(channel.clone());
            let (id, ep) = (id.clone(), ep.clone());
            tokio::spawn(async move {
                loop {
                    let _ = c
                        .register_node(proto::RegisterNodeRequest {
                            node_id: id.clone(),
                            endpoint: ep.clone(),
                            info: Some(proto::NodeInfo {
                                node_id: id.clone(),
                                hostname: id.clone(),
                                ..Default::default()
                            }),
                        })
                        .await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
        }
    });

    let mut rows = Vec::new();
    client_rt.block_on(async {
        let channel = client::connect_to(Peer::Controller, &ctrl_endpoint)
            .await
            .expect("controller");
        let mut ctl = ControllerClient::new(channel);
        // Wait for every node to be up with its pools in the inventory.
        let want = nodes * POOLS_PER_NODE;
        loop {
            let pools = ctl
                .list_pools(proto::ListClusterPoolsRequest {})
                .await
                .map(|r| r.into_inner().pools.len())
                .unwrap_or(0);
            if pools == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rows.push(Row(
            "Fleet".into(),
            format!("{nodes} fake nodes × {POOLS_PER_NODE} pools on unix sockets"),
            format!(
                "up with {} pools in {:.1} s (RLIMIT_NOFILE {nofile})",
                want,
                started.elapsed().as_secs_f64()
            ),
        ));

        // Cold: domains on `cold_n` nodes spread over the fleet, each once; the
        // controller has no hint yet.
        let warmed: Vec<usize> = (0..cold_n).map(|k| k * nodes / cold_n).collect();
        let mut cold = Vec::new();
        for &i in &warmed {
            let t = Instant::now();
            let plan = ctl.plan_migration(plan_request(i)).await.expect("plan");
            cold.push(t.elapsed());
            let plan = plan.into_inner();
            assert_eq!(plan.node_id, format!("node-{i:04}"));
            // The pools the domain's node reaches: its own.
            assert_eq!(plan.candidates.len(), POOLS_PER_NODE);
            assert!(!plan.chosen_pool.is_empty());
        }
        cold.sort();
        rows.push(Row(
            "PlanMigration, hint cold (asks all nodes)".into(),
            format!("{cold_n} calls, each a new domain, gRPC"),
            format!("p50 {} · p99 {}", ms(percentile(&cold, 0.5)), ms(percentile(&cold, 0.99))),
        ));

        // Warm: a random domain each time, over gRPC and straight into the handler.
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut warm = Vec::with_capacity(plans);
        let mut bytes = 0;
        for _ in 0..plans {
            let i = warmed[rng.below(warmed.len())];
            let t = Instant::now();
            let plan = ctl.plan_migration(plan_request(i)).await.expect("plan");
            warm.push(t.elapsed());
            let plan = plan.into_inner();
            assert_eq!(plan.node_id, format!("node-{i:04}"));
            bytes = prost::Message::encoded_len(&plan);
        }
        warm.sort();
        rows.push(Row(
            "PlanMigration, hint warm".into(),
            format!("{plans} calls, random domain of the {cold_n}, gRPC over unix socket (reply {bytes} B)"),
            format!("p50 {} · p99 {}", ms(percentile(&warm, 0.5)), ms(percentile(&warm, 0.99))),
        ));
    });

    let warmed: Vec<usize> = (0..cold_n).map(|k| k * nodes / cold_n).collect();
    let direct = ctrl_rt.block_on(async {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut lat = Vec::with_capacity(plans);
        for _ in 0..plans {
            let i = warmed[rng.below(warmed.len())];
            let t = Instant::now();
            service
                .plan_migration(Request::new(plan_request(i)))
                .await
                .expect("plan");
            lat.push(t.elapsed());
        }
        lat.sort();
        lat
    });
    rows.push(Row(
        "PlanMigration, hint warm, handler only".into(),
        format!("{plans} calls, random domain, in-process call (no encoding/transport)"),
        format!(
            "p50 {} · p99 {}",
            ms(percentile(&direct, 0.5)),
            ms(percentile(&direct, 0.99))
        ),
    ));

    // The fleet's own load on the controller, for comparison: heartbeats
    // (200/s) and the inventory refresh (every node's ListPools every 5 s).
    let tids = || ctrl_tids.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let idle = Duration::from_secs(10);
    let cpu_before = threads_cpu(&tids());
    std::thread::sleep(idle);
    let idle_cpu = threads_cpu(&tids()) - cpu_before;
    rows.push(Row(
        "Controller CPU, fleet idle".into(),
        format!(
            "{nodes} nodes heartbeating every 5 s, inventory refreshed every 5 s; {} s",
            idle.as_secs()
        ),
        format!("{:.1} % of one core", 100.0 * idle_cpu / idle.as_secs_f64()),
    ));

    // 100 concurrent migrations relayed through the controller.
    let cpu_before = threads_cpu(&tids());
    let wall = Instant::now();
    let outcomes: Vec<Result<(), String>> = client_rt.block_on(async {
        let channel = client::connect_to(Peer::Controller, &ctrl_endpoint)
            .await
            .expect("controller");
        let mut set = tokio::task::JoinSet::new();
        for k in 0..streams {
            // Spread over the fleet, one migration per node.
            let i = k * (nodes / streams);
            let mut ctl = ControllerClient::new(channel.clone());
            set.spawn(async move {
                let mut stream = ctl
                    .migrate_volume(plan_request(i))
                    .await
                    .map_err(|s| format!("{}: {s}", domain_of(i)))?
                    .into_inner();
                let mut expected = 1;
                let mut last = proto::Phase::Unspecified;
                while let Some(event) = stream.message().await.map_err(|s| s.to_string())? {
                    let seq = event.progress.map(|p| p.bytes_done).unwrap_or(0);
                    if seq != expected {
                        return Err(format!(
                            "{}: event {seq}, expected {expected}",
                            domain_of(i)
                        ));
                    }
                    expected += 1;
                    last = event.phase();
                }
                if expected != events + 1 || last != proto::Phase::Completed {
                    return Err(format!(
                        "{}: {} of {events} events, last {last:?}",
                        domain_of(i),
                        expected - 1
                    ));
                }
                Ok(())
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.map_err(|e| e.to_string()).and_then(|r| r));
        }
        out
    });
    let wall = wall.elapsed();
    let cpu = threads_cpu(&tids()) - cpu_before;
    let failed: Vec<&String> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    rows.push(Row(
        "Relay".into(),
        format!("{streams} concurrent MigrateVolume streams × {events} events at 10/s"),
        format!(
            "{} of {streams} streams got every event in order{} · {:.1} s wall",
            streams - failed.len(),
            failed
                .first()
                .map(|e| format!(" (first failure: {e})"))
                .unwrap_or_default(),
            wall.as_secs_f64()
        ),
    ));
    rows.push(Row(
        "Controller CPU, relaying".into(),
        "user+sys of the controller runtime's threads / wall time, from the first MigrateVolume to the last event (includes the fleet's idle load)".into(),
        format!(
            "{:.1} % of one core ({cpu:.2} s CPU)",
            100.0 * cpu / wall.as_secs_f64()
        ),
    ));

    let counts: HashMap<bool, usize> = outcomes.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.is_ok()).or_insert(0) += 1;
        m
    });
    print_rows(rows.into_iter().map(|Row(a, b, c)| (a, b, c)).collect());
    // Dropping the runtimes with servers still running is the shutdown.
    drop(client_rt);
    drop(ctrl_rt);
    drop(node_rt);
    if counts.get(&false).copied().unwrap_or(0) > 0 {
        std::process::exit(1);
    }
}

fn print_rows(rows: Vec<(String, String, String)>) {
    println!("| Measure | Setup | Result |");
    println!("|---|---|---|");
    for (a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
}
