//! End-to-end: libvirtd restarted while a copy runs. A binary of its own,
//! because restarting libvirtd disturbs every other test talking to it (cargo
//! runs test binaries one after another).

mod harness;

use std::time::Duration;

use harness::guest::guest_with_full_data_disk;
use harness::node::{self, NodeProcess};
use harness::{DirPool, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

fn restart_libvirtd() {
    harness::run_ok("pkill", &["-x", "libvirtd"]);
    harness::wait_until(Duration::from_secs(30), "libvirtd to exit", || {
        harness::run("pgrep", &["-x", "libvirtd"]).is_err()
    });
    harness::run_ok("libvirtd", &["-d"]);
    harness::wait_until(Duration::from_secs(30), "libvirtd to answer", || {
        harness::virsh(&["version"]).is_ok()
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn libvirtd_restart_mid_copy_still_completes() {
    let src = DirPool::new("l-src");
    let dst = DirPool::new("l-dst");
    let guest = guest_with_full_data_disk("l-guest", &src, 48 * MIB);

    let node = NodeProcess::start("l-node", &[]);
    let mut client = node.client().await;
    let req = node::limited(guest.name(), "vdb", dst.name(), 8 * MIB);
    let mut stream = client
        .migrate_volume(req)
        .await
        .expect("start")
        .into_inner();
    let mut events = node::read_until(&mut stream, node::copying_with_progress).await;
    restart_libvirtd();
    events.extend(node::collect(stream).await.expect("stream"));
    node::assert_terminal(&events, proto::Phase::Completed);
    let result = events
        .last()
        .and_then(|e| e.result.clone())
        .expect("result");
    assert_eq!(
        guest.live_disk_source("vdb").path,
        result.destination_source
    );
    assert_eq!(
        guest.persistent_disk_source("vdb").path,
        result.destination_source
    );
    guest.cold_restart();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");
}
