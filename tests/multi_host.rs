//! End-to-end on simulated hosts (issue #21, `deploy/hosts.sh`): two KVM "hosts" on this
//! machine, each a network namespace on a bridge of this run plus a mount namespace with
//! its own libvirtd, and a controller namespace. A `volmig node` runs inside each host,
//! serving mutual TLS on its own address with a certificate naming that address, and
//! registers with a `volmig controller` that runs in the controller namespace. The operator
//! CLI (also in the controller namespace) migrates the disk of a writing guest that lives
//! on host 2 only: the controller must find host 2's node, host 1's libvirtd never sees
//! the domain, nor does the machine's own libvirtd, and after a cold restart on host 2 the
//! guest's records read back complete. Only addresses on the bed's bridge are used.

mod harness;

use std::time::{Duration, Instant};

use harness::fleet::{migrate_args, Fleet, NODE_PORT};
use harness::hosts::SimBed;
use harness::{DirPool, Guest, Pool};

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

#[test]
fn a_migration_through_the_controller_lands_on_the_host_running_the_guest() {
    let t0 = Instant::now();
    let bed = SimBed::up(2);
    eprintln!("bed up in {:?}", t0.elapsed());
    let (h1, h2) = (bed.host(1).clone(), bed.host(2).clone());

    // Everything the harness creates below lives in host 2's libvirtd. The scope is
    // declared before the pools and the guest, so their Drop still goes to host 2.
    let on_h2 = h2.libvirt_scope();
    let src = DirPool::new("mh-src");
    let dst = DirPool::new("mh-dst");
    let guest = Guest::start("mh-guest", &src, "qcow2", 64 * MIB);

    // The guest exists on host 2 only.
    assert!(h2.domains().iter().any(|d| d == guest.name()));
    assert!(!h1.domains().iter().any(|d| d == guest.name()));
    let root = harness::run_ok(
        "virsh",
        &["-c", "qemu:///system", "list", "--all", "--name"],
    );
    assert!(
        !root.lines().any(|l| l.trim() == guest.name()),
        "the machine's libvirtd sees {}",
        guest.name()
    );

    let fleet = Fleet::start(&bed, 2);
    let ids = [fleet.node_id(1).to_string(), fleet.node_id(2).to_string()];
    let cli = |args: &[&str]| fleet.cli(args);
    let logs = || fleet.logs();
    let n1 = fleet.node(1);

    let nodes = fleet.wait_registered();
    // Each registered from its own address.
    for (host, id) in [(&h1, &ids[0]), (&h2, &ids[1])] {
        let line = nodes
            .lines()
            .find(|l| l.contains(id.as_str()))
            .expect("listed");
        assert!(
            line.contains(&format!("https://{}:{NODE_PORT}", host.addr())),
            "{id}: {line}"
        );
    }

    guest.wait_writing(20, BOOT);
    let started = Instant::now();
    let (code, out, err) = cli(&migrate_args(guest.name(), "vda", dst.name(), &["--json"]));
    assert_eq!(code, 0, "migrate: {err}\n{out}\n{}", logs());
    eprintln!("migration took {:?}", started.elapsed());
    let last: serde_json::Value = serde_json::from_str(out.lines().last().expect("events"))
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(last["phase"], "PHASE_COMPLETED", "{out}");
    let dest = last["result"]["destination_source"]
        .as_str()
        .expect("destination")
        .to_string();
    // Run by host 2's node (every event names it), never by host 1's.
    assert_eq!(last["node_id"], ids[1].as_str(), "{out}");
    assert!(
        !n1.log().contains(guest.name()),
        "host 1's node heard of the guest:\n{}",
        logs()
    );

    // Host 2's libvirtd: both definitions name the destination in `dst`.
    assert_eq!(guest.live_disk_source("vda").path, dest);
    assert_eq!(guest.persistent_disk_source("vda").path, dest);
    let dst_vols = h2
        .virsh(&["vol-list", "--pool", dst.name()])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        dst_vols.contains(&dest),
        "{dest} not a volume of {}:\n{dst_vols}",
        dst.name()
    );
    // Host 1's libvirtd never had the domain.
    assert!(!h1.domains().iter().any(|d| d == guest.name()));

    guest.cold_restart();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");

    drop(fleet);
    drop(guest);
    drop((src, dst));
    drop(on_h2);
    let t1 = Instant::now();
    drop(bed);
    eprintln!("bed down in {:?}; test {:?}", t1.elapsed(), t0.elapsed());
}
