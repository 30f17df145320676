//! End-to-end: chain policy SHALLOW keeps a disk's backing chain (issue 10).
//!
//! A writing guest over template ← d1 ← d2 ← top moves to another dir pool
//! with every layer kept and compared layer by layer; a second guest over the
//! same template reuses the template copy there; disk-only external snapshots
//! follow the chain and can be deleted and reverted on the destination.
//! FLATTEN, the default, writes the whole chain's data: a pool with room for
//! the top overlay only is refused before anything is created.

mod harness;

use std::time::Duration;

use harness::checks::{assert_no_block_job, volumes_in};
use harness::node::{self, NodeProcess};
use harness::{DirPool, FsPool, Guest, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

fn shallow(req: &mut proto::MigrateVolumeRequest) {
    req.options = Some(proto::MigrationOptions {
        chain_policy: proto::ChainPolicy::Shallow as i32,
        ..Default::default()
    });
}

async fn migrate(
    node: &NodeProcess,
    guest: &Guest,
    dst: &dyn Pool,
    tweak: impl FnOnce(&mut proto::MigrateVolumeRequest),
) -> Vec<proto::MigrationEvent> {
    let mut client = node.client().await;
    let mut req = node::request(guest.name(), "vda", dst.name());
    tweak(&mut req);
    node::migrate(&mut client, req)
        .await
        .unwrap_or_else(|s| panic!("MigrateVolume refused: {s:?}"))
}

/// `qemu-img compare` of two qcow2 layers *alone* (their backing links cut), so equal
/// means the same clusters hold the same bytes in this layer itself.
fn layers_equal(a: &str, b: &str) -> bool {
    let alone = |p: &str| {
        format!(
            r#"json:{{"driver":"qcow2","backing":null,"file":{{"driver":"file","filename":"{p}"}}}}"#
        )
    };
    harness::run("qemu-img", &["compare", "-U", &alone(a), &alone(b)]).is_ok()
}

/// Sum of the allocations libvirt reports for the pool's volumes.
fn pool_allocation(pool: &dyn Pool) -> u64 {
    volumes_in(pool)
        .iter()
        .map(|v| {
            let info = harness::virsh_ok(&["vol-info", "--bytes", "--pool", pool.name(), v]);
            info.lines()
                .find(|l| l.starts_with("Allocation:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no allocation in {info}"))
        })
        .sum()
}

fn inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

#[tokio::test(flavor = "multi_thread")]
async fn shallow_keeps_every_layer_and_a_second_guest_reuses_the_template() {
    let src = DirPool::new("ch-src");
    let dst = DirPool::new("ch-dst");
    // ~10 MiB of records in the template, a pattern in each delta, records in the top.
    let a = Guest::builder("ch-a", &src)
        .backing_file(20_000)
        .deltas(2)
        .disk_bytes(96 * MIB)
        .pause_ms(20)
        .start();
    let node = NodeProcess::start("ch", &[]);
    let template = a.template_volume().expect("template").to_string();

    // An impostor: the template's name, format and size in the destination, other
    // contents. Refused before anything is created; it is neither used nor touched.
    let impostor = dst.create_volume(&template, 96 * MIB, "qcow2");
    let events = migrate(&node, &a, &dst, shallow).await;
    node::assert_terminal(&events, proto::Phase::Failed);
    let err = node::error_of(&events);
    assert_eq!(err.code, tonic::Code::FailedPrecondition as i32, "{err:?}");
    assert!(err.message.contains("not the same contents"), "{err:?}");
    assert_eq!(
        volumes_in(&dst),
        vec![template.clone()],
        "nothing left behind"
    );
    harness::virsh_ok(&["vol-delete", &impostor]);

    let before = a.wait_writing(20, BOOT);
    let events = migrate(&node, &a, &dst, shallow).await;
    node::assert_terminal(&events, proto::Phase::Completed);
    let result = node::result_of(&events);
    assert_no_block_job(&a, "vda");

    let layers: Vec<String> = std::iter::once(template.clone())
        .chain(a.delta_volumes().iter().cloned())
        .collect();
    let at = |pool: &DirPool, v: &str| pool.path().join(v).to_string_lossy().into_owned();
    // Nearest first, as libvirt lists a chain.
    let want: Vec<String> = layers.iter().rev().map(|v| at(&dst, v)).collect();
    for (which, disk) in [
        ("live", a.live_disk_source("vda")),
        ("persistent", a.persistent_disk_source("vda")),
    ] {
        assert_eq!(disk.path, result.destination_source, "{which}: {disk:?}");
        assert_eq!(disk.backing, want, "{which} chain: {disk:?}");
    }
    for v in &layers {
        assert!(
            layers_equal(&at(&src, v), &at(&dst, v)),
            "layer {v} differs between {} and {}",
            src.name(),
            dst.name()
        );
    }
    let mut names = volumes_in(&dst);
    names.sort();
    let mut expected: Vec<String> = layers.clone();
    expected.push(result.destination_volume.clone());
    expected.sort();
    assert_eq!(
        names, expected,
        "the destination holds the chain and the top"
    );

    a.wait_for_ack(before + 10, BOOT);
    a.cold_restart();
    a.wait_writing(10, BOOT);
    // Records in template and top, each delta's pattern: nothing lost, no layer wrong.
    a.verify_data();
    // Stopped, so that only the second migration changes the pool's allocation.
    a.destroy();

    // A second guest over the same template, to the same pool: the template is reused.
    let b = Guest::builder("ch-b", &src)
        .shared_template(&template, a.prefilled())
        .disk_bytes(96 * MIB)
        .pause_ms(20)
        .start();
    b.wait_writing(20, BOOT);
    let template_copy = at(&dst, &template);
    let template_inode = inode(&template_copy);
    let allocated_before = pool_allocation(&dst);
    let events = migrate(&node, &b, &dst, shallow).await;
    node::assert_terminal(&events, proto::Phase::Completed);
    let result_b = node::result_of(&events);
    let grown = pool_allocation(&dst) - allocated_before;
    let top_b = {
        let info = harness::virsh_ok(&[
            "vol-info",
            "--bytes",
            "--pool",
            dst.name(),
            &result_b.destination_volume,
        ]);
        info.lines()
            .find(|l| l.starts_with("Allocation:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .expect("allocation")
    };
    eprintln!("second guest: pool grew by {grown} bytes, its top is {top_b} bytes");
    assert_eq!(grown, top_b, "the pool grew by the second guest's top only");
    assert_eq!(
        inode(&template_copy),
        template_inode,
        "the template copy was reused, not made again"
    );
    assert_eq!(volumes_in(&dst).len(), expected.len() + 1);
    assert_eq!(
        b.live_disk_source("vda").backing,
        vec![template_copy.clone()]
    );
    assert_eq!(
        b.persistent_disk_source("vda").backing,
        vec![template_copy.clone()]
    );
    // Read from the persistent definition's image (the cold restart was proven on a).
    b.verify_data();
}

#[tokio::test(flavor = "multi_thread")]
async fn flatten_into_a_pool_with_room_for_the_top_only_is_refused_up_front() {
    let src = DirPool::new("cf-src");
    let small = FsPool::new("cf-small", 112 * MIB);
    // ~30 MiB of records in the template; the top holds only what the guest writes.
    let guest = Guest::builder("cf", &src)
        .backing_file(60_000)
        .disk_bytes(96 * MIB)
        .pause_ms(20)
        .start();
    let src_path = guest.live_disk_source("vda").path;
    let node = NodeProcess::start("cf", &[]);
    let before = guest.wait_writing(20, BOOT);
    let allocated = |volume: &str| {
        use std::os::unix::fs::MetadataExt;
        let path = src.path().join(volume);
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .blocks()
            * 512
    };
    let template = allocated(guest.template_volume().expect("template"));
    let top = allocated(guest.disk_volume());
    assert!(template >= 25 * MIB, "the template holds {template} bytes");
    // Room for the top and the node's 16 MiB margin with 8 MiB to spare: not
    // for the template's data as well.
    small.fill_leaving(top + 24 * MIB);
    eprintln!(
        "top {top} bytes, template {template} bytes, {} available",
        small.available()
    );

    let mut client = node.client().await;
    let refused = node::migrate(
        &mut client,
        node::request(guest.name(), "vda", small.name()),
    )
    .await
    .expect_err("a pool too small for the flattened chain is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("backing layer(s), flattened"),
        "{refused:?}"
    );
    assert!(volumes_in(&small).is_empty(), "nothing is created");
    assert_eq!(guest.live_disk_source("vda").path, src_path);
    guest.wait_for_ack(before + 10, BOOT);
    assert_no_block_job(&guest, "vda");
}

/// Records 1..=`up_to` are on the image `path` (qcow2, read through its chain).
fn records_on(guest: &Guest, path: &str, up_to: u64) {
    let raw = guest.dir().join("snapshot-state.raw");
    let raw_s = raw.to_string_lossy().into_owned();
    harness::run_ok(
        "qemu-img",
        &["convert", "-U", "-f", "qcow2", "-O", "raw", path, &raw_s],
    );
    let file = std::fs::File::open(&raw).expect("open");
    harness::records::verify(file, up_to)
        .unwrap_or_else(|e| panic!("records up to {up_to} on {path}: {e}"));
    let _ = std::fs::remove_file(&raw);
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_only_snapshots_follow_the_chain() {
    let src = DirPool::new("cs-src");
    let dst = DirPool::new("cs-dst");
    let guest = Guest::builder("cs", &src)
        .backing_file(100)
        .disk_bytes(64 * MIB)
        .pause_ms(20)
        .start();
    let first_top = guest.disk_volume().to_string();
    let mut acks = Vec::new();
    let mut overlays = Vec::new();
    for name in ["s1", "s2"] {
        guest.wait_writing(20 + 20 * acks.len() as u64, BOOT);
        // Acknowledged before the snapshot: durable in the image it freezes.
        acks.push(guest.last_ack());
        let overlay = src.new_volume_name(&format!("cs-{name}"));
        let file = src.path().join(&overlay).to_string_lossy().into_owned();
        harness::virsh_ok(&[
            "snapshot-create-as",
            guest.name(),
            name,
            "--disk-only",
            "--diskspec",
            &format!("vda,file={file}"),
        ]);
        overlays.push(overlay);
    }
    src.refresh();
    let node = NodeProcess::start("cs", &[]);

    // Flattening would orphan the snapshots: refused, with what to do.
    let mut client = node.client().await;
    let refused = node::migrate(&mut client, node::request(guest.name(), "vda", dst.name()))
        .await
        .expect_err("FLATTEN with snapshots is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("SHALLOW"), "{refused:?}");

    let events = migrate(&node, &guest, &dst, shallow).await;
    node::assert_terminal(&events, proto::Phase::Completed);
    let list = harness::virsh_ok(&["snapshot-list", guest.name(), "--name"]);
    let listed: Vec<&str> = list.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(listed, vec!["s1", "s2"], "{list}");
    let src_dir = src.path().to_string_lossy().into_owned();
    let dst_dir = dst.path().to_string_lossy().into_owned();
    for name in ["s1", "s2"] {
        let xml = harness::virsh_ok(&["snapshot-dumpxml", guest.name(), name]);
        assert!(
            !xml.contains(&src_dir),
            "{name} still names the source: {xml}"
        );
        assert!(
            xml.contains(&dst_dir),
            "{name} names the destination: {xml}"
        );
    }

    // Deleting the newest snapshot (guest stopped) merges on the destination chain.
    guest.destroy();
    harness::virsh_ok(&["snapshot-delete", guest.name(), "s2"]);
    let s1_file = dst.path().join(&overlays[0]).to_string_lossy().into_owned();
    assert_eq!(guest.persistent_disk_source("vda").path, s1_file);
    assert!(
        src.path().join(&overlays[1]).exists(),
        "the source's images are left alone"
    );

    // Reverting to s1: libvirt 9.0 cannot revert an external snapshot itself, so as
    // libvirt >= 9.7 does, start a new overlay over the image s1 froze (its domain's
    // disk, now on the destination) and boot from it.
    let refused = harness::virsh(&["snapshot-revert", guest.name(), "s1"]);
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("not supported")),
        "{refused:?}"
    );
    let frozen = dst.path().join(&first_top).to_string_lossy().into_owned();
    let s1_xml = harness::virsh_ok(&["snapshot-dumpxml", guest.name(), "s1"]);
    assert!(
        s1_xml.contains(&frozen),
        "s1's domain names {frozen}: {s1_xml}"
    );
    records_on(&guest, &frozen, acks[0]);
    let reverted = dst
        .path()
        .join("cs-reverted")
        .to_string_lossy()
        .into_owned();
    harness::run_ok(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", &frozen, "-F", "qcow2", &reverted,
        ],
    );
    let disk = format!(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{reverted}'/><target dev='vda' bus='virtio'/></disk>"
    );
    let disk_file = guest.dir().join("reverted-disk.xml");
    std::fs::write(&disk_file, disk).expect("write");
    harness::virsh_ok(&[
        "update-device",
        guest.name(),
        &disk_file.to_string_lossy(),
        "--config",
    ]);
    guest.boot();
    guest.wait_writing(5, BOOT);
    let boot = guest.boots().pop().expect("a boot");
    assert!(
        boot.start > acks[0] && boot.start <= acks[1],
        "the reverted guest resumed at record {} (s1 froze {} acknowledged, s2 {})",
        boot.start,
        acks[0],
        acks[1]
    );
}
