//! ListPoolVolumes' scan: which disks of which domains use each volume of a pool.

use std::sync::Arc;

use super::engine;
use crate::engine::{PoolVolume, VolumeUse, MAX_POOL_VOLUMES};
use crate::error::Error;
use crate::fake::FakeHypervisor;
use crate::hypervisor::{BackingLayer, DiskSource, DiskSpec, DomainDisksSpec, PoolRunState};
use crate::model::ErrorCode;

fn file(path: &str) -> DiskSource {
    DiskSource::File { path: path.into() }
}

fn disk(target: &str, source: &str) -> DiskSpec {
    DiskSpec {
        target: target.into(),
        device: "disk".into(),
        format: Some("qcow2".into()),
        source: Some(file(source)),
        backing_depth: 0,
        backing: Vec::new(),
        read_only: false,
        shareable: false,
        mirror: None,
    }
}

fn user(domain: &str, running: bool, disk: &str, backing: bool) -> VolumeUse {
    VolumeUse {
        domain: domain.into(),
        running,
        disk: disk.into(),
        backing,
    }
}

fn named<'a>(volumes: &'a [PoolVolume], name: &str) -> &'a PoolVolume {
    volumes
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name} in {volumes:?}"))
}

/// Pool `a`: `root.qcow2` (vda of the running `g`, over `base.qcow2`),
/// `data.qcow2` (vdb of the defined-only `off`) and `spare.qcow2` (no one).
fn host() -> Arc<FakeHypervisor> {
    let hv = Arc::new(FakeHypervisor::new());
    hv.add_volume("a", "base.qcow2", 1 << 20);
    hv.add_volume("a", "data.qcow2", 2 << 20);
    hv.add_volume("a", "spare.qcow2", 0);
    let mut st = hv.lock();
    st.backing.insert(
        "vda".into(),
        vec![BackingLayer {
            source: file("/p/a/base.qcow2"),
            format: Some("qcow2".into()),
        }],
    );
    st.other_domains.push(DomainDisksSpec {
        name: "off".into(),
        uuid: "u-off".into(),
        running: false,
        disks: vec![
            disk("vdb", "/p/a/data.qcow2"),
            disk("vdc", "/elsewhere/x.raw"),
        ],
    });
    drop(st);
    hv
}

#[tokio::test]
async fn the_scan_reports_running_defined_backing_and_unattached_volumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(host(), dir.path()).await;
    let volumes = e.pool_volumes("a").await.expect("listing");
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    // Pool b's volume is not listed; the order is by name.
    assert_eq!(
        names,
        ["base.qcow2", "data.qcow2", "root.qcow2", "spare.qcow2"]
    );
    let root = named(&volumes, "root.qcow2");
    assert_eq!(root.source, "/p/a/root.qcow2");
    assert_eq!(root.format, Some(crate::hypervisor::ImageFormat::Qcow2));
    assert_eq!(root.users, [user("g", true, "vda", false)]);
    assert_eq!(
        named(&volumes, "base.qcow2").users,
        [user("g", true, "vda", true)]
    );
    assert_eq!(
        named(&volumes, "data.qcow2").users,
        [user("off", false, "vdb", false)]
    );
    assert_eq!(named(&volumes, "data.qcow2").allocation, 2 << 20);
    assert!(named(&volumes, "spare.qcow2").users.is_empty());
}

#[tokio::test]
async fn a_stopped_domain_is_read_from_its_persistent_definition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = host();
    {
        let mut st = hv.lock();
        st.running = false;
        // Only the persistent definition names data.qcow2: a stopped
        // domain's live definition is not what it will boot with.
        st.live.insert("vdb".into(), file("/p/a/spare.qcow2"));
        st.persistent.insert("vdb".into(), file("/p/a/data.qcow2"));
    }
    let e = engine(hv, dir.path()).await;
    let volumes = e.pool_volumes("a").await.expect("listing");
    assert_eq!(
        named(&volumes, "root.qcow2").users,
        [user("g", false, "vda", false)]
    );
    assert_eq!(
        named(&volumes, "data.qcow2").users,
        [
            user("g", false, "vdb", false),
            user("off", false, "vdb", false)
        ]
    );
    assert!(named(&volumes, "spare.qcow2").users.is_empty());
    // The persistent definition lists no chain here, so the base shows no user.
    assert!(named(&volumes, "base.qcow2").users.is_empty());
}

#[tokio::test]
async fn unknown_inactive_and_malformed_pools_are_refused_with_their_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = host();
    hv.lock().pools[1].state = PoolRunState::Inactive;
    let e = engine(hv, dir.path()).await;
    let err = e.pool_volumes("nope").await.expect_err("unknown");
    assert_eq!(err, Error::PoolNotFound("nope".into()));
    assert_eq!(err.code(), ErrorCode::NotFound);
    let err = e.pool_volumes("b").await.expect_err("inactive");
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);
    assert!(
        err.to_string().contains("'b' is not active")
            && err.to_string().contains("virsh pool-start b"),
        "{err}"
    );
    let err = e.pool_volumes("a\u{0}b").await.expect_err("malformed");
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn a_pool_with_more_volumes_than_the_bound_is_refused_not_cut_short() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    for i in 0..MAX_POOL_VOLUMES {
        hv.add_volume("b", &format!("v{i}"), 0);
    }
    let e = engine(hv.clone(), dir.path()).await;
    // b holds other.qcow2 and these: one over the bound.
    let err = e.pool_volumes("b").await.expect_err("over the bound");
    assert_eq!(err.code(), ErrorCode::ResourceExhausted);
    assert!(err.to_string().contains("more than 10000 volumes"), "{err}");
    hv.lock()
        .volumes
        .remove(&("b".to_string(), "v0".to_string()));
    assert_eq!(
        e.pool_volumes("b").await.expect("at the bound").len(),
        MAX_POOL_VOLUMES
    );
}

#[tokio::test]
async fn one_scan_is_two_host_calls_whatever_the_pool_holds() {
    use crate::fake::{Fault, Injector};
    let dir = tempfile::tempdir().expect("tempdir");
    let injector = Injector::at(usize::MAX, Fault::Fail);
    let hv = Arc::new(FakeHypervisor::with_injector(injector.clone()));
    for i in 0..50 {
        hv.add_volume("a", &format!("v{i}"), 0);
    }
    let e = engine(hv, dir.path()).await;
    let before = injector.steps();
    let volumes = e.pool_volumes("a").await.expect("listing");
    assert_eq!(volumes.len(), 51);
    // One pool listing and one domain listing: not one call per volume.
    assert_eq!(injector.steps() - before, 2);
}

#[tokio::test]
async fn libvirtd_unreachable_is_unavailable() {
    use crate::fake::{Fault, Injector};
    let dir = tempfile::tempdir().expect("tempdir");
    // The engine's start makes no host call here, so the first is the scan's.
    let hv = Arc::new(FakeHypervisor::with_injector(Injector::at(
        0,
        Fault::Unreachable,
    )));
    let e = engine(hv, dir.path()).await;
    let err = e.pool_volumes("a").await.expect_err("libvirtd gone");
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
}
