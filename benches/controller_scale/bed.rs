//! The bed rows: a real `volmig controller` with real nodes on simulated hosts
//! (`bench/bed-bench.sh` brings them up and runs this binary in the controller's
//! network namespace). Everything goes over TCP with mutual TLS, as in a cloud;
//! each plan asks a real node, which asks its libvirtd, for the domain's disks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use volmig::api::client::{self, Credentials, Peer};
use volmig::api::tls::TlsFiles;
use volmig::proto;
use volmig::proto::controller_client::ControllerClient;

use super::measure::{ms, percentile, XorShift};

/// What the bed run is told by `bench/bed-bench.sh` (the `hosts.sh cli` environment).
pub struct BedTarget {
    controller: String,
    tls: TlsFiles,
    domains: Vec<String>,
}

impl BedTarget {
    /// The target when `VOLMIG_BENCH_BED_DOMAINS` names domains; `None` otherwise.
    pub fn from_env() -> Option<BedTarget> {
        let domains: Vec<String> = std::env::var("VOLMIG_BENCH_BED_DOMAINS")
            .ok()?
            .split(',')
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set with the bed"))
        };
        Some(BedTarget {
            controller: var("VOLMIG_CONTROLLER"),
            tls: TlsFiles {
                ca: PathBuf::from(var("VOLMIG_CA")),
                cert: PathBuf::from(var("VOLMIG_CERT")),
                key: PathBuf::from(var("VOLMIG_KEY")),
                crl: None,
            },
            domains,
        })
    }
}

fn timed<T>(lat: &mut Vec<Duration>, started: Instant, value: T) -> T {
    lat.push(started.elapsed());
    value
}

fn p50_p99(lat: &mut [Duration]) -> String {
    lat.sort();
    format!(
        "p50 {} · p99 {}",
        ms(percentile(lat, 0.5)),
        ms(percentile(lat, 0.99))
    )
}

/// Measures listing and planning through the bed's controller: rows of (measure, setup, result).
pub async fn measure(target: &BedTarget, plans: usize) -> Vec<(String, String, String)> {
    let credentials = Credentials::from_parts(Some(target.tls.clone()), None);
    let channel = client::connect_with(Peer::Controller, &target.controller, &credentials)
        .await
        .unwrap_or_else(|e| panic!("controller {}: {e}", target.controller));
    let mut ctl = ControllerClient::new(channel);
    let nodes = ctl
        .list_nodes(proto::ListNodesRequest {})
        .await
        .expect("list nodes")
        .into_inner()
        .nodes
        .len();
    let setup = format!(
        "{nodes} real nodes, each its own libvirtd in its own namespaces; mTLS over a bridge"
    );
    let mut rows = Vec::new();

    let mut lat = Vec::new();
    let mut pools = 0;
    for _ in 0..100 {
        let t = Instant::now();
        let reply = ctl.list_pools(proto::ListClusterPoolsRequest {}).await;
        pools = timed(&mut lat, t, reply)
            .expect("list pools")
            .into_inner()
            .pools
            .len();
    }
    rows.push((
        "ListPools (bed)".into(),
        format!("{setup}; 100 calls, {pools} pools"),
        p50_p99(&mut lat),
    ));

    // Cold: the first plan of each domain asks every node which runs it.
    let mut cold = Vec::new();
    for domain in &target.domains {
        let t = Instant::now();
        let plan = ctl.plan_migration(plan_request(domain)).await;
        let plan = timed(&mut cold, t, plan)
            .unwrap_or_else(|s| panic!("plan {domain}: {}", s.message()))
            .into_inner();
        assert!(!plan.chosen_pool.is_empty(), "{domain}: no pool chosen");
    }
    rows.push((
        "PlanMigration, hint cold (bed)".into(),
        format!("{setup}; {} calls, each a new domain", cold.len()),
        p50_p99(&mut cold),
    ));

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut warm = Vec::with_capacity(plans);
    for _ in 0..plans {
        let domain = &target.domains[rng.below(target.domains.len())];
        let t = Instant::now();
        let plan = ctl.plan_migration(plan_request(domain)).await;
        timed(&mut warm, t, plan).expect("plan");
    }
    rows.push((
        "PlanMigration, hint warm (bed)".into(),
        format!(
            "{setup}; {plans} calls, random domain of {}",
            target.domains.len()
        ),
        p50_p99(&mut warm),
    ));
    rows
}

fn plan_request(domain: &str) -> proto::MigrateVolumeRequest {
    proto::MigrateVolumeRequest {
        domain: domain.to_string(),
        disk: "vda".into(),
        ..Default::default()
    }
}
