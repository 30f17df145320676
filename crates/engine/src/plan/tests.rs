//! Planning rules on their own: names, formats, checkpoints, space.

use super::*;

fn pool(kind: &str, capacity: u64, available: u64) -> PoolSpec {
    PoolSpec {
        name: "p".into(),
        uuid: String::new(),
        pool_type: kind.into(),
        state: PoolRunState::Running,
        capacity,
        allocation: capacity - available,
        available,
        provisioned: 0,
        target_path: String::new(),
        source_hosts: vec![],
        source_dir: String::new(),
        source_devices: vec![],
        source_name: String::new(),
        auth: None,
        storage_id: String::new(),
        shared: false,
    }
}

#[test]
fn space_check_counts_data_for_sparse_and_capacity_for_block() {
    let gib = 1 << 30;
    let dir = pool("dir", 10 * gib, gib);
    assert!(check_space(
        &dir,
        Need::new(DiskKind::File, 20 * gib, Some(gib / 2), 0),
        0
    )
    .is_ok());
    // SHALLOW: the layers the pool lacks count on top of the disk's own data.
    assert!(matches!(
        check_space(
            &dir,
            Need::new(DiskKind::File, 20 * gib, Some(gib / 2), gib / 2),
            0
        ),
        Err(Error::Exhausted(_))
    ));
    assert!(matches!(
        check_space(
            &pool("disk", 10 * gib, gib),
            Need::new(DiskKind::Block, 2 * gib, Some(1), 0),
            0
        ),
        Err(Error::Exhausted(_))
    ));
    let rbd = pool("rbd", 0, 0);
    assert!(check_space(&rbd, Need::new(DiskKind::Network, gib, None, 0), 0).is_ok());
}

#[test]
fn checkpoints_on_the_disk_need_a_qcow2_destination() {
    let disk = DiskSpec {
        target: "vda".into(),
        device: "disk".into(),
        format: Some("qcow2".into()),
        source: None,
        backing_depth: 0,
        backing: Vec::new(),
        read_only: false,
        shareable: false,
        mirror: None,
    };
    let cp = |target: &str| Checkpoint {
        name: "nightly".into(),
        disks: vec![crate::hypervisor::CheckpointDisk {
            target: target.into(),
            bitmap: Some("nightly".into()),
            dirty_bytes: Some(0),
        }],
    };
    let rbd = pool("rbd", 1 << 30, 1 << 30);
    let Err(Error::Precondition(msg)) =
        check_checkpoints("g", &disk, &[cp("vda")], (&rbd, ImageFormat::Raw, false))
    else {
        panic!("rbd holds raw images only");
    };
    assert!(
        msg.contains("pool 'p' (rbd) holds raw volumes only"),
        "{msg}"
    );
    assert!(
        msg.contains("virsh checkpoint-delete g nightly --metadata"),
        "{msg}"
    );
    let dir = pool("dir", 1 << 30, 1 << 30);
    assert!(check_checkpoints("g", &disk, &[cp("vda")], (&dir, ImageFormat::Qcow2, false)).is_ok());
    assert!(check_checkpoints("g", &disk, &[cp("vdb")], (&rbd, ImageFormat::Raw, false)).is_ok());
    let Err(Error::Precondition(msg)) =
        check_checkpoints("g", &disk, &[cp("vda")], (&dir, ImageFormat::Raw, false))
    else {
        panic!("a raw source would make a raw destination");
    };
    assert!(
        msg.contains("the source is raw and the request names no format"),
        "{msg}"
    );
    // Broken on another disk of the same checkpoint: validation would fail later.
    let mut both = cp("vda");
    both.disks.push(crate::hypervisor::CheckpointDisk {
        target: "vdb".into(),
        bitmap: Some("nightly".into()),
        dirty_bytes: None,
    });
    let Err(Error::Precondition(msg)) =
        check_checkpoints("g", &disk, &[both], (&dir, ImageFormat::Qcow2, true))
    else {
        panic!("a broken bitmap of the same checkpoint fails its validation");
    };
    assert!(msg.contains("nightly (disk vdb)"), "{msg}");
    assert!(
        msg.contains("checkpoint-delete g nightly --metadata"),
        "{msg}"
    );
}

#[test]
fn partitions_are_numbered_after_the_last() {
    assert_eq!(next_partition_name("/dev/loop3", &[]), "loop3p1");
    assert_eq!(
        next_partition_name("/dev/sdb", &["sdb1".into(), "sdb2".into()]),
        "sdb3"
    );
    assert_eq!(
        next_partition_name("/dev/loop3", &["loop3p2".into(), "other".into()]),
        "loop3p3"
    );
}

#[test]
fn volume_names_default_to_the_source() {
    let f = DiskSource::File {
        path: "/a/b/root.qcow2".into(),
    };
    assert_eq!(default_volume_name(&f, None), "root.qcow2");
    assert_eq!(default_volume_name(&f, Some("v1")), "v1");
}
