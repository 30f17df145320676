//! The test bed's own end-to-end checks: a plain `virsh blockcopy --pivot` under a writing
//! guest must lose nothing (if this fails, no volmig test can be trusted), and the pools
//! and guest variants the other tests build on work on this host.
//!
//! Needs root, libvirtd and QEMU (`deploy/setup-host.sh`, which the harness runs) and, for
//! the RBD test, the single-node Ceph of `deploy/ceph/` (started on demand and left running).

mod harness;

use harness::{DirPool, DiskPool, Guest, Pool, RbdPool};
use std::os::unix::fs::FileTypeExt;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Generous bounds: TCG guests on a small machine shared with other test processes.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn plain_virsh_blockcopy_pivot_loses_no_records() {
    let t0 = Instant::now();
    let src = DirPool::new("bed-src");
    let dst = DirPool::new("bed-dst");
    let guest = Guest::start("bed-copy", &src, "qcow2", 64 * MIB);
    guest.wait_writing(1, BOOT_TIMEOUT);
    let first_ack = guest.since_start();
    let before = guest.wait_writing(50, WRITE_TIMEOUT);
    let src_path = src.volume_path(guest.disk_volume());
    assert_eq!(guest.live_disk_source("vda").path, src_path);

    // What volmig does: pre-create the destination through the pool API, then copy with
    // REUSE_EXT | TRANSIENT_JOB and a <disk> document naming it, and pivot.
    let dest_vol = dst.new_volume_name("bed-copy-dest");
    let dest_path = dst.create_volume(&dest_vol, 64 * MIB, "qcow2");
    let dest_xml = format!(
        "<disk type='file'><source file='{}'/><driver type='qcow2'/></disk>",
        harness::xml::escape(&dest_path)
    );
    let xml_file = guest.dir().join("dest.xml");
    std::fs::write(&xml_file, dest_xml).expect("writing dest.xml");
    let copy_started = Instant::now();
    harness::virsh_with_timeout(
        &[
            "blockcopy",
            guest.name(),
            "vda",
            "--xml",
            &xml_file.to_string_lossy(),
            "--reuse-external",
            "--wait",
            "--pivot",
            "--transient-job",
        ],
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{e}\nconsole tail:\n{}", guest.console_tail()));
    let copy_time = copy_started.elapsed();

    let live = guest.live_disk_source("vda");
    assert_eq!(live.path, dest_path, "live XML after pivot: {live:?}");
    assert_eq!(live.format.as_deref(), Some("qcow2"));
    assert!(!live.mirror, "a <mirror> is left in the live XML: {live:?}");
    let persistent = guest.persistent_disk_source("vda");
    assert_eq!(
        persistent.path, dest_path,
        "persistent XML after pivot: {persistent:?}"
    );
    assert_eq!(persistent.format.as_deref(), Some("qcow2"));

    // Still writing, now to the destination.
    let after_pivot = guest.wait_for_ack(before + 50, WRITE_TIMEOUT);
    assert!(after_pivot > before);

    guest.cold_restart();
    guest.wait_writing(20, BOOT_TIMEOUT);
    let report = guest.verify_records("vda");
    assert_eq!(
        report.boots.len(),
        2,
        "records of both boots on the destination: {report:?}"
    );
    let boots = guest.boots();
    assert_eq!(boots.len(), 2);
    assert!(boots[1].start > after_pivot);

    eprintln!(
        "bed: boot to first ack {:.1} s; blockcopy --pivot {:.2} s (at ack {before}); \
         {} records verified, {} boots; test {:.1} s",
        first_ack.as_secs_f64(),
        copy_time.as_secs_f64(),
        report.acked,
        report.boots.len(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn disk_pool_on_loop_device_creates_partitions() {
    let pool = DiskPool::new("bed-disk", 256 * MIB);
    let first = pool.new_volume_name("a");
    let second = pool.new_volume_name("b");
    let path = pool.create_volume(&first, 64 * MIB, "raw");
    pool.create_volume(&second, 32 * MIB, "raw");

    assert_eq!(path, format!("{}p1", pool.loop_device()));
    let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        meta.file_type().is_block_device(),
        "{path} is not a block device"
    );
    // GPT: the partition has exactly the size asked for (msdos would round it up).
    assert_eq!(pool.volume_capacity(&first), 64 * MIB);
    assert_eq!(pool.volume_capacity(&second), 32 * MIB);
}

#[test]
fn rbd_pool_creates_exact_size_volume() {
    let pool = RbdPool::new("bed-rbd");
    let vol = pool.new_volume_name("bed-rbd-vol");
    let path = pool.create_volume(&vol, 64 * MIB, "raw");
    assert_eq!(path, format!("{}/{vol}", pool.rados_pool()));
    assert_eq!(pool.volume_capacity(&vol), 64 * MIB);
    let info = pool
        .env()
        .rbd(&["info", &path])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(info.contains("size 64 MiB"), "rbd info {path}: {info}");
}

#[test]
fn guest_on_backing_chain_resumes_after_prefilled_records() {
    let pool = DirPool::new("bed-chain");
    let guest = Guest::builder("bed-chain", &pool)
        .backing_file(100)
        .pause_ms(10)
        .start();
    guest.wait_writing(20, BOOT_TIMEOUT);
    assert_eq!(
        guest.boots()[0].start,
        101,
        "guest did not see the template's records"
    );

    let template = pool.volume_path(guest.template_volume().expect("template"));
    // libvirt finds the chain from the qcow2 header: live XML shows it, persistent doesn't.
    let live = guest.live_disk_source("vda");
    assert_eq!(live.backing, vec![template.clone()], "live: {live:?}");
    assert!(guest.persistent_disk_source("vda").backing.is_empty());

    let report = guest.verify_records("vda");
    assert_eq!(report.boots, vec![1, 101]);
}

#[test]
fn guest_with_extra_disks_writes_only_to_vda() {
    let pool = DirPool::new("bed-extra");
    let guest = Guest::builder("bed-extra", &pool)
        .data_disk(16 * MIB, "raw")
        .readonly_disk()
        .cdrom()
        .pause_ms(10)
        .start();
    guest.wait_writing(20, BOOT_TIMEOUT);
    guest.verify_records("vda");

    let vdb = guest.persistent_disk_source("vdb");
    assert!(!vdb.readonly);
    let blank = std::fs::read(&vdb.path).unwrap_or_else(|e| panic!("{}: {e}", vdb.path));
    assert!(blank.iter().all(|&b| b == 0), "the guest wrote to vdb");
    assert!(guest.persistent_disk_source("vdc").readonly);
    let cd = guest.persistent_disk_source("hdc");
    assert_eq!((cd.device.as_str(), cd.readonly), ("cdrom", true));
}

#[test]
fn verify_records_catches_lost_records_even_after_the_guest_rewrites_them() {
    let pool = DirPool::new("bed-hole");
    let guest = Guest::builder("bed-hole", &pool).pause_ms(10).start();
    guest.wait_writing(30, BOOT_TIMEOUT);
    guest.destroy();
    let last = guest.last_ack();

    // Lose everything from record 16 on behind the guest's back (a tail, so that the
    // guest's binary search for where to resume certainly notices).
    let path = pool.volume_path(guest.disk_volume());
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open vda");
    let zeros = vec![0u8; (last as usize + 10) * 512];
    std::os::unix::fs::FileExt::write_all_at(&disk, &zeros, 16 * 512).expect("zeroing");
    drop(disk);
    let err = guest
        .try_verify_records("vda")
        .expect_err("the lost records must be found");
    assert!(
        err.contains(&format!("records 16..={last} missing")),
        "{err}"
    );

    // The guest resumes at 16 and rewrites past its old last ack: the disk alone looks
    // fine again, the console still shows the rewind.
    guest.boot();
    guest.wait_for_ack(last + 5, WRITE_TIMEOUT);
    assert_eq!(guest.boots()[1].start, 16);
    let err = guest
        .try_verify_records("vda")
        .expect_err("the rewind must be found");
    assert!(err.contains("started at record 16"), "{err}");
}

#[test]
fn prewritten_data_reads_back_from_dir_disk_and_rbd_pools() {
    let dir = DirPool::new("bed-pat-dir");
    let block = DiskPool::new("bed-pat-blk", 128 * MIB);
    let rbd = RbdPool::new("bed-pat-rbd");
    let guests = [
        (&dir as &dyn Pool, "raw"),
        (&dir as &dyn Pool, "qcow2"),
        (&block as &dyn Pool, "raw"),
        (&rbd as &dyn Pool, "raw"),
    ]
    .map(|(pool, format)| {
        Guest::builder(&format!("bed-pat-{format}"), pool)
            .format(format)
            .disk_bytes(48 * MIB)
            .prewritten(16 * MIB)
            .data_disk_prewritten(8 * MIB, format)
            .pause_ms(20)
            .start()
    });
    for guest in &guests {
        guest.wait_writing(5, BOOT_TIMEOUT);
        guest.verify_data();
    }
}

#[test]
fn verify_prewritten_names_the_first_damaged_offset() {
    let pool = DirPool::new("bed-pat-bad");
    let guest = Guest::builder("bed-pat-bad", &pool)
        .disk_bytes(48 * MIB)
        .prewritten(16 * MIB)
        .pause_ms(20)
        .start();
    guest.wait_writing(5, BOOT_TIMEOUT);
    guest.verify_prewritten("vda");
    guest.destroy();
    // Zero 4 KiB in the middle of the region, behind the guest's back.
    let at = 40 * MIB + 12345;
    let path = pool.volume_path(guest.disk_volume());
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open vda");
    std::os::unix::fs::FileExt::write_all_at(&disk, &[0u8; 4096], at).expect("zeroing");
    drop(disk);
    let err = guest
        .try_verify_prewritten("vda")
        .expect_err("the damage must be found");
    assert!(err.contains(&format!("byte offset {at} ")), "{err}");
    assert!(err.contains("4096 of 16777216 bytes differ"), "{err}");
    // Nothing was written into vdb.
    assert!(guest.try_verify_prewritten("vdb").is_err());
}
