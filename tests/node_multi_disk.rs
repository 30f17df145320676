//! End-to-end: several disks of one running guest moved as one migration.
//!
//! The guest writes its records to vda while the copies run; the other disks
//! hold data written before the first boot. Every scenario checks each disk in
//! libvirt's live and persistent definitions and, after a cold restart, the
//! guest's records and every pre-written pattern.

mod harness;

use std::time::Duration;

use harness::checks::{assert_on_destination, assert_rolled_back};
use harness::guest::{DATA_GUEST_DISK, DATA_GUEST_PREWRITTEN};
use harness::node::{self, NodeProcess};
use harness::{DirPool, FsPool, Guest, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

/// A writing guest (vda: records plus 64 MiB of pattern) with a pre-written
/// virtio `vdb` and IDE `hda` of the given sizes.
fn three_disk_guest(purpose: &str, pool: &dyn Pool, vdb: u64, hda: u64) -> Guest {
    let guest = Guest::builder(purpose, pool)
        .format("qcow2")
        .disk_bytes(DATA_GUEST_DISK)
        .prewritten(DATA_GUEST_PREWRITTEN)
        .data_disk_prewritten(vdb, "qcow2")
        .ide_disk_prewritten(hda, "qcow2")
        .pause_ms(20)
        .start();
    guest.wait_writing(10, BOOT);
    guest
}

/// A request for `disks`, each to its own pool, every copy limited to `bandwidth`.
fn group_request(
    guest: &Guest,
    disks: &[(&str, &str)],
    bandwidth: u64,
) -> proto::MigrateVolumeRequest {
    proto::MigrateVolumeRequest {
        domain: guest.name().to_string(),
        disks: disks
            .iter()
            .map(|(disk, pool)| proto::DiskDestination {
                disk: (*disk).to_string(),
                destination_pool: (*pool).to_string(),
                ..Default::default()
            })
            .collect(),
        options: Some(proto::MigrationOptions {
            bandwidth_bytes_per_sec: bandwidth,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn disk<'a>(e: &'a proto::MigrationEvent, target: &str) -> &'a proto::DiskStatus {
    e.disks
        .iter()
        .find(|d| d.disk == target)
        .unwrap_or_else(|| panic!("no disk {target} in {e:#?}"))
}

fn disk_phase(e: &proto::MigrationEvent, target: &str) -> proto::Phase {
    proto::Phase::try_from(disk(e, target).phase).unwrap_or(proto::Phase::Unspecified)
}

fn synchronized(e: &proto::MigrationEvent) -> usize {
    e.disks
        .iter()
        .filter(|d| d.phase == proto::Phase::Synchronized as i32)
        .count()
}

/// Every disk of the last event ended in `want`, and none was pivoted.
fn assert_none_pivoted(last: &proto::MigrationEvent, want: proto::Phase) {
    for d in &last.disks {
        assert_eq!(d.phase, want as i32, "{}: {d:#?}", d.disk);
        assert_eq!(d.pivot_started_unix_ms, 0, "{} was pivoted", d.disk);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn all_disks_of_the_reviewers_vm_move_together_and_the_empty_cdrom_is_skipped() {
    let src = DirPool::new("md-all-src");
    let dst = DirPool::new("md-all-dst");
    // The reviewer's shape: IDE hda, an empty IDE cdrom hdc, virtio vdb, and the
    // disk the guest writes (vda).
    let guest = Guest::builder("md-all", &src)
        .format("qcow2")
        .disk_bytes(DATA_GUEST_DISK)
        .prewritten(DATA_GUEST_PREWRITTEN)
        .data_disk_prewritten(32 * MIB, "qcow2")
        .ide_disk_prewritten(32 * MIB, "qcow2")
        .empty_cdrom()
        .pause_ms(20)
        .start();
    guest.wait_writing(10, BOOT);
    let node = NodeProcess::start("md-all", &[]);
    let mut client = node.client().await;
    let req = proto::MigrateVolumeRequest {
        domain: guest.name().to_string(),
        all_disks: true,
        destination_pool: dst.name().to_string(),
        ..Default::default()
    };
    let events = node::migrate(&mut client, req).await.expect("migrate");
    node::assert_terminal(&events, proto::Phase::Completed);
    let last = events.last().expect("terminal");
    let moved: Vec<&str> = last.disks.iter().map(|d| d.disk.as_str()).collect();
    assert_eq!(moved, ["vda", "vdb", "hda"], "{last:#?}");
    assert_eq!(last.skipped.len(), 1, "{:?}", last.skipped);
    assert_eq!(last.skipped[0].disk, "hdc");
    assert_eq!(last.skipped[0].reason, "cdrom");
    // No disk pivoted before every disk was synchronized.
    for e in &events {
        let pivoting = e.disks.iter().any(|d| {
            d.phase >= proto::Phase::Pivoting as i32 && d.phase <= proto::Phase::Completed as i32
        });
        let copying = e
            .disks
            .iter()
            .any(|d| d.phase < proto::Phase::Synchronized as i32);
        assert!(
            !(pivoting && copying),
            "a pivot before all were synchronized: {e:#?}"
        );
    }
    for d in &last.disks {
        let result = d.result.as_ref().unwrap_or_else(|| panic!("{d:#?}"));
        assert_eq!(result.destination_pool, dst.name());
        assert_on_destination(&guest, &d.disk, result);
    }
    eprintln!("pivot window: {} ms", last.pivot_window_ms);
    assert!(last.pivot_window_ms > 0);
    guest.verify_data_after_cold_restart();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_too_small_for_the_third_disk_rolls_every_disk_back() {
    let src = DirPool::new("md-full-src");
    let dst = DirPool::new("md-full-dst");
    // ~99 MiB available: the space check for hda's 64 MiB passes; a fill mid-copy
    // leaves too little for the rest.
    let small = FsPool::new("md-full-fs", 112 * MIB);
    let guest = three_disk_guest("md-full", &src, 32 * MIB, 64 * MIB);
    let sources: Vec<(String, String)> = ["vda", "vdb", "hda"]
        .iter()
        .map(|d| (d.to_string(), guest.live_disk_source(d).path))
        .collect();
    let node = NodeProcess::start("md-full", &[]);
    let mut client = node.client().await;
    let req = group_request(
        &guest,
        &[
            ("vda", dst.name()),
            ("vdb", dst.name()),
            ("hda", small.name()),
        ],
        16 * MIB,
    );
    let mut stream = client
        .migrate_volume(req)
        .await
        .unwrap_or_else(|s| panic!("the space checks must pass: {s:?}"))
        .into_inner();
    node::read_until(&mut stream, |e| {
        e.disks.iter().any(|d| {
            d.disk == "hda"
                && d.phase == proto::Phase::Copying as i32
                && d.progress
                    .as_ref()
                    .is_some_and(|p| p.bytes_done > 0 && p.bytes_done * 4 < p.bytes_total * 3)
        })
    })
    .await;
    small.fill_leaving(4 * MIB);
    let rest = node::collect(stream).await.expect("stream");
    node::assert_terminal(&rest, proto::Phase::Failed);
    let last = rest.last().expect("terminal");
    let error = node::error_of(&rest);
    assert_eq!(
        error.code,
        tonic::Code::ResourceExhausted as i32,
        "{error:#?}"
    );
    assert!(error.message.starts_with("disk hda:"), "{error:#?}");
    assert_none_pivoted(last, proto::Phase::Failed);
    for (target, path) in &sources {
        let pool: &dyn Pool = if target == "hda" { &small } else { &dst };
        assert_rolled_back(&guest, target, pool, path);
    }
    let before = guest.last_ack();
    guest.wait_for_ack(before + 10, BOOT);
    guest.verify_data_after_cold_restart();
}

/// A three-disk migration caught with two disks synchronized and the third
/// still copying: the moment a cancel or a crash hits before any pivot.
struct TwoOfThree {
    _src: DirPool,
    dst: DirPool,
    guest: Guest,
    /// (target, source path) of every disk.
    sources: Vec<(String, String)>,
    node: NodeProcess,
    id: String,
}

impl TwoOfThree {
    async fn start(purpose: &str) -> (TwoOfThree, tonic::Streaming<proto::MigrationEvent>) {
        let src = DirPool::new(&format!("{purpose}-src"));
        let dst = DirPool::new(&format!("{purpose}-dst"));
        // vdb (16 MiB) and vda (64 MiB of data) converge long before hda (192 MiB).
        let guest = three_disk_guest(purpose, &src, 16 * MIB, 192 * MIB);
        let sources: Vec<(String, String)> = ["vda", "vdb", "hda"]
            .iter()
            .map(|d| (d.to_string(), guest.live_disk_source(d).path))
            .collect();
        let node = NodeProcess::start(purpose, &[]);
        let mut client = node.client().await;
        let all: Vec<(&str, &str)> = ["vda", "vdb", "hda"]
            .iter()
            .map(|d| (*d, dst.name()))
            .collect();
        let mut stream = client
            .migrate_volume(group_request(&guest, &all, 16 * MIB))
            .await
            .expect("start")
            .into_inner();
        let seen = node::read_until(&mut stream, |e| {
            synchronized(e) == 2 && disk_phase(e, "hda") == proto::Phase::Copying
        })
        .await;
        let id = seen.last().expect("event").migration_id.clone();
        let t = TwoOfThree {
            _src: src,
            dst,
            guest,
            sources,
            node,
            id,
        };
        (t, stream)
    }

    /// Every disk back on its source in both definitions, no job and no
    /// destination left, and all data there after a cold restart.
    fn assert_all_rolled_back(&self, last: &proto::MigrationEvent, phase: proto::Phase) {
        assert_none_pivoted(last, phase);
        for (target, path) in &self.sources {
            assert_rolled_back(&self.guest, target, &self.dst, path);
        }
        self.guest.verify_data_after_cold_restart();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_while_two_of_three_disks_are_synchronized_rolls_all_back() {
    let (t, stream) = TwoOfThree::start("md-cancel").await;
    let mut client = t.node.client().await;
    client
        .cancel_migration(proto::CancelMigrationRequest {
            migration_id: t.id.clone(),
        })
        .await
        .expect("cancel");
    let rest = node::collect(stream).await.expect("stream");
    node::assert_terminal(&rest, proto::Phase::Cancelled);
    t.assert_all_rolled_back(rest.last().expect("terminal"), proto::Phase::Cancelled);
}

#[tokio::test(flavor = "multi_thread")]
async fn node_killed_mid_multi_disk_copy_rolls_every_disk_back_after_restart() {
    let (mut t, stream) = TwoOfThree::start("md-kill").await;
    drop(stream);
    t.node.kill9();
    // QEMU keeps mirroring without the node; the guest keeps writing.
    let acked = t.guest.last_ack();
    t.guest.wait_for_ack(acked + 10, BOOT);
    t.node.restart();
    let mut client = t.node.client().await;
    let events = node::watch_to_end(&mut client, &t.id).await;
    node::assert_terminal(&events, proto::Phase::Failed);
    let error = node::error_of(&events);
    assert_eq!(error.code, tonic::Code::Aborted as i32, "{error:#?}");
    assert!(error.message.contains("rolled back"), "{error:#?}");
    t.assert_all_rolled_back(events.last().expect("terminal"), proto::Phase::Failed);
}
