//! End-to-end: volmig never destroys bytes it did not create, and never deletes a
//! source something else still needs. A destination that fills mid-copy fails
//! cleanly; a destination volume that exists already (or that a concurrent
//! migration is about to create) is refused and left untouched; a source asked to
//! be deleted is kept while another domain or an overlay uses it.

mod harness;

use std::time::Duration;

use harness::checks::{assert_no_block_job, assert_on_destination, assert_rolled_back, volumes_in};
use harness::node::{self, NodeProcess};
use harness::{writing_guest_with_data, DefinedDomain, DirPool, DiskPool, FsPool, Guest, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

fn sha256(path: &str) -> String {
    let out = harness::run_ok("sha256sum", &[path]);
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sha256sum {path}: {out}"))
        .to_string()
}

/// Fills a volume with a few different bytes, so that any write into it shows.
fn scribble(path: &str, bytes: u64) {
    let mut args = vec!["-f".to_string(), "raw".to_string()];
    let step = bytes / 4;
    for (i, byte) in [0x5au8, 0xa5, 0x3c, 0xc3].iter().enumerate() {
        args.push("-c".to_string());
        args.push(format!(
            "write -q -P {byte:#04x} {} {step}",
            i as u64 * step
        ));
    }
    args.push(path.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    harness::run_ok("qemu-io", &args);
}

#[tokio::test(flavor = "multi_thread")]
async fn destination_full_mid_copy_fails_resource_exhausted_and_leaves_no_volume() {
    let src = DirPool::new("s-full-src");
    // ~99 MiB available: the space check (64 MiB of data + 16 MiB margin) passes. The
    // source is qcow2 because libvirt preallocates raw volumes in dir pools, and the
    // check counts a source's allocation.
    let small = FsPool::new("s-full-fs", 112 * MIB);
    let guest = writing_guest_with_data("s-full", &src, "qcow2");
    let src_path = guest.live_disk_source("vda").path;
    let node = NodeProcess::start("s-full", &[]);
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::limited(guest.name(), "vda", small.name(), 16 * MIB))
        .await
        .unwrap_or_else(|s| panic!("the space check must pass: {s:?}"))
        .into_inner();
    node::read_until(&mut stream, node::mid_copy).await;
    // Behind libvirt's back, leave far less than the rest of the copy needs.
    let filler = small.fill_leaving(4 * MIB);
    eprintln!("filled {filler} bytes; {} available now", small.available());
    let rest = node::collect(stream).await.expect("stream");
    eprintln!("events after the fill: {:?}", node::phases(&rest));
    node::assert_terminal(&rest, proto::Phase::Failed);
    let error = node::error_of(&rest);
    eprintln!("error: {error:?}");
    assert_eq!(error.phase, proto::Phase::Copying as i32, "{error:?}");
    assert!(
        error.disk_state.contains("stays on its source"),
        "{error:?}"
    );
    // The target's ENOSPC is the mirror job's error; the guest never sees it.
    let before = guest.last_ack();
    guest.wait_for_ack(before + 10, BOOT);
    assert_eq!(guest.state(), "running");
    assert_rolled_back(&guest, "vda", &small, &src_path);
    guest.verify_data_after_cold_restart();
    assert_eq!(
        error.code,
        tonic::Code::ResourceExhausted as i32,
        "a destination that ran out of space must be RESOURCE_EXHAUSTED: {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn destination_pool_too_small_is_resource_exhausted_before_copying() {
    let src = DirPool::new("s-small-src");
    let small = DiskPool::new("s-small-blk", 16 * MIB);
    let guest = Guest::start("s-small", &src, "raw", 64 * MIB);
    guest.wait_writing(10, BOOT);
    let node = NodeProcess::start("s-small", &[]);
    let mut client = node.client().await;
    let status = node::migrate(
        &mut client,
        node::request(guest.name(), "vda", small.name()),
    )
    .await
    .expect_err("must be refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(small.name()),
        "{}",
        status.message()
    );
    let left = volumes_in(&small);
    assert!(left.is_empty(), "stray volumes: {left:?}");
}

/// Migrates `guest`'s vda into `dst` naming the existing volume `taken` (at `path`) and
/// checks the refusal and that the volume is untouched.
async fn refuses_existing_destination(guest: &Guest, dst: &dyn Pool, taken: &str, path: &str) {
    let src_path = guest.live_disk_source("vda").path;
    let before = sha256(path);
    let node = NodeProcess::start("s-exists", &[]);
    let mut client = node.client().await;
    let mut req = node::request(guest.name(), "vda", dst.name());
    req.destination_volume = taken.to_string();
    let outcome = match client.migrate_volume(req).await {
        Err(status) => Ok(status),
        Ok(stream) => Err(node::collect(stream.into_inner()).await),
    };
    // The bytes first: whatever the node answered, they must not have changed.
    let present = volumes_in(dst).iter().any(|v| v == taken);
    let after = if std::path::Path::new(path).exists() {
        sha256(path)
    } else {
        "(gone)".to_string()
    };
    assert!(
        present && after == before,
        "volume {taken} in {} must be untouched: present {present}, sha256 {before} before, \
         {after} after; the node answered {outcome:#?}",
        dst.name()
    );
    let status = outcome.unwrap_or_else(|events| {
        panic!(
            "MigrateVolume onto the existing volume {taken} was accepted instead of refused \
             with ALREADY_EXISTS before the stream: {events:#?}"
        )
    });
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains(taken), "{}", status.message());
    assert_no_block_job(guest, "vda");
    assert_eq!(guest.live_disk_source("vda").path, src_path);
    assert_eq!(guest.persistent_disk_source("vda").path, src_path);
}

#[tokio::test(flavor = "multi_thread")]
async fn destination_already_exists_is_refused_and_its_bytes_untouched_in_a_dir_pool() {
    let src = DirPool::new("s-ex-dir-src");
    let dst = DirPool::new("s-ex-dir-dst");
    let guest = Guest::builder("s-ex-dir", &src).pause_ms(20).start();
    guest.wait_writing(5, BOOT);
    let taken = dst.new_volume_name("taken");
    let path = dst.create_volume(&taken, 64 * MIB, "raw");
    scribble(&path, 64 * MIB);
    refuses_existing_destination(&guest, &dst, &taken, &path).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn destination_already_exists_is_refused_and_its_bytes_untouched_in_a_disk_pool() {
    let src = DirPool::new("s-ex-blk-src");
    let dst = DiskPool::new("s-ex-blk-dst", 256 * MIB);
    let guest = Guest::builder("s-ex-blk", &src).pause_ms(20).start();
    guest.wait_writing(5, BOOT);
    let taken = dst.new_volume_name("taken");
    let path = dst.create_volume(&taken, 64 * MIB, "raw");
    scribble(&path, 64 * MIB);
    refuses_existing_destination(&guest, &dst, &taken, &path).await;
}

/// What one side of a race ended with: refused at the call, or its stream's events.
type Outcome = Result<Vec<proto::MigrationEvent>, tonic::Status>;

async fn start_and_follow(
    client: &mut volmig::proto::node_client::NodeClient<tonic::transport::Channel>,
    req: proto::MigrateVolumeRequest,
) -> Outcome {
    let stream = client.migrate_volume(req).await?.into_inner();
    Ok(node::collect(stream).await.expect("stream"))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_simultaneous_migrations_onto_one_name_one_completes_the_other_is_refused() {
    let src = DirPool::new("s-twin-src");
    let dst = DirPool::new("s-twin-dst");
    let guests = [
        writing_guest_with_data("s-twin-a", &src, "qcow2"),
        writing_guest_with_data("s-twin-b", &src, "qcow2"),
    ];
    let sources: Vec<String> = guests
        .iter()
        .map(|g| g.live_disk_source("vda").path)
        .collect();
    let name = harness::unique_name("shared");
    let node = NodeProcess::start("s-twin", &[]);
    let (mut c1, mut c2) = (node.client().await, node.client().await);
    let request = |g: &Guest| {
        let mut req = node::limited(g.name(), "vda", dst.name(), 16 * MIB);
        req.destination_volume = name.clone();
        req
    };
    let (a, b) = tokio::join!(
        start_and_follow(&mut c1, request(&guests[0])),
        start_and_follow(&mut c2, request(&guests[1])),
    );
    let outcomes = [a, b];
    let completed = |o: &Outcome| {
        o.as_ref()
            .is_ok_and(|ev| ev.last().map(node::phase) == Some(proto::Phase::Completed))
    };
    let winners: Vec<usize> = (0..2).filter(|&i| completed(&outcomes[i])).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one migration onto {name} must complete: {outcomes:#?}"
    );
    let (w, l) = (winners[0], 1 - winners[0]);
    let won = outcomes[w].as_ref().expect("winner's events");
    let winner_id = won[0].migration_id.clone();
    match &outcomes[l] {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
            assert!(
                status.message().contains(&winner_id),
                "the refusal must name {winner_id}: {}",
                status.message()
            );
        }
        Ok(events) => {
            node::assert_terminal(events, proto::Phase::Failed);
            let error = node::error_of(events);
            assert_eq!(
                error.code,
                tonic::Code::AlreadyExists as i32,
                "the loser must be refused ALREADY_EXISTS: {error:?}"
            );
        }
    }
    // The loser stays where it was; no job left on it.
    assert_no_block_job(&guests[l], "vda");
    assert_eq!(guests[l].live_disk_source("vda").path, sources[l]);
    assert_eq!(guests[l].persistent_disk_source("vda").path, sources[l]);
    // The winner's volume is there and holds everything after a cold restart.
    let result = node::result_of(won);
    assert_eq!(result.destination_volume, name);
    let vols = volumes_in(&dst);
    assert!(
        vols.contains(&name),
        "{name} missing from {}: {vols:?}",
        dst.name()
    );
    assert_on_destination(&guests[w], "vda", &result);
    guests[w].verify_data_after_cold_restart();
    guests[l].verify_data();
}

/// Migrates vda of `guest` to `dst` with SOURCE_POLICY_DELETE and returns the result.
async fn migrate_deleting_source(
    guest: &Guest,
    dst: &DirPool,
    purpose: &str,
) -> proto::MigrationResult {
    let node = NodeProcess::start(purpose, &[]);
    let mut client = node.client().await;
    let mut req = node::request(guest.name(), "vda", dst.name());
    node::delete_source(&mut req);
    let events = node::migrate(&mut client, req)
        .await
        .unwrap_or_else(|s| panic!("MigrateVolume refused: {s:?}"));
    node::assert_terminal(&events, proto::Phase::Completed);
    let result = node::result_of(&events);
    assert_on_destination(guest, "vda", &result);
    result
}

/// The source must have been kept, with a reason naming `user`.
fn assert_source_kept(
    result: &proto::MigrationResult,
    src: &DirPool,
    volume: &str,
    path: &str,
    user: &str,
) {
    let present = volumes_in(src).iter().any(|v| v == volume);
    assert!(
        !result.source_deleted && std::path::Path::new(path).exists() && present,
        "the source {path} is still used by {user} and must be kept: source_deleted {}, \
         file exists {}, volume listed {present}; result {result:#?}",
        result.source_deleted,
        std::path::Path::new(path).exists()
    );
    assert!(
        result.source_kept_reason.contains(user),
        "source_kept_reason must name {user}: {:?}",
        result.source_kept_reason
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_source_kept_when_another_domain_uses_it() {
    let src = DirPool::new("s-keep-dom-src");
    let dst = DirPool::new("s-keep-dom-dst");
    let guest = writing_guest_with_data("s-keep-dom", &src, "qcow2");
    let src_path = guest.live_disk_source("vda").path;
    // A stopped VM of the operator's whose disk is the same file.
    let other = DefinedDomain::using_file("s-keep-other", &src_path, "qcow2");
    let result = migrate_deleting_source(&guest, &dst, "s-keep-dom").await;
    assert_source_kept(&result, &src, guest.disk_volume(), &src_path, other.name());
    guest.verify_data();
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_source_kept_when_an_overlay_is_backed_by_it() {
    let src = DirPool::new("s-keep-ovl-src");
    let dst = DirPool::new("s-keep-ovl-dst");
    let guest = writing_guest_with_data("s-keep-ovl", &src, "qcow2");
    let src_path = guest.live_disk_source("vda").path;
    let overlay = src.new_volume_name("overlay");
    let overlay_path = src.path().join(&overlay).to_string_lossy().into_owned();
    // -u: the running guest holds the write lock on the backing file; the size is given.
    harness::run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            &src_path,
            "-F",
            "qcow2",
            &overlay_path,
            &harness::guest::DATA_GUEST_DISK.to_string(),
        ],
    );
    src.refresh();
    let result = migrate_deleting_source(&guest, &dst, "s-keep-ovl").await;
    assert_source_kept(&result, &src, guest.disk_volume(), &src_path, &overlay);
    guest.verify_data();
}
