//! End-to-end: libvirtd restarted while a copy of the guest's written disk (`vda`,
//! 64 MiB of data plus the guest's records) runs. A binary of its own,
//! because restarting libvirtd disturbs every other test talking to it:
//! `deploy/test.sh` runs it alone, after the others.

mod harness;

use std::time::Duration;

use harness::checks::assert_on_destination;
use harness::node::{self, NodeProcess};
use harness::{writing_guest_with_data, DirPool, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;

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
async fn libvirtd_restart_mid_copy_still_completes_with_the_data() {
    let src = DirPool::new("l-src");
    let dst = DirPool::new("l-dst");
    let guest = writing_guest_with_data("l-guest", &src, "qcow2");

    let node = NodeProcess::start("l-node", &[]);
    let mut client = node.client().await;
    let req = node::limited(guest.name(), "vda", dst.name(), 8 * MIB);
    let mut stream = client
        .migrate_volume(req)
        .await
        .expect("start")
        .into_inner();
    let mut events = node::read_until(&mut stream, node::mid_copy).await;
    restart_libvirtd();
    events.extend(node::collect(stream).await.expect("stream"));
    node::assert_terminal(&events, proto::Phase::Completed);
    assert_on_destination(&guest, "vda", &node::result_of(&events));
    guest.verify_data_after_cold_restart();
}
