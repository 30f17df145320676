//! End-to-end: two controllers on one 3-member etcd, two node processes (two
//! node ids on this host's libvirtd) each registered with a different
//! controller, one real writing guest. A controller killed mid-copy leaves
//! its migration to the other; the etcd leader killed mid-copy does not stop
//! a migration nor either controller; a node that stops heartbeating is down
//! at every controller within the lease.

mod harness;

use std::time::{Duration, Instant};

use harness::checks::assert_on_destination;
use harness::controller::{wait_nodes_up, ControllerProcess};
use harness::etcd::EtcdCluster;
use harness::node::{self, NodeProcess};
use harness::{writing_guest_with_data, DirPool, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;

/// Both controllers' config: the shared etcd, short lease and heartbeats,
/// this test's pools tagged.
fn config(etcd: &EtcdCluster, prefix: &str, tag: &str, pools: &[&DirPool]) -> String {
    let mut cfg =
        String::from("heartbeat_interval_seconds = 1\ndown_after_seconds = 3\nstore = \"etcd\"\n");
    for p in pools {
        cfg.push_str(&format!(
            "[[pools]]\npool = \"{}\"\ntags = [\"{tag}\"]\n",
            p.name()
        ));
    }
    cfg.push_str(&format!(
        "[etcd]\n{}\nprefix = \"{prefix}\"\nlease_ttl_seconds = 2\n",
        etcd.toml_endpoints()
    ));
    cfg
}

fn register(ctl: &ControllerProcess) -> Vec<String> {
    vec!["--controller".to_string(), ctl.endpoint()]
}

/// Whether `ctl` lists node `id` as down.
async fn down_at(ctl: &ControllerProcess, id: &str) -> bool {
    let mut client = ctl.client().await;
    let Ok(nodes) = client.list_nodes(proto::ListNodesRequest {}).await else {
        return false;
    };
    nodes
        .into_inner()
        .nodes
        .iter()
        .any(|n| n.node_id == id && n.state == proto::NodeState::Down as i32)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_controllers_on_etcd_survive_a_controller_and_an_etcd_member_dying_mid_copy() {
    let src = DirPool::new("ec-src");
    let mid = DirPool::new("ec-mid");
    let back = DirPool::new("ec-back");
    let guest = writing_guest_with_data("ec-guest", &src, "qcow2");
    let mut etcd = EtcdCluster::start("ec-etcd", 3);
    let prefix = format!("/{}/", harness::unique_name("ec"));
    let tag = harness::unique_name("tag");
    let cfg = config(&etcd, &prefix, &tag, &[&mid, &back]);
    let mut a = ControllerProcess::start("ec-a", &cfg);
    let b = ControllerProcess::start("ec-b", &cfg);
    let args_a = register(&a);
    let args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let args_b = register(&b);
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    let n1 = NodeProcess::start("ec-n1", &args_a);
    let mut n2 = NodeProcess::start("ec-n2", &args_b);
    let ids = [n1.node_id(), n2.node_id()];
    // Each node registered with one controller; both know both through etcd.
    wait_nodes_up(&a, &ids).await;
    wait_nodes_up(&b, &ids).await;

    // 1. Through A, then A dies mid-copy: B follows it to the end.
    let mut req = node::limited(guest.name(), "vda", "", 8 * MIB);
    req.required_tags = vec![tag.clone()];
    let mut stream = a
        .client()
        .await
        .migrate_volume(req)
        .await
        .expect("migrate through A")
        .into_inner();
    let seen = node::read_until(&mut stream, node::mid_copy).await;
    let id = seen[0].migration_id.clone();
    a.kill9();
    let mut client_b = b.client().await;
    let events = node::collect(
        client_b
            .watch_migration(proto::WatchMigrationRequest {
                migration_id: id.clone(),
            })
            .await
            .expect("watch through B")
            .into_inner(),
    )
    .await
    .expect("stream");
    node::assert_terminal(&events, proto::Phase::Completed);
    let result = node::result_of(&events);
    assert_eq!(result.destination_pool, mid.name());
    let listed = client_b
        .list_migrations(proto::ListMigrationsRequest::default())
        .await
        .expect("list through B")
        .into_inner()
        .migrations;
    let record = listed
        .iter()
        .find(|r| r.migration_id == id)
        .expect("B's history has the migration A started");
    assert_eq!(
        record.latest.as_ref().map(|e| e.phase),
        Some(proto::Phase::Completed as i32)
    );
    assert_on_destination(&guest, "vda", &result);
    a.restart();

    // 2. On through B while the etcd leader dies mid-copy.
    let mut req = node::limited(guest.name(), "vda", back.name(), 8 * MIB);
    req.required_tags = vec![tag.clone()];
    let mut stream = client_b
        .migrate_volume(req)
        .await
        .expect("migrate through B")
        .into_inner();
    node::read_until(&mut stream, node::mid_copy).await;
    let leader = etcd.leader().await.expect("an etcd leader");
    etcd.kill(leader);
    let events = node::collect(stream).await.expect("stream");
    node::assert_terminal(&events, proto::Phase::Completed);
    assert_on_destination(&guest, "vda", &node::result_of(&events));
    for ctl in [&a, &b] {
        let mut c = ctl.client().await;
        let listed = c
            .list_migrations(proto::ListMigrationsRequest::default())
            .await
            .expect("a controller keeps serving after the etcd leader died")
            .into_inner()
            .migrations;
        assert_eq!(listed.len(), 2, "{listed:#?}");
        assert!(listed
            .iter()
            .all(|r| r.latest.as_ref().map(|e| e.phase) == Some(proto::Phase::Completed as i32)));
    }
    wait_nodes_up(&a, &ids).await;

    // 3. A node stops heartbeating: down at both controllers within the lease.
    let n2_id = n2.node_id().to_string();
    n2.kill9();
    let stopped = Instant::now();
    let mut down = [false, false];
    while stopped.elapsed() < Duration::from_secs(6) && !(down[0] && down[1]) {
        down = [down_at(&a, &n2_id).await, down_at(&b, &n2_id).await];
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "node down at both controllers after {:?}",
        stopped.elapsed()
    );
    assert!(
        down[0] && down[1],
        "node down at A: {}, at B: {}",
        down[0],
        down[1]
    );
    assert!(
        stopped.elapsed() <= Duration::from_secs(5),
        "beyond the 3 s lease + a 1 s heartbeat + sync"
    );

    drop(n1);
    guest.verify_data_after_cold_restart();
}

/// Attaches `n` small qcow2 disks (vdc, vdd, …) from `pool` to the running guest and
/// its persistent definition (volmig verifies both after the pivot).
fn attach_small_disks(guest: &harness::Guest, pool: &DirPool, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let target = format!("vd{}", (b'c' + i as u8) as char);
            let vol = format!("{}-{target}", guest.name());
            harness::virsh_ok(&[
                "vol-create-as",
                pool.name(),
                &vol,
                "1M",
                "--format",
                "qcow2",
            ]);
            let path = pool.path().join(&vol);
            harness::virsh_ok(&[
                "attach-disk",
                guest.name(),
                &path.to_string_lossy(),
                &target,
                "--targetbus",
                "virtio",
                "--subdriver",
                "qcow2",
                "--persistent",
            ]);
            target
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_controllers_never_overfill_a_pool_with_twenty_concurrent_migrations() {
    let src = DirPool::new("eq-src");
    let d1 = DirPool::new("eq-d1");
    let d2 = DirPool::new("eq-d2");
    let guest = harness::Guest::start("eq-guest", &src, "qcow2", 64 * MIB);
    guest.wait_writing(5, Duration::from_secs(120));
    let targets = attach_small_disks(&guest, &src, 20);
    let etcd = EtcdCluster::start("eq-etcd", 1);
    let prefix = format!("/{}/", harness::unique_name("eq"));
    let tag = harness::unique_name("tag");
    let mut cfg = config(&etcd, &prefix, &tag, &[]);
    let pools: String = [&d1, &d2]
        .iter()
        .map(|p| {
            format!(
                "[[pools]]\npool = \"{}\"\ntags = [\"{tag}\"]\nmax_in_flight = 2\n",
                p.name()
            )
        })
        .collect();
    cfg = cfg.replacen("[etcd]", &format!("{pools}[etcd]"), 1);
    let a = ControllerProcess::start("eq-a", &cfg);
    let b = ControllerProcess::start("eq-b", &cfg);
    let args = register(&a);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--max-concurrent", "32"]);
    let n1 = NodeProcess::start("eq-n1", &args);
    wait_nodes_up(&a, &[n1.node_id()]).await;
    wait_nodes_up(&b, &[n1.node_id()]).await;

    // The nodes' own view: migrations active per destination pool, sampled.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let mut node_client = n1.client().await;
        tokio::spawn(async move {
            let mut most = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(r) = node_client
                    .list_migrations(proto::ListMigrationsRequest {
                        active_only: true,
                        ..Default::default()
                    })
                    .await
                {
                    let mut per_pool = std::collections::HashMap::new();
                    for m in r.into_inner().migrations {
                        let pool = m.request.map(|r| r.destination_pool).unwrap_or_default();
                        *per_pool.entry(pool).or_insert(0usize) += 1;
                    }
                    most = most.max(per_pool.values().copied().max().unwrap_or(0));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            most
        })
    };
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, target) in targets.iter().enumerate() {
        let ctl = if i % 2 == 0 {
            a.endpoint()
        } else {
            b.endpoint()
        };
        let mut req = node::limited(guest.name(), target, "", MIB);
        req.required_tags = vec![tag.clone()];
        tasks.spawn(async move {
            let channel = volmig::api::client::connect(&ctl).await.expect("connect");
            let mut client = proto::controller_client::ControllerClient::new(channel);
            let mut refused = 0u32;
            loop {
                match client.migrate_volume(req.clone()).await {
                    Ok(stream) => {
                        let events = node::collect(stream.into_inner()).await.expect("stream");
                        return (events, refused);
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(s) => panic!("migrate: {s:?}"),
                }
            }
        });
    }
    let mut refusals = 0;
    while let Some(joined) = tasks.join_next().await {
        let (events, refused) = joined.expect("join");
        node::assert_terminal(&events, proto::Phase::Completed);
        refusals += refused;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await.expect("sampler");
    eprintln!(
        "20 migrations through two controllers in {:?}; {refusals} refusals at the limit; at most {most} in flight per pool on the node",
        started.elapsed()
    );
    assert!(
        most <= 2,
        "{most} migrations in flight on one pool (limit 2)"
    );
    assert!(most >= 1, "the sampler saw no migration");
    assert!(refusals > 0, "20 concurrent requests never hit the limit");
}
