//! Integration tests of the libvirt boundary (`volmig::libvirt::LibvirtHost`)
//! against the real libvirtd, a real guest and real pools.

mod harness;

use std::time::Duration;

use harness::{DirPool, Guest, Pool};
use volmig::hypervisor::{
    CopyOptions, Definition, Deletion, DiskSource, HvError, Hypervisor, ImageFormat, NewVolume,
    PoolRunState, VolumeUser,
};
use volmig::libvirt::LibvirtHost;

const MIB: u64 = 1 << 20;

#[test]
fn reads_host_domains_disks_and_pools() {
    let pool = DirPool::new("lv-read");
    let guest = Guest::start("lv-read", &pool, "qcow2", 64 * MIB);
    let host = LibvirtHost::new(volmig::libvirt::DEFAULT_URI);

    let info = host.host_info().expect("host info");
    assert!(info.libvirt_version.starts_with("9."), "{info:?}");

    let by_name = host.domain(guest.name()).expect("by name");
    assert!(by_name.active && by_name.persistent);
    assert_eq!(by_name.snapshots, 0);
    let by_uuid = host.domain(&by_name.uuid).expect("by uuid");
    assert_eq!(by_uuid.name, guest.name());
    assert_eq!(
        host.domain("volmig-no-such-domain"),
        Err(HvError::NoDomain("volmig-no-such-domain".into()))
    );

    let disks = host.disks(guest.name(), Definition::Live).expect("disks");
    let vda = disks.iter().find(|d| d.target == "vda").expect("vda");
    let path = pool.volume_path(guest.disk_volume());
    assert_eq!(vda.source, Some(DiskSource::File { path: path.clone() }));
    assert_eq!(vda.format.as_deref(), Some("qcow2"));
    assert!(host
        .domain_xml(guest.name(), Definition::Persistent)
        .expect("xml")
        .contains(&path));
    assert_eq!(
        host.disk_capacity(guest.name(), "vda").expect("capacity"),
        64 * MIB
    );

    let pools = host.pools().expect("pools");
    let mine = pools.iter().find(|p| p.name == pool.name()).expect("pool");
    assert_eq!(mine.pool_type, "dir");
    assert_eq!(mine.state, PoolRunState::Running);
    assert_eq!(mine.target_path, pool.path().to_string_lossy());
    assert!(matches!(
        host.pool("volmig-no-such-pool"),
        Err(HvError::NoPool(_))
    ));

    let vol = host
        .volume_by_path(&path)
        .expect("lookup")
        .expect("known volume");
    assert_eq!(vol.pool, pool.name());
    assert_eq!(vol.capacity, 64 * MIB);
    assert_eq!(
        host.volume_by_path("/nonexistent/disk.img")
            .expect("lookup"),
        None
    );

    // qemu-img reads the running guest's image (sharing its lock), and a
    // failure to read one is worded as qemu-img's, not libvirt's.
    let image = host.image_info(&path).expect("qemu-img info -U");
    assert_eq!(image.format, "qcow2");
    assert_eq!(image.virtual_size, 64 * MIB);
    let missing = pool.path().join("volmig-no-such-image.qcow2");
    let missing = missing.to_string_lossy();
    let err = host.image_info(&missing).expect_err("no such image");
    assert!(matches!(err, HvError::InvalidState(_)), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "qemu-img info on {missing} failed (exit status 1): "
        )),
        "{err}"
    );
    assert!(!err.to_string().contains("libvirt"), "{err}");
}

#[test]
fn deletes_a_volume_only_while_it_is_the_one_created() {
    let pool = DirPool::new("lv-own");
    let host = LibvirtHost::new(volmig::libvirt::DEFAULT_URI);
    let new = NewVolume {
        name: "owned.raw".into(),
        capacity: MIB,
        format: ImageFormat::Raw,
        backing: None,
    };
    let first = host.create_volume(pool.name(), &new).expect("create");
    let identity = first.identity();
    assert!(identity.file_id.is_some(), "{identity:?}");
    // Someone deletes it and makes another volume under the same name.
    harness::virsh_ok(&["vol-delete", "owned.raw", "--pool", pool.name()]);
    let second = host.create_volume(pool.name(), &new).expect("re-create");
    assert_eq!(second.path, first.path);
    assert!(matches!(
        host.delete_volume_if_same(&identity),
        Ok(Deletion::Replaced(_))
    ));
    assert!(std::path::Path::new(&second.path).exists());
    assert_eq!(
        host.delete_volume_if_same(&second.identity()),
        Ok(Deletion::Deleted)
    );
    assert_eq!(
        host.delete_volume_if_same(&second.identity()),
        Ok(Deletion::Gone)
    );
}

#[test]
fn finds_every_user_of_a_volume() {
    let pool = DirPool::new("lv-users");
    let guest = Guest::start("lv-users", &pool, "qcow2", 16 * MIB);
    let host = LibvirtHost::new(volmig::libvirt::DEFAULT_URI);
    let path = pool.volume_path(guest.disk_volume());
    let users = host.volume_users(&path).expect("users");
    assert!(
        users.iter().any(
            |u| matches!(u, VolumeUser::Domain { domain, live: true, .. } if domain == guest.name())
        ),
        "{users:?}"
    );
    let overlay = pool.path().join("overlay.qcow2");
    harness::run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &path,
            "-F",
            "qcow2",
            &overlay.to_string_lossy(),
        ],
    );
    let users = host.volume_users(&path).expect("users");
    assert!(
        users
            .iter()
            .any(|u| matches!(u, VolumeUser::Backing { volume, .. } if volume == "overlay.qcow2")),
        "{users:?}"
    );
    let other = pool.path().join("unused.raw");
    std::fs::write(&other, b"x").expect("write");
    assert_eq!(
        host.volume_users(&other.to_string_lossy()).expect("users"),
        vec![]
    );
}

#[test]
fn creates_and_deletes_volumes_without_preallocation() {
    let pool = DirPool::new("lv-vol");
    let host = LibvirtHost::new(volmig::libvirt::DEFAULT_URI);
    let vol = host
        .create_volume(
            pool.name(),
            &NewVolume {
                name: "exact.qcow2".into(),
                capacity: 67_108_864 + 512,
                format: ImageFormat::Qcow2,
                backing: None,
            },
        )
        .expect("create");
    // libvirt hands qemu-img the size in KiB: a qcow2 grows to the next KiB, which is
    // why the engine refuses (or slices) a destination that is not exactly the source's size.
    assert_eq!(vol.capacity, 67_108_864 + 1024);
    assert_eq!(vol.format.as_deref(), Some("qcow2"));
    assert!(vol.allocation < MIB, "not preallocated: {vol:?}");
    assert!(matches!(
        host.create_volume(
            pool.name(),
            &NewVolume {
                name: "exact.qcow2".into(),
                capacity: MIB,
                format: ImageFormat::Raw,
                backing: None,
            },
        ),
        Err(HvError::VolumeExists(_)) | Err(HvError::Failed { .. })
    ));
    assert_eq!(
        host.delete_volume_if_same(&vol.identity()),
        Ok(Deletion::Deleted)
    );
}

#[test]
fn block_job_calls_copy_throttle_and_abort_without_pivot() {
    let src = DirPool::new("lv-job-src");
    let dst = DirPool::new("lv-job-dst");
    let guest = Guest::builder("lv-job", &src)
        .format("qcow2")
        .data_disk(32 * MIB, "raw")
        .start();
    guest.wait_writing(5, Duration::from_secs(120));
    guest.destroy();
    let data = src.volume_path(guest.data_volume().expect("vdb"));
    harness::run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 0 32M", &data],
    );
    guest.boot();
    guest.wait_writing(5, Duration::from_secs(120));

    let host = LibvirtHost::new(volmig::libvirt::DEFAULT_URI);
    assert_eq!(host.block_job(guest.name(), "vdb").expect("no job"), None);
    let dest = host
        .create_volume(
            dst.name(),
            &NewVolume {
                name: "copy.raw".into(),
                capacity: 32 * MIB,
                format: ImageFormat::Raw,
                backing: None,
            },
        )
        .expect("create");
    let dest_source = DiskSource::File { path: dest.path };
    host.block_copy(
        guest.name(),
        "vdb",
        &dest_source,
        ImageFormat::Raw,
        &[],
        CopyOptions {
            bandwidth: 2 * MIB,
            ..Default::default()
        },
    )
    .expect("block copy");
    let job = host
        .block_job(guest.name(), "vdb")
        .expect("info")
        .expect("a job");
    assert!(job.is_copy);
    assert_eq!(job.bandwidth, 2 * MIB);
    host.block_job_set_speed(guest.name(), "vdb", 4 * MIB)
        .expect("speed");
    let job = host
        .block_job(guest.name(), "vdb")
        .expect("info")
        .expect("a job");
    assert_eq!(job.bandwidth, 4 * MIB);
    let live = host.disks(guest.name(), Definition::Live).expect("disks");
    let mirror = live
        .iter()
        .find(|d| d.target == "vdb")
        .and_then(|d| d.mirror.clone())
        .expect("mirror shown in live XML");
    assert_eq!(mirror.source, Some(dest_source));
    assert!(matches!(
        host.block_copy(
            guest.name(),
            "vdb",
            &DiskSource::File { path: "/x".into() },
            ImageFormat::Raw,
            &[],
            CopyOptions::default()
        ),
        Err(HvError::InvalidState(_))
    ));
    host.block_job_abort(guest.name(), "vdb", false)
        .expect("abort");
    harness::wait_until(Duration::from_secs(10), "the job to end", || {
        host.block_job(guest.name(), "vdb").ok() == Some(None)
    });
    assert_eq!(guest.live_disk_source("vdb").path, data);
    let again = host.block_job_abort(guest.name(), "vdb", false);
    // libvirt reports "does not have an active block job" as an invalid argument.
    assert!(
        matches!(again, Err(HvError::InvalidArgument(_))),
        "{again:?}"
    );
}

#[test]
fn lists_a_pool_s_volumes_up_to_one_past_the_bound_and_refuses_a_stopped_pool() {
    let pool = DirPool::new("lv-listing");
    for i in 0..3 {
        pool.create_volume(
            &pool.new_volume_name(&format!("lv-listing-{i}")),
            MIB,
            "raw",
        );
    }
    let host = LibvirtHost::new(volmig::libvirt::DEFAULT_URI);
    let all = host.pool_volumes(pool.name(), 10).expect("listing");
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all
        .iter()
        .all(|v| v.pool == pool.name() && v.capacity == MIB));
    // Details of at most limit + 1: enough to see that there are more.
    assert_eq!(host.pool_volumes(pool.name(), 1).expect("bounded").len(), 2);
    assert_eq!(
        host.pool_volumes("volmig-no-such-pool", 10),
        Err(HvError::NoPool("volmig-no-such-pool".into()))
    );
    harness::virsh_ok(&["pool-destroy", pool.name()]);
    assert_eq!(
        host.pool_volumes(pool.name(), 10),
        Err(HvError::PoolInactive(pool.name().into()))
    );
}
