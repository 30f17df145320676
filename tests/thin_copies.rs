//! End-to-end: a thin disk stays thin on its destination, for three data
//! layouts, on a dir pool and on the real Ceph; and the allocations volmig
//! reports in the result are the ones the storage shows.
//!
//! The layouts live on `vdb`, a qcow2 data disk the guest never writes, so the
//! source's allocation is stable while it is measured and copied:
//! A: 64 MiB at 66 MiB (off a 16 MiB boundary), B: 1 MiB at 8 MiB and 1 MiB at
//! 100 MiB, C: 64 KiB at 1 MiB, 1 MiB at 100 MiB and 64 KiB at 200 MiB.
//! RBD stores whole objects, so its floor is the objects the data touches; a
//! dir pool keeps files sparse to the block. A disk pool's partition is thick
//! to libvirt, but what QEMU writes to it shows on thin storage under the
//! device (here the sparse file behind a loop device, as on thin LVM or a thin
//! LUN): zeros must not be written there either.

mod harness;

use std::time::Duration;

use harness::node::{self, NodeProcess};
use harness::{DirPool, DiskPool, Guest, Pool, RbdPool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
const BOOT: Duration = Duration::from_secs(120);
const DISK: u64 = 256 * MIB;

const LAYOUTS: [(&str, &[(u64, u64)]); 3] = [
    ("a", &[(66 * MIB, 64 * MIB)]),
    ("b", &[(8 * MIB, MIB), (100 * MIB, MIB)]),
    (
        "c",
        &[(MIB, 64 * KIB), (100 * MIB, MIB), (200 * MIB, 64 * KIB)],
    ),
];

/// A guest whose vdb (qcow2, 256 MiB) holds `extents` of non-zero data.
fn guest_with_layout(purpose: &str, pool: &DirPool, extents: &[(u64, u64)]) -> Guest {
    let guest = Guest::builder(purpose, pool)
        .format("qcow2")
        .data_disk(DISK, "qcow2")
        .pause_ms(50)
        .start();
    guest.wait_writing(3, BOOT);
    guest.destroy();
    let path = pool.volume_path(guest.data_volume().expect("vdb"));
    for (i, (offset, len)) in extents.iter().enumerate() {
        harness::run_ok(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {} {offset} {len}", 0x31 + i),
                &path,
            ],
        );
    }
    guest.boot();
    guest.wait_writing(3, BOOT);
    guest
}

async fn migrate_vdb(node: &NodeProcess, guest: &Guest, dst: &dyn Pool) -> proto::MigrationResult {
    let mut client = node.client().await;
    let mut req = node::request(guest.name(), "vdb", dst.name());
    req.destination_volume = dst.new_volume_name("thin");
    let events = node::migrate(&mut client, req).await.expect("migrate");
    node::assert_terminal(&events, proto::Phase::Completed);
    node::result_of(&events)
}

/// After a cold restart from the persistent definition, vdb holds exactly the
/// source's bytes (the source was kept).
fn assert_same_data(guest: &Guest, source_path: &str, dest_format: &str, dest_spec: &str) {
    guest.cold_restart();
    guest.wait_writing(guest.last_ack() + 3, BOOT);
    harness::run_ok(
        "qemu-img",
        &[
            "compare",
            "-U",
            "-f",
            "qcow2",
            "-F",
            dest_format,
            source_path,
            dest_spec,
        ],
    );
}

fn blocks_of(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").blocks() * 512
}

#[tokio::test(flavor = "multi_thread")]
async fn dir_destinations_stay_as_thin_as_the_source_for_three_layouts() {
    let src = DirPool::new("thin-d-src");
    let dst = DirPool::new("thin-d-dst");
    let node = NodeProcess::start("thin-d", &[]);
    for (name, extents) in LAYOUTS {
        let guest = guest_with_layout(&format!("thin-d-{name}"), &src, extents);
        let source_path = guest.live_disk_source("vdb").path;
        let result = migrate_vdb(&node, &guest, &dst).await;
        // After the copy: QEMU touches a qcow2 header block when it opens the image.
        let source_blocks = blocks_of(&source_path);
        assert_eq!(
            result.source_allocated_bytes, source_blocks,
            "layout {name}"
        );
        // Reported as the file system shows it.
        assert_eq!(
            result.destination_allocated_bytes,
            blocks_of(&result.destination_source),
            "layout {name}"
        );
        let ratio = result.destination_allocated_bytes as f64 / source_blocks as f64;
        eprintln!(
            "layout {name}: dir {} of {source_blocks} bytes ({ratio:.3}×)",
            result.destination_allocated_bytes
        );
        assert!(ratio <= 1.05, "layout {name}: {ratio:.3}× the source");
        assert_same_data(&guest, &source_path, "qcow2", &result.destination_source);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rbd_destinations_use_only_the_objects_that_hold_data() {
    let src = DirPool::new("thin-r-src");
    let rbd = RbdPool::new("thin-r");
    let node = NodeProcess::start("thin-r", &[]);
    for (name, extents) in LAYOUTS {
        let guest = guest_with_layout(&format!("thin-r-{name}"), &src, extents);
        let source_path = guest.live_disk_source("vdb").path;
        let result = migrate_vdb(&node, &guest, &rbd).await;
        let image = result.destination_source.clone();
        let info: serde_json::Value = serde_json::from_str(
            &rbd.env()
                .rbd(&["info", "--format", "json", &image])
                .expect("rbd info"),
        )
        .expect("rbd info json");
        let object = info["object_size"].as_u64().expect("object_size");
        let mut touched: Vec<u64> = extents
            .iter()
            .flat_map(|(offset, len)| (offset / object)..=((offset + len - 1) / object))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let floor = touched.len() as u64 * object;
        let du: serde_json::Value = serde_json::from_str(
            &rbd.env()
                .rbd(&["du", "--format", "json", &image])
                .expect("rbd du"),
        )
        .expect("rbd du json");
        let used = du["images"][0]["used_size"].as_u64().expect("used_size");
        eprintln!(
            "layout {name}: rbd {used} bytes, floor {floor} ({} objects of {object}), reported {}",
            touched.len(),
            result.destination_allocated_bytes
        );
        assert_eq!(result.destination_allocated_bytes, used, "layout {name}");
        assert!(
            used as f64 <= 1.05 * floor as f64,
            "layout {name}: {used} bytes on RBD, the data needs {floor}"
        );
        assert_same_data(
            &guest,
            &source_path,
            "raw",
            &rbd.env().qemu_img_spec(&image),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_pool_partitions_are_written_only_where_the_source_holds_data() {
    let src = DirPool::new("thin-b-src");
    // Room for three partitions of 256 MiB and the label.
    let disk = DiskPool::new("thin-b", 800 * MIB);
    let node = NodeProcess::start("thin-b", &[]);
    let backing = disk.image().to_string_lossy().into_owned();
    for (name, extents) in LAYOUTS {
        let guest = guest_with_layout(&format!("thin-b-{name}"), &src, extents);
        let source_path = guest.live_disk_source("vdb").path;
        harness::run_ok("sync", &[&backing]);
        let before = blocks_of(&backing);
        let result = migrate_vdb(&node, &guest, &disk).await;
        harness::run_ok("sync", &[&backing]);
        let written = blocks_of(&backing) - before;
        let source_blocks = blocks_of(&source_path);
        // libvirt counts a partition as fully allocated, and so does volmig.
        let partition = harness::run_ok("blockdev", &["--getsize64", &result.destination_source]);
        assert_eq!(
            result.destination_allocated_bytes.to_string(),
            partition.trim(),
            "layout {name}"
        );
        let ratio = written as f64 / source_blocks as f64;
        eprintln!(
            "layout {name}: disk pool wrote {written} bytes under the partition for {source_blocks} of source ({ratio:.3}×)"
        );
        assert!(ratio <= 1.05, "layout {name}: {ratio:.3}× the source");
        assert_same_data(&guest, &source_path, "raw", &result.destination_source);
    }
}
