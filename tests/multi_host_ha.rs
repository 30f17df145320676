//! Two controllers on etcd across simulated hosts (issue #21, `deploy/hosts.sh up 2
//! --ctls 2 --etcd`): each controller runs in its own network namespace, etcd in a third,
//! the nodes inside two hosts; everything talks over the bed's bridge only. A guest writes
//! to its disk on host 1. The leading controller is cut off the bridge (its veth goes
//! down), so it loses etcd and every node at once: the other controller must lead within
//! the configured lease, and a migration of the guest's disk started through it must
//! complete (both libvirt definitions on the destination, no record lost after a cold
//! restart). Once the link is back, the old leader must not lead again beside the new one.
//!
//! The second test cuts the leader off etcd only (a blackhole route): it must stand down
//! within the lease although it still reaches everything else; a node registered with
//! both controllers stays up through the death of either, the CLI given both endpoints
//! works with the first one dead, and a controller started afterwards lists the node at
//! once.

mod harness;

use std::time::{Duration, Instant};

use harness::fleet::migrate_args;
use harness::ha_bed::{HaFleet, DOWN_AFTER, LEADING, LEASE_TTL, LOST};
use harness::hosts::SimBed;
use harness::{DirPool, Guest, Pool};

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);
/// The poll that sees the new leader runs every 50 ms and asks etcd a question of its
/// own; the lease is the product's bound, this is only the observer's lag.
const OBSERVER_LAG: Duration = Duration::from_secs(1);

#[test]
fn a_cut_off_leader_is_replaced_within_the_lease_and_the_new_leader_migrates() {
    let t0 = Instant::now();
    let bed = SimBed::up_with(2, &["--ctls", "2", "--etcd"]);
    eprintln!("bed up in {:?}", t0.elapsed());
    let h1 = bed.host(1).clone();
    // Pools and guest live in host 1's libvirtd; the scope outlives them.
    let _on_h1 = h1.libvirt_scope();
    let src = DirPool::new("ha-src");
    let dst = DirPool::new("ha-dst");
    let guest = Guest::start("ha-guest", &src, "qcow2", 64 * MIB);

    let mut fleet = HaFleet::start(&bed, 2, 2);
    let old = fleet.wait_leader(Duration::from_secs(30));
    let survivor = 1 - old;
    eprintln!("controller {old} leads; {:?} into the test", t0.elapsed());
    // Each node registers with both controllers (the `controllers` list), so its
    // heartbeats keep reaching the survivor after the cut.
    fleet.start_node_with(1, &[old, survivor]);
    fleet.start_node_with(2, &[old, survivor]);
    fleet.wait_registered(old);
    fleet.wait_registered(survivor);
    guest.wait_writing(20, BOOT);

    let failover = fleet.cut_leader(old, LEASE_TTL * 4);
    eprintln!(
        "leader {old} cut off: controller {} elected after {:?}, logged `{LEADING}` after \
         {:?}; the old leader logged that it lost after {:?} (lease {LEASE_TTL:?})",
        failover.new_leader, failover.elected_after, failover.logged_after, failover.old_lost_after
    );
    assert_eq!(failover.new_leader, survivor);
    assert!(
        failover.elected_after <= LEASE_TTL + OBSERVER_LAG,
        "took over after {:?}, beyond the lease {LEASE_TTL:?}:\n{}",
        failover.elected_after,
        fleet.logs()
    );

    // The old leader stood down while cut off, within the lease of its last renewal.
    let stood_down = failover.old_lost_after.unwrap_or_else(|| {
        panic!(
            "the cut-off leader never logged `{LOST}` while cut:\n{}",
            fleet.logs()
        )
    });
    assert!(
        stood_down <= LEASE_TTL + OBSERVER_LAG,
        "the cut-off leader stood down after {stood_down:?}, beyond the lease {LEASE_TTL:?}:\n{}",
        fleet.logs()
    );

    // Both nodes heartbeat to the survivor too: well past DOWN_AFTER from the cut, it
    // lists both up and saw no registration lapse.
    std::thread::sleep((DOWN_AFTER + Duration::from_secs(1)).saturating_sub(failover.waited));
    let states = fleet.node_states(survivor);
    assert!(
        states.iter().all(|(_, s)| s == "NODE_STATE_UP"),
        "{states:?}\n{}",
        fleet.logs()
    );
    assert!(
        !fleet
            .controller(survivor)
            .log()
            .contains("registration lapsed"),
        "{}",
        fleet.logs()
    );

    // The migration, from the new leader's namespace, given both controllers with the
    // cut-off one first: the CLI fails over to the new leader.
    let started = Instant::now();
    let (code, out, err) = fleet.cli_via(
        survivor,
        &[old, survivor],
        &migrate_args(guest.name(), "vda", dst.name(), &["--json"]),
    );
    assert_eq!(code, 0, "migrate: {err}\n{out}\n{}", fleet.logs());
    eprintln!(
        "migration through the new leader (the cut-off one named first) took {:?}",
        started.elapsed()
    );
    let last: serde_json::Value = serde_json::from_str(out.lines().last().expect("events"))
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(last["phase"], "PHASE_COMPLETED", "{out}");
    assert_eq!(last["node_id"], fleet.node_id(1), "{out}");
    let dest = last["result"]["destination_source"]
        .as_str()
        .expect("destination")
        .to_string();
    assert_eq!(guest.live_disk_source("vda").path, dest);
    assert_eq!(guest.persistent_disk_source("vda").path, dest);
    let dst_vols = h1
        .virsh(&["vol-list", "--pool", dst.name()])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(dst_vols.contains(&dest), "{dest} not in {dst_vols}");
    eprintln!(
        "nodes at the new leader after the migration: {:?}",
        fleet.node_states(survivor)
    );

    // The link comes back: the old leader follows, the new one keeps leading.
    let led_before = fleet.controller(old).times_led();
    let lost_before = fleet.controller(old).times_lost();
    fleet.set_controller_link(old, true);
    let restored = Instant::now();
    let mut noticed = None;
    while restored.elapsed() < LEASE_TTL * 3 {
        // `None` is a read of the election that etcd did not answer within its
        // deadline (a loaded machine): it says nothing about who leads.
        if let Some(leader) = fleet.leader() {
            assert_eq!(
                leader,
                survivor,
                "the election changed {:?} after the link came back:\n{}",
                restored.elapsed(),
                fleet.logs()
            );
        }
        if noticed.is_none() && fleet.controller(old).times_lost() > lost_before {
            noticed = Some(restored.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("link restored: the old leader logged `{LOST}` after {noticed:?}");
    assert_eq!(
        fleet.controller(old).times_led(),
        led_before,
        "the old leader leads again beside the new one:\n{}",
        fleet.logs()
    );
    assert!(
        fleet.controller(old).times_lost() > 0,
        "the old leader never noticed it lost the leadership:\n{}",
        fleet.logs()
    );
    // It serves again as a follower: the history it shares through etcd has the
    // migration the new leader ran.
    let (code, out, err) = fleet.cli(old, &["list", "--domain", guest.name(), "--json"]);
    assert_eq!(
        code,
        0,
        "list through the old leader: {err}\n{}",
        fleet.logs()
    );
    assert!(out.contains("PHASE_COMPLETED"), "{out}");

    guest.cold_restart();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");
    // Fleet, guest, pools, scope and bed drop in reverse order of declaration.
    eprintln!("test body {:?}", t0.elapsed());
}

#[test]
fn a_leader_cut_off_etcd_only_stands_down_within_the_lease_and_a_node_outlives_either_controller() {
    let t0 = Instant::now();
    let bed = SimBed::up_with(1, &["--ctls", "2", "--etcd"]);
    let mut fleet = HaFleet::start(&bed, 2, 1);
    let old = fleet.wait_leader(Duration::from_secs(30));
    let other = 1 - old;
    fleet.start_node_with(1, &[0, 1]);
    fleet.wait_registered(0);
    fleet.wait_registered(1);
    eprintln!(
        "controller {old} leads, node registered with both; {:?} into the test",
        t0.elapsed()
    );

    // The leader loses etcd and nothing else. (etcd names the winner a moment before
    // it logs that it leads.)
    harness::try_wait_until(Duration::from_secs(5), || {
        fleet.controller(old).times_led() > 0
    });
    let (led_before, lost_before) = (
        fleet.controller(old).times_led(),
        fleet.controller(old).times_lost(),
    );
    let cut = Instant::now();
    fleet.cut_etcd(old, true);
    let (mut stood_down, mut elected) = (None, None);
    while cut.elapsed() < LEASE_TTL * 4 && (stood_down.is_none() || elected.is_none()) {
        if stood_down.is_none() && fleet.controller(old).times_lost() > lost_before {
            stood_down = Some(cut.elapsed());
        }
        if elected.is_none() && fleet.leader() == Some(other) {
            elected = Some(cut.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "leader {old} cut off etcd only: it logged `{LOST}` after {stood_down:?}, controller \
         {other} was elected after {elected:?} (lease {LEASE_TTL:?})"
    );
    let stood_down = stood_down.unwrap_or_else(|| {
        panic!(
            "the leader cut off etcd never stood down:\n{}",
            fleet.logs()
        )
    });
    assert!(
        stood_down <= LEASE_TTL + OBSERVER_LAG,
        "stood down after {stood_down:?}, beyond the lease {LEASE_TTL:?}:\n{}",
        fleet.logs()
    );
    assert!(
        elected.is_some_and(|e| e <= LEASE_TTL + OBSERVER_LAG),
        "the other controller was elected after {elected:?}:\n{}",
        fleet.logs()
    );
    // Past DOWN_AFTER from the cut: the old leader never led again (its duties stopped
    // with its leadership), and the node, heartbeating to both, is up at the new leader.
    std::thread::sleep((DOWN_AFTER + Duration::from_secs(1)).saturating_sub(cut.elapsed()));
    assert_eq!(
        fleet.controller(old).times_led(),
        led_before,
        "{}",
        fleet.logs()
    );
    assert_eq!(fleet.leader(), Some(other));
    assert_eq!(
        fleet.node_states(other),
        [(fleet.node_id(1).to_string(), "NODE_STATE_UP".to_string())],
        "{}",
        fleet.logs()
    );

    // etcd back for the old leader; the new leader is killed with SIGKILL. The node
    // stays up at the survivor, which leads again, and the CLI given both controllers,
    // the dead one first, is answered by the survivor.
    fleet.cut_etcd(old, false);
    fleet.kill_controller(other);
    let killed = Instant::now();
    // The killed controller's lease names it until it lapses.
    let relead = harness::try_wait_until(LEASE_TTL * 4, || fleet.leader() == Some(old));
    eprintln!(
        "controller {other} killed: controller {old} leads again after {:?}",
        killed.elapsed()
    );
    let took = killed.elapsed();
    assert!(
        relead,
        "controller {old} does not lead again:\n{}",
        fleet.logs()
    );
    assert!(took <= LEASE_TTL + OBSERVER_LAG, "took over after {took:?}");
    std::thread::sleep(DOWN_AFTER + Duration::from_secs(1));
    let asked = Instant::now();
    let (code, out, err) = fleet.cli_via(old, &[other, old], &["nodes", "--json"]);
    eprintln!(
        "`nodes` with the dead controller named first answered in {:?}",
        asked.elapsed()
    );
    assert_eq!(code, 0, "{err}\n{}", fleet.logs());
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed["nodes"][0]["node_id"], fleet.node_id(1), "{out}");
    assert_eq!(listed["nodes"][0]["state"], "NODE_STATE_UP", "{out}");

    // A controller started afterwards (the killed one, as a new process) lists the node
    // up in its first answer.
    fleet.restart_controller(other);
    let restarted = Instant::now();
    let mut first = None;
    while first.is_none() && restarted.elapsed() < Duration::from_secs(30) {
        let (code, out, _) = fleet.cli(other, &["nodes", "--json"]);
        if code == 0 {
            first = Some(out);
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let first = first
        .unwrap_or_else(|| panic!("the restarted controller never answered:\n{}", fleet.logs()));
    eprintln!(
        "the restarted controller answered after {:?}: {first}",
        restarted.elapsed()
    );
    let listed: serde_json::Value = serde_json::from_str(&first).expect("json");
    assert_eq!(listed["nodes"][0]["node_id"], fleet.node_id(1), "{first}");
    assert_eq!(listed["nodes"][0]["state"], "NODE_STATE_UP", "{first}");

    // A migration followed through the leader, which is killed mid-copy: the CLI, given
    // both controllers, follows it on through the other one to its end.
    let h1 = bed.host(1).clone();
    let _on_h1 = h1.libvirt_scope();
    let src = DirPool::new("ha-re-src");
    let dst = DirPool::new("ha-re-dst");
    let guest = Guest::start("ha-re-guest", &src, "qcow2", 64 * MIB);
    guest.wait_writing(5, BOOT);
    fleet.wait_registered(old);
    let serving = fleet.cli_spawn(
        old,
        &[old, other],
        &migrate_args(
            guest.name(),
            "vda",
            dst.name(),
            &["--json", "--bandwidth", "8MiB"],
        ),
    );
    // Killed once the copy runs (the first progress event is out).
    std::thread::sleep(Duration::from_secs(2));
    fleet.kill_controller(old);
    let killed = Instant::now();
    let output = serving.wait_with_output().expect("CLI output");
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    eprintln!(
        "migrate across the death of its controller: ended {:?} after the kill; stderr {err}",
        killed.elapsed()
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{err}\n{out}\n{}",
        fleet.logs()
    );
    assert!(err.contains("through another controller"), "{err}");
    let last: serde_json::Value = serde_json::from_str(out.lines().last().expect("events"))
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(last["phase"], "PHASE_COMPLETED", "{out}");
    let dest = last["result"]["destination_source"]
        .as_str()
        .expect("destination");
    assert_eq!(guest.live_disk_source("vda").path, dest);
    eprintln!("test body {:?}", t0.elapsed());
}
