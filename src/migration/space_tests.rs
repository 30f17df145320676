//! The room check and the reading of the source image, over the in-memory
//! hypervisor: a flattening copy of a chained disk writes the data of every
//! layer, so all of it must fit; a source image that cannot be read is the
//! operator's to fix, named by path, not an internal error.

use std::sync::Arc;

use super::fake::{FakeHypervisor, CAPACITY};
use super::journal::Journal;
use super::model::{ChainPolicy, ErrorCode};
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
