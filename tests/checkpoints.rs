//! End-to-end: a disk tracked by a libvirt checkpoint (incremental-backup
//! metadata + a persistent qcow2 dirty bitmap) keeps it through a live
//! migration, and a destination that cannot hold it is refused first.
//!
//! One writing guest (vda qcow2, 64 MiB, the top 16 MiB pre-written before
//! its first boot, records growing from the start of the disk) serves every
//! check: the refusal changes nothing, so the same guest then migrates. After
//! the migration an incremental backup from the checkpoint must hold exactly
//! the clusters the guest's records reached since the checkpoint: every record
//! acked between the checkpoint and the backup, nothing of the clusters filled
//! before it and nothing of the pre-written top. Last, a copy onto raw made
//! with plain `virsh blockcopy` shows what libvirt does alone (the checkpoint
//! loses its bitmap without a word), and volmig then refuses to carry it.
//! A controller beside the node shows that placement sees the checkpoint too.

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::controller::{wait_nodes_up, ControllerProcess};
use harness::node::{self, NodeProcess};
use harness::{DirPool, Guest, Pool};
use tonic::Code;
use volmig::proto;

const BOOT: Duration = Duration::from_secs(120);
/// qcow2's default cluster, which is also the bitmap's granularity.
const CLUSTER: u64 = 64 << 10;
const RECORD: u64 = 512;
const CHECKPOINT: &str = "nightly";
const DISK: u64 = 64 << 20;
/// Pattern written at the top of vda before the first boot, long before the checkpoint.
const PREWRITTEN: u64 = 16 << 20;

/// `[start, end)` of the extents `qemu-img map` shows as data held by the
/// image itself (depth 0), not by its backing file.
fn own_data_extents(image: &Path) -> Vec<(u64, u64)> {
    let out = harness::run_ok(
        "qemu-img",
        &["map", "-U", "--output=json", &image.to_string_lossy()],
    );
    let extents: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("qemu-img map: {e}\n{out}"));
    extents
        .iter()
        .filter(|e| e["depth"] == 0 && e["data"] == true)
        .map(|e| {
            let start = e["start"].as_u64().expect("start");
            (start, start + e["length"].as_u64().expect("length"))
        })
        .collect()
}

/// Runs a push-mode incremental backup of vda since `checkpoint` into `target`
/// (qcow2) and waits for it to end; returns the completed job's description.
fn incremental_backup(guest: &Guest, checkpoint: &str, target: &Path) -> String {
    let xml = guest.dir().join("backup.xml");
    std::fs::write(
        &xml,
        format!(
            "<domainbackup mode='push'><incremental>{checkpoint}</incremental><disks>\
             <disk name='vda' backup='yes' type='file'><target file='{}'/><driver type='qcow2'/></disk>\
             </disks></domainbackup>",
            target.display()
        ),
    )
    .expect("backup xml");
    harness::virsh_ok(&["backup-begin", guest.name(), &xml.to_string_lossy()]);
    harness::wait_until(Duration::from_secs(60), "the backup job to end", || {
        !harness::virsh_ok(&["domjobinfo", guest.name()]).contains("Backup")
    });
    harness::virsh_ok(&["domjobinfo", guest.name(), "--completed"])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_survives_migration_and_the_next_incremental_backup_holds_only_new_writes() {
    let src = DirPool::new("ck-src");
    let dst = DirPool::new("ck-dst");
    // Checkpoints need qcow2 version 3 (what `qemu-img create` makes).
    let guest = Guest::builder("ck", &src)
        .format("qcow2")
        .qcow2_v3()
        .disk_bytes(DISK)
        .prewritten(PREWRITTEN)
        .pause_ms(20)
        .start();
    let ctl = ControllerProcess::start("ck-ctl", "heartbeat_interval_seconds = 1\n");
    let node = NodeProcess::start("ck", &["--controller", &ctl.endpoint()]);
    wait_nodes_up(&ctl, &[node.node_id()]).await;
    let mut client = node.client().await;

    // Enough records before the checkpoint to fill whole clusters with them only.
    let before_checkpoint = guest.wait_writing(CLUSTER / RECORD + 8, BOOT);
    harness::virsh_ok(&["checkpoint-create-as", guest.name(), CHECKPOINT]);
    let at_checkpoint = guest.last_ack();
    let listed = client
        .list_disks(proto::ListDisksRequest {
            domain: guest.name().to_string(),
        })
        .await
        .expect("ListDisks")
        .into_inner();
    let vda = listed
        .disks
        .iter()
        .find(|d| d.target == "vda")
        .expect("vda");
    assert_eq!(
        vda.checkpoints,
        vec![CHECKPOINT],
        "ListDisks names the checkpoint"
    );
    // The controller's placement knows it too: raw would lose it.
    let mut raw_plan = node::request(guest.name(), "vda", "");
    raw_plan.destination_format = proto::VolumeFormat::Raw as i32;
    let plan = ctl
        .client()
        .await
        .plan_migration(raw_plan)
        .await
        .expect("PlanMigration")
        .into_inner();
    let dst_verdict = plan
        .candidates
        .iter()
        .find(|c| c.pool == dst.name())
        .unwrap_or_else(|| panic!("{} not considered: {plan:#?}", dst.name()));
    assert_eq!(dst_verdict.rejected_by, "incompatible_format", "{plan:#?}");
    assert!(
        dst_verdict.reason.contains("checkpoint(s) nightly"),
        "{}",
        dst_verdict.reason
    );

    // A raw destination cannot hold the bitmap: refused, and nothing is made.
    let mut raw = node::request(guest.name(), "vda", dst.name());
    raw.destination_format = proto::VolumeFormat::Raw as i32;
    let status = node::migrate(&mut client, raw)
        .await
        .expect_err("a raw destination would lose the checkpoint's bitmap");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    for needle in [
        "checkpoint(s) nightly",
        "only qcow2 can hold persistent bitmaps",
    ] {
        assert!(status.message().contains(needle), "{}", status.message());
    }
    assert_eq!(
        harness::pools::volume_names(dst.name()).expect("vol-list"),
        Vec::<String>::new(),
        "no destination volume may be created"
    );
    assert_eq!(node.journal_records(), 0, "no migration may be recorded");

    // FLATTEN (the default) to qcow2 keeps it.
    let started = std::time::Instant::now();
    let events = node::migrate(&mut client, node::request(guest.name(), "vda", dst.name()))
        .await
        .expect("MigrateVolume");
    node::assert_terminal(&events, proto::Phase::Completed);
    let result = node::result_of(&events);
    println!("migration with a checkpoint: {:?}", started.elapsed());
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("checkpoint(s) nightly now describe")),
        "the verify phase names the kept checkpoint"
    );
    let dest = result.destination_source.clone();
    let cp_xml = harness::virsh_ok(&["checkpoint-dumpxml", guest.name(), CHECKPOINT]);
    assert!(
        cp_xml.contains(&format!("file='{dest}'")) && !cp_xml.contains(&result.previous_source),
        "the checkpoint's domain names the destination:\n{cp_xml}"
    );
    let sized = harness::virsh_ok(&[
        "checkpoint-dumpxml",
        guest.name(),
        CHECKPOINT,
        "--size",
        "--no-domain",
    ]);
    assert!(
        sized.contains("size='"),
        "libvirt finds the bitmap:\n{sized}"
    );

    // The guest goes on writing to the destination; then the incremental backup.
    guest.wait_for_ack(guest.last_ack() + 20, BOOT);
    let before_backup = guest.last_ack();
    let backup = guest.dir().join("since-nightly.qcow2");
    let job = incremental_backup(&guest, CHECKPOINT, &backup);
    let after_backup = guest.last_ack();
    assert!(job.contains("Completed"), "{job}");
    let extents = own_data_extents(&backup);
    println!("backup since {CHECKPOINT}: {extents:?} (acks {before_checkpoint}/{at_checkpoint} at the checkpoint, {before_backup}..{after_backup} around the backup)");
    let held = |a: u64, b: u64| extents.iter().any(|&(s, e)| s <= a && b <= e);
    // Every record acked after the checkpoint and before the backup (the one
    // in flight at the checkpoint may have been written just before it).
    let first_new = (at_checkpoint + 2) * RECORD;
    let last_new = (before_backup + 1) * RECORD;
    let mut at = first_new;
    while at < last_new {
        assert!(
            held(at, at + RECORD),
            "record at byte {at} is missing from {extents:?}"
        );
        at += RECORD;
    }
    // Nothing from clusters the guest had filled before the checkpoint, nothing
    // of the pre-written top, nothing beyond what was written by the backup.
    let old_end = before_checkpoint * RECORD / CLUSTER * CLUSTER;
    let new_end = ((after_backup + 2) * RECORD).div_ceil(CLUSTER) * CLUSTER;
    for &(s, e) in &extents {
        assert!(
            s >= old_end && e <= new_end && e <= DISK - PREWRITTEN,
            "extent {s}..{e} was not written since the checkpoint (allowed {old_end}..{new_end})"
        );
    }

    // A cold restart: the bitmap was stored in the destination image, the
    // checkpoint is still valid, and no record is lost.
    guest.destroy();
    let info = harness::run_ok("qemu-img", &["info", "--output=json", &dest]);
    let info: serde_json::Value = serde_json::from_str(&info).expect("qemu-img info json");
    let bitmaps = &info["format-specific"]["data"]["bitmaps"];
    assert!(
        bitmaps
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["name"] == CHECKPOINT
                && b["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().all(|f| f != "in-use")))),
        "the destination holds the stored bitmap: {bitmaps}"
    );
    guest.boot();
    guest.wait_writing(10, BOOT);
    guest.verify_data();
    let again = guest.dir().join("since-nightly-again.qcow2");
    assert!(incremental_backup(&guest, CHECKPOINT, &again).contains("Completed"));

    // What libvirt does alone: a copy onto raw pivots and silently leaves the
    // checkpoint without its bitmap. volmig then refuses to carry it, before
    // creating anything.
    let raw_copy = guest.dir().join("behind-volmigs-back.raw");
    std::fs::File::create(&raw_copy)
        .and_then(|f| f.set_len(DISK))
        .expect("raw file");
    harness::virsh_ok(&[
        "blockcopy",
        guest.name(),
        "vda",
        &raw_copy.to_string_lossy(),
        "--format",
        "raw",
        "--reuse-external",
        "--transient-job",
        "--wait",
        "--pivot",
    ]);
    let src_volumes = harness::pools::volume_names(src.name()).expect("vol-list");
    let mut back = node::request(guest.name(), "vda", src.name());
    back.destination_format = proto::VolumeFormat::Qcow2 as i32;
    let status = node::migrate(&mut client, back)
        .await
        .expect_err("the checkpoint has no bitmap left to carry");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("nightly (disk vda)")
            && status.message().contains("no valid bitmap"),
        "{}",
        status.message()
    );
    assert_eq!(
        harness::pools::volume_names(src.name()).expect("vol-list"),
        src_volumes,
        "no destination volume may be created"
    );
    assert_eq!(
        node.journal_records(),
        1,
        "only the completed migration is recorded"
    );
}
