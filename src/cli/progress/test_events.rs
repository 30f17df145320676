//! Events the progress tests are built from.

use crate::proto::{DiskStatus, MigrationEvent, MigrationProgress, Phase, SkippedDisk};

/// A single-disk migration copying `done` of `total` bytes.
pub fn copying(done: u64, total: u64, rate: u64, eta: u64) -> MigrationEvent {
    MigrationEvent {
        migration_id: "m1".into(),
        node_id: "n1".into(),
        domain: "vm1".into(),
        disk: "vda".into(),
        phase: Phase::Copying as i32,
        progress: Some(MigrationProgress {
            bytes_done: done,
            bytes_total: total,
            rate_bytes_per_sec: rate,
            eta_seconds: eta,
        }),
        started_at_unix_ms: 1_000_000,
        timestamp_unix_ms: 1_245_500,
        message: "copying vda to pool fast".into(),
        ..Default::default()
    }
}

/// A two-disk migration copying, with a cdrom skipped.
pub fn group_copying() -> MigrationEvent {
    let mut ev = copying(3 << 30, 4 << 30, 0, 0);
    ev.disk = "vda,vdb".into();
    let disk = |name: &str, phase: Phase, done: u64| DiskStatus {
        disk: name.into(),
        phase: phase as i32,
        progress: Some(MigrationProgress {
            bytes_done: done,
            bytes_total: 2 << 30,
            ..Default::default()
        }),
        ..Default::default()
    };
    ev.disks = vec![
        disk("vda", Phase::Synchronized, 2 << 30),
        disk("vdb", Phase::Copying, 1 << 30),
    ];
    ev.skipped = vec![SkippedDisk {
        disk: "hdc".into(),
        reason: "cdrom".into(),
    }];
    ev
}
