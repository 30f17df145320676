//! The room check and the reading of the source image, over the in-memory
//! hypervisor: a flattening copy of a chained disk writes the data of every
//! layer, so all of it must fit; a source image that cannot be read is the
//! operator's to fix, named by path, not an internal error. Disks of one
//! request bound for one pool are counted by the same rule, together.

use std::sync::Arc;

use super::fake::{FakeHypervisor, CAPACITY};
use super::journal::Journal;
use super::model::{ChainPolicy, DiskChoice, DiskSelection, ErrorCode, GroupRequest, Options};
use super::tests::{config, request};
use super::{plan, Engine, Error};
use crate::hypervisor::{BackingLayer, DiskSource};

const MIB: u64 = 1 << 20;

async fn engine(hv: Arc<FakeHypervisor>, dir: &std::path::Path) -> Engine {
    Engine::start(hv, Journal::open(dir).expect("journal"), config())
        .await
        .expect("engine")
}

/// `vda` (32 MiB allocated) over a template holding 30 MiB, which pool `b`
/// already holds a copy of; `b` has 60 MiB free: room for the top, not for
/// the flattened chain (62 MiB of data plus the margin).
fn chained_disk_and_a_small_pool() -> Arc<FakeHypervisor> {
    let hv = Arc::new(FakeHypervisor::new());
    let template = hv.add_volume("a", "tmpl.qcow2", 30 * MIB);
    hv.add_volume("b", "tmpl.qcow2", 30 * MIB);
    let mut st = hv.lock();
    assert_eq!(
        st.volumes[&("a".into(), "root.qcow2".into())].allocation,
        32 * MIB
    );
    st.backing.insert(
        "vda".into(),
        vec![BackingLayer {
            source: DiskSource::File {
                path: template.path,
            },
            format: Some("qcow2".into()),
        }],
    );
    let b = st.pools.iter_mut().find(|p| p.name == "b").expect("pool b");
    b.available = 60 * MIB;
    b.allocation = b.capacity - b.available;
    drop(st);
    hv
}

#[tokio::test]
async fn flatten_counts_every_layer_of_the_chain_and_shallow_only_what_it_copies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = chained_disk_and_a_small_pool();
    let engine = engine(hv.clone(), dir.path()).await;

    let err = match engine.migrate(request("flat")).await {
        Err(e) => e,
        Ok(_) => panic!("a flattened chain larger than the pool's free space was accepted"),
    };
    assert_eq!(err.code(), ErrorCode::ResourceExhausted, "{err}");
    let msg = err.to_string();
    let needed = (62 + 16) * MIB;
    assert!(
        msg.contains(&format!("has {} bytes available", 60 * MIB)),
        "{msg}"
    );
    assert!(msg.contains(&format!("needs about {needed}")), "{msg}");
    assert!(msg.contains("its 1 backing layer(s), flattened"), "{msg}");
    assert!(hv.lock().created.is_empty(), "nothing is created");

    // SHALLOW reuses the template the pool holds and copies only the top.
    let mut req = request("shallow");
    req.options.chain = ChainPolicy::Shallow;
    let planned = plan::plan(hv.as_ref(), &req).expect("room for the top image");
    assert_eq!(planned.chain.len(), 1);
    assert!(planned.chain[0].reused.is_some());

    // 32 MiB over 60 MiB of template, yet never more than the 64 MiB disk.
    {
        let mut st = hv.lock();
        st.volumes
            .get_mut(&("a".into(), "tmpl.qcow2".into()))
            .expect("template")
            .allocation = 60 * MIB;
        let b = st.pools.iter_mut().find(|p| p.name == "b").expect("pool b");
        b.available = CAPACITY + 16 * MIB;
    }
    plan::plan(hv.as_ref(), &request("")).expect("the flattened copy fits");
}

#[tokio::test]
async fn a_source_image_that_cannot_be_read_is_a_precondition_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = chained_disk_and_a_small_pool();
    hv.lock()
        .pools
        .iter_mut()
        .for_each(|p| p.available = p.capacity);
    let engine = engine(hv.clone(), dir.path()).await;
    let refused = |err: Result<_, Error>, path: &str| {
        let Err(err) = err else {
            panic!("an unreadable {path} was accepted");
        };
        assert_eq!(err.code(), ErrorCode::FailedPrecondition, "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("cannot read the source image {path}: ")),
            "{msg}"
        );
        assert!(msg.contains("Permission denied"), "{msg}");
    };

    // The top image.
    hv.lock().unreadable = vec!["/p/a/root.qcow2".into()];
    refused(
        engine.migrate(request("")).await.map(drop),
        "/p/a/root.qcow2",
    );

    // A backing layer, read by either chain policy.
    hv.lock().unreadable = vec!["/p/a/tmpl.qcow2".into()];
    refused(
        engine.migrate(request("")).await.map(drop),
        "/p/a/tmpl.qcow2",
    );
    let mut shallow = request("");
    shallow.options.chain = ChainPolicy::Shallow;
    refused(engine.migrate(shallow).await.map(drop), "/p/a/tmpl.qcow2");
    assert!(hv.lock().created.is_empty(), "nothing is created");
}

/// `vda` and `vdb` of guest `g`, each a 4 MiB top over its own 40 MiB base,
/// bound together for pool `b` with `available` bytes free.
fn two_chained_disks(available: u64) -> (Arc<FakeHypervisor>, GroupRequest) {
    let hv = Arc::new(FakeHypervisor::with_disks(&["vdb"]));
    let mut layers = Vec::new();
    for target in ["vda", "vdb"] {
        let base = hv.add_volume("a", &format!("{target}-base.qcow2"), 40 * MIB);
        layers.push((target, base.path));
    }
    let mut st = hv.lock();
    for top in ["root.qcow2", "vdb.qcow2"] {
        st.volumes
            .get_mut(&("a".into(), top.into()))
            .expect("top volume")
            .allocation = 4 * MIB;
    }
    for (target, path) in layers {
        st.backing.insert(
            target.into(),
            vec![BackingLayer {
                source: DiskSource::File { path },
                format: Some("qcow2".into()),
            }],
        );
    }
    let b = st.pools.iter_mut().find(|p| p.name == "b").expect("pool b");
    b.available = available;
    b.allocation = b.capacity - b.available;
    drop(st);
    let choice = |disk: &str| DiskChoice {
        disk: disk.into(),
        destination_pool: None,
        destination_volume: None,
        destination_format: None,
        source_users_elsewhere: Vec::new(),
    };
    let req = GroupRequest {
        request_id: String::new(),
        domain: "g".into(),
        disks: DiskSelection::Listed(vec![choice("vda"), choice("vdb")]),
        destination_pool: "b".into(),
        destination_format: None,
        options: Options::default(),
        max_parallel_copies: 0,
    };
    (hv, req)
}

#[tokio::test]
async fn flattened_chains_bound_for_one_pool_must_fit_it_together() {
    // Each flattened chain is 44 MiB: one fits beside the margin, both need
    // 88 MiB plus the margin; the tops alone (8 MiB) would fit easily.
    let together = (88 + 16) * MIB;
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, req) = two_chained_disks(80 * MIB);
    let short = engine(hv.clone(), dir.path()).await;
    let err = match short.migrate_group(req).await {
        Err(e) => e,
        Ok(_) => panic!("two flattened chains larger than the pool's free space were accepted"),
    };
    assert_eq!(err.code(), ErrorCode::ResourceExhausted, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("has {} bytes available", 80 * MIB)),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("disks vda, vdb need about {together} together")),
        "{msg}"
    );
    assert!(hv.lock().created.is_empty(), "nothing is created");

    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, req) = two_chained_disks(together);
    let roomy = engine(hv.clone(), dir.path()).await;
    roomy
        .migrate_group(req)
        .await
        .expect("room for both flattened chains");
}
