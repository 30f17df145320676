//! Shared storage across simulated hosts (issue #21): three "hosts" (`deploy/hosts.sh`),
//! each with its own host name, libvirtd and `volmig node`, one controller. One directory
//! is a `dir` pool of the same name and target on all three (what an NFS export mounted
//! on each host looks like to libvirt). The bed's directory is no network mount, so the
//! nodes cannot tell it is shared: each names it in `[shared_pools]`, and the controller's
//! inventory sees one shared pool reached by three nodes (without the setting it would
//! see three local pools, one a host name, and delete a source another host uses). A writing guest
//! runs on each host: host 1's and host 2's on the shared pool, host 3's on a pool of its
//! own, and host 3's guest also holds host 1's disk image as a read-only shareable disk.
//!
//! Through the controller, each guest's disk migrates to a local pool of its host and
//! every event names that host's node. With the DELETE source policy, host 1's old image
//! is kept — only host 3's node sees its user, and the controller asks it — and the reason
//! names node 3 and its guest; host 2's old image, which nothing else uses, is deleted.
//! After a cold restart on its host, every guest's records read back complete.

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::fleet::{migrate_args, Fleet};
use harness::hosts::{SimBed, SimHost};
use harness::shared_pool::{OnHost, SharedDirPool};
use harness::{DirPool, Guest, Pool};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(240);
const SEEN: Duration = Duration::from_secs(120);

/// The migration's events (one JSON object a line); panics unless it completed.
fn completed(answer: &(i32, String, String), logs: &str) -> Vec<Value> {
    let (code, out, err) = answer;
    assert_eq!(*code, 0, "migrate: {err}\n{out}\n{logs}");
    let events: Vec<Value> = out
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let last = events.last().unwrap_or_else(|| panic!("no events: {out}"));
    assert_eq!(last["phase"], "PHASE_COMPLETED", "{out}\n{logs}");
    events
}

/// Every event that names a node names `node_id`, and the last one does.
fn all_on(events: &[Value], node_id: &str) {
    for e in events {
        if let Some(id) = e["node_id"].as_str() {
            assert_eq!(id, node_id, "event from another node: {e}");
        }
    }
    assert_eq!(events.last().expect("events")["node_id"], node_id);
}

/// `volmig migrate` of `domain`'s vda to `pool` through the controller.
fn migrate(fleet: &Fleet, domain: &str, pool: &str, delete: bool) -> Vec<Value> {
    let mut args = migrate_args(domain, "vda", pool, &["--json"]);
    if delete {
        args.push("--delete-source");
    }
    let started = Instant::now();
    let answer = fleet.cli(&args);
    eprintln!("migration of {domain} took {:?}", started.elapsed());
    completed(&answer, &fleet.logs())
}

fn has_domain(host: &SimHost, name: &str) -> bool {
    host.domains().iter().any(|d| d == name)
}

#[test]
fn shared_dir_pool_across_three_hosts_keeps_a_source_another_host_uses() {
    let t0 = Instant::now();
    let bed = SimBed::up(3);
    eprintln!("bed up in {:?}", t0.elapsed());
    let hosts: Vec<SimHost> = (1..=3).map(|i| bed.host(i).clone()).collect();
    let (h1, h2, h3) = (&hosts[0], &hosts[1], &hosts[2]);

    // Storage: the shared directory as a dir pool on every host; a destination pool of
    // its own on each host; host 3's guest starts on a pool of its own too.
    let shared = SharedDirPool::new("mhs-shared", &[h1, h2, h3]);
    let dst: Vec<OnHost<DirPool>> = hosts
        .iter()
        .map(|h| OnHost::new(h, || DirPool::new("mhs-dst")))
        .collect();
    let src3 = OnHost::new(h3, || DirPool::new("mhs-src3"));

    // A writing guest on each host.
    let g1 = OnHost::new(h1, || {
        Guest::start("mhs-g1", shared.pool(), "raw", 64 * MIB)
    });
    let g2 = OnHost::new(h2, || {
        Guest::start("mhs-g2", shared.pool(), "qcow2", 64 * MIB)
    });
    let g3 = OnHost::new(h3, || Guest::start("mhs-g3", src3.get(), "qcow2", 64 * MIB));
    shared.refresh_all();
    let guests = [&g1, &g2, &g3];
    for (k, g) in guests.iter().enumerate() {
        for (j, h) in hosts.iter().enumerate() {
            assert_eq!(
                has_domain(h, g.get().name()),
                j == k,
                "{} on host {}",
                g.get().name(),
                j + 1
            );
        }
    }
    let image1 = g1.with(|g| g.live_disk_source("vda").path);
    let image2 = g2.with(|g| g.live_disk_source("vda").path);
    assert!(
        image1.starts_with(&*shared.path().to_string_lossy()),
        "{image1}"
    );
    assert!(
        image2.starts_with(&*shared.path().to_string_lossy()),
        "{image2}"
    );

    // Host 3's guest also holds host 1's image: a read-only shareable raw disk (QEMU's
    // image locks let it share the file with host 1's writer only so).
    let vdc = bed.dir().join("g3-vdc.xml");
    std::fs::write(
        &vdc,
        format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{}'/><target dev='vdc' bus='virtio'/><readonly/><shareable/></disk>",
            harness::xml::escape(&image1)
        ),
    )
    .expect("vdc xml");
    h3.virsh(&[
        "attach-device",
        g3.get().name(),
        &vdc.to_string_lossy(),
        "--live",
    ])
    .unwrap_or_else(|e| panic!("attaching {image1} to host 3's guest: {e}"));
    let blk3 = h3
        .virsh(&["domblklist", g3.get().name()])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(blk3.contains(&image1), "{blk3}");

    // A second entry names a pool no host has: each node warns of it at start-up.
    let shared_as = format!("volmig-test-bed:{}", shared.path().display());
    let fleet = Fleet::up_with(
        &bed,
        3,
        &format!(
            "[shared_pools]\n\"{}\" = \"{shared_as}\"\nmhs-no-such-pool = \"x\"\n",
            shared.name()
        ),
    );
    let ids: Vec<String> = (1..=3).map(|i| fleet.node_id(i).to_string()).collect();

    // The controller sees the shared directory as one shared pool reached by all three
    // nodes, under the storage id the setting gives it.
    let mut pools = String::new();
    let merged = harness::try_wait_until(SEEN, || {
        let (code, out, _) = fleet.cli(&["pools", "--json"]);
        pools = out;
        code == 0
            && serde_json::from_str::<Value>(&pools).is_ok_and(|v| {
                v["pools"].as_array().is_some_and(|ps| {
                    ps.iter().any(|p| {
                        p["pool"]["name"] == shared.name()
                            && p["node_ids"].as_array().is_some_and(|n| {
                                ids.iter().all(|id| n.iter().any(|x| x == id.as_str()))
                            })
                    })
                })
            })
    });
    assert!(
        merged,
        "the controller does not see {} as one pool of 3 nodes:\n{pools}\n{}",
        shared.name(),
        fleet.logs()
    );
    let listed: Value = serde_json::from_str(&pools).expect("pools json");
    let entries: Vec<&Value> = listed["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .filter(|p| p["pool"]["name"] == shared.name())
        .collect();
    assert_eq!(entries.len(), 1, "listed more than once:\n{pools}");
    assert_eq!(entries[0]["storage_id"], format!("shared:{shared_as}"));
    assert_eq!(entries[0]["pool"]["shared"], true, "{pools}");
    let warned = |i| {
        let log = fleet.node(i).log();
        log.contains("WARN") && log.contains("mhs-no-such-pool")
    };
    assert!(
        harness::try_wait_until(Duration::from_secs(10), || (1..=3).all(warned)),
        "no start-up warning of the unknown pool name:\n{}",
        fleet.logs()
    );

    for g in guests {
        g.with(|g| g.wait_writing(20, BOOT));
    }

    // 1. Host 1's guest leaves the shared pool with DELETE: host 3's guest uses the image.
    let events = migrate(&fleet, g1.get().name(), dst[0].get().name(), true);
    all_on(&events, &ids[0]);
    let result = &events.last().expect("events")["result"];
    assert_eq!(result["source_deleted"], false, "{result}");
    let reason = result["source_kept_reason"].as_str().unwrap_or_default();
    eprintln!("host 1's source kept: {reason}");
    assert!(
        reason.contains(&ids[2]) && reason.contains(g3.get().name()),
        "the reason must name node 3 and its guest: {reason:?}\n{result}"
    );
    assert!(
        Path::new(&image1).exists(),
        "{image1} was deleted although host 3's guest uses it"
    );
    let dest1 = result["destination_source"].as_str().expect("destination");
    assert_eq!(g1.with(|g| g.live_disk_source("vda").path), dest1);
    assert_eq!(g1.with(|g| g.persistent_disk_source("vda").path), dest1);
    assert!(
        h3.virsh(&["domblklist", g3.get().name()])
            .unwrap_or_else(|e| panic!("{e}"))
            .contains(&image1),
        "host 3's guest lost its disk on {image1}"
    );

    // 2. Host 2's guest leaves the shared pool with DELETE: nothing else uses its image.
    let events = migrate(&fleet, g2.get().name(), dst[1].get().name(), true);
    all_on(&events, &ids[1]);
    let result = &events.last().expect("events")["result"];
    assert_eq!(result["source_deleted"], true, "{result}\n{}", fleet.logs());
    assert_eq!(result["source_kept_reason"], "", "{result}");
    assert!(!Path::new(&image2).exists(), "{image2} is still there");
    let dest2 = result["destination_source"].as_str().expect("destination");
    assert_eq!(g2.with(|g| g.live_disk_source("vda").path), dest2);

    // 3. Host 3's guest moves between its own pools.
    let events = migrate(&fleet, g3.get().name(), dst[2].get().name(), false);
    all_on(&events, &ids[2]);
    let dest3 = events.last().expect("events")["result"]["destination_source"]
        .as_str()
        .expect("destination")
        .to_string();
    assert_eq!(g3.with(|g| g.persistent_disk_source("vda").path), dest3);

    // Each destination is a volume of its host's pool, and only there.
    for (k, dest) in [dest1, dest2, &dest3].iter().enumerate() {
        for (j, h) in hosts.iter().enumerate() {
            let vols = h
                .virsh(&["vol-list", "--pool", dst[k].get().name()])
                .unwrap_or_default();
            assert_eq!(vols.contains(dest), j == k, "{dest} on host {}", j + 1);
        }
    }

    // Cold restart of every guest on its host; every record is there.
    for (k, g) in guests.iter().enumerate() {
        let report = g.with(|g| {
            g.cold_restart();
            g.wait_writing(10, BOOT);
            g.verify_records("vda")
        });
        eprintln!("guest {}: {report:?}", k + 1);
        assert!(has_domain(&hosts[k], g.get().name()));
    }

    drop(fleet);
    drop((g1, g2, g3));
    drop((src3, dst, shared));
    let t1 = Instant::now();
    drop(bed);
    eprintln!("bed down in {:?}; test {:?}", t1.elapsed(), t0.elapsed());
}
