//! End-to-end: libvirtd restarted while a copy of the guest's written disk (`vda`,
//! 64 MiB of data plus the guest's records) runs. A binary of its own,
//! because restarting libvirtd disturbs every other test talking to it:
//! `deploy/test.sh` runs it alone, after the others.
//!
//! The test proves the overlap rather than hoping for it: libvirt and the node
//! both say the copy is still running just before libvirtd is killed and again
//! once it answers, so the whole outage falls inside the copy, and the copy's
//! end reaches the node only through the restarted libvirtd.

mod harness;

use std::time::Duration;

use harness::checks::assert_on_destination;
use harness::node::{self, NodeProcess};
use harness::{writing_guest_with_data, DirPool, Guest, Pool};
use tonic::transport::Channel;
use volmig::proto;
use volmig::proto::node_client::NodeClient;

const MIB: u64 = 1 << 20;

/// The copy covers all of vda (128 MiB): at this rate about 30 s, against about
/// 2 s for a libvirtd restart, so the copy outlasts the restart even when the
/// mid-copy event comes late. At 256 MiB/s the copy ends during the restart.
const BANDWIDTH: u64 = 4 * MIB;

/// The machine's own libvirtd writes its pid here; the simulated hosts' daemons
/// (deploy/hosts.sh) write theirs inside their own mount namespaces, so killing by
/// this file, not by name, leaves them alone.
const PIDFILE: &str = "/run/libvirtd.pid";

fn restart_libvirtd() {
    let pid = std::fs::read_to_string(PIDFILE)
        .unwrap_or_else(|e| panic!("read {PIDFILE}: {e}"))
        .trim()
        .to_string();
    harness::run_ok("kill", &[&pid]);
    harness::wait_until(Duration::from_secs(30), "libvirtd to exit", || {
        // Gone, or a zombie nobody reaped yet: either way it serves nothing.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.rsplit(") ").next().is_some_and(|f| f.starts_with('Z')))
            .unwrap_or(true)
    });
    harness::run_ok("libvirtd", &["-d"]);
    harness::wait_until(Duration::from_secs(30), "libvirtd to answer", || {
        harness::virsh(&["version"]).is_ok()
    });
}

/// The block copy on a disk as libvirt shows it.
#[derive(Debug)]
struct BlockCopy {
    cur: u64,
    end: u64,
    /// QEMU has reported the copy caught up (the live XML's `<mirror ready=…>`).
    ready: bool,
}

/// The block copy on `disk` of `guest`, or None when libvirt shows no block job.
fn block_copy(guest: &Guest, disk: &str) -> Option<BlockCopy> {
    let raw = harness::virsh_ok(&["blockjob", guest.name(), disk, "--raw"]);
    let field = |name: &str| {
        raw.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    let (cur, end) = (field("cur")?, field("end")?);
    let ready = guest.live_disk_source(disk).mirror_ready;
    Some(BlockCopy { cur, end, ready })
}

/// Panics unless libvirt shows the copy on `disk` still running (not caught up)
/// and the node still reports the migration as COPYING; `when` names the moment.
async fn assert_still_copying(
    guest: &Guest,
    disk: &str,
    client: &mut NodeClient<Channel>,
    migration_id: &str,
    when: &str,
) {
    let copy = block_copy(guest, disk)
        .unwrap_or_else(|| panic!("{when}: libvirt shows no block job on {disk}"));
    assert!(
        !copy.ready && copy.cur < copy.end,
        "{when}: the copy had already caught up ({copy:?}), so the restart would not \
         overlap it; lower BANDWIDTH"
    );
    let record = client
        .get_migration(proto::GetMigrationRequest {
            migration_id: migration_id.to_string(),
        })
        .await
        .expect("get migration")
        .into_inner();
    let phase = record.latest.as_ref().map(node::phase);
    assert_eq!(phase, Some(proto::Phase::Copying), "{when}: {record:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn libvirtd_restart_mid_copy_still_completes_with_the_data() {
    let src = DirPool::new("l-src");
    let dst = DirPool::new("l-dst");
    let guest = writing_guest_with_data("l-guest", &src, "qcow2");

    let node = NodeProcess::start("l-node", &[]);
    let mut client = node.client().await;
    let req = node::limited(guest.name(), "vda", dst.name(), BANDWIDTH);
    let mut stream = client
        .migrate_volume(req)
        .await
        .expect("start")
        .into_inner();
    let mut events = node::read_until(&mut stream, node::mid_copy).await;
    let id = events
        .last()
        .expect("a mid-copy event")
        .migration_id
        .clone();
    assert_still_copying(&guest, "vda", &mut client, &id, "before the restart").await;
    restart_libvirtd();
    assert_still_copying(&guest, "vda", &mut client, &id, "after the restart").await;
    let before = events.len();
    events.extend(node::collect(stream).await.expect("stream"));
    assert!(
        events[before..]
            .iter()
            .any(|e| node::phase(e) == proto::Phase::Synchronized),
        "the copy's end was not reported after the restart: {events:#?}"
    );
    node::assert_terminal(&events, proto::Phase::Completed);
    assert_on_destination(&guest, "vda", &node::result_of(&events));
    guest.verify_data_after_cold_restart();
}
