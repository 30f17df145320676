//! The summary printed when a migration ends: where its disks are now after
//! COMPLETED, or why it ended and what state it left after FAILED or CANCELLED.

use super::lines::elapsed_seconds;
use super::{format_name, or_dash, phase_name};
use crate::api::client::code_name;
use crate::cli::quantities::{human_bytes, human_duration};
use crate::proto::{MigrationEvent, Phase};

/// What a COMPLETED event did, over several lines.
pub fn completed_summary(ev: &MigrationEvent) -> String {
    let mut out = format!(
        "migration {} COMPLETED{}\n",
        or_dash(&ev.migration_id),
        took(ev)
    );
    if !ev.disks.is_empty() {
        return out + &disks_summary(ev);
    }
    let Some(r) = &ev.result else {
        return out;
    };
    let field = |out: &mut String, name: &str, value: &str| {
        out.push_str(&format!("  {name:<12} {}\n", or_dash(value)));
    };
    field(&mut out, "new source", &r.destination_source);
    field(&mut out, "pool", &r.destination_pool);
    field(&mut out, "volume", &r.destination_volume);
    field(&mut out, "format", format_name(r.destination_format()));
    let fate = match (r.source_deleted, r.source_kept_reason.as_str()) {
        (true, _) => "deleted".to_string(),
        (false, "") => "kept".to_string(),
        (false, why) => format!("kept ({why})"),
    };
    field(
        &mut out,
        "old source",
        &format!(
            "{} (pool {}, volume {}): {fate}",
            or_dash(&r.previous_source),
            or_dash(&r.source_pool),
            or_dash(&r.source_volume)
        ),
    );
    let definition = if r.persistent_definition_repaired {
        "repaired by volmig (libvirt had not updated it)"
    } else {
        "updated"
    };
    field(&mut out, "persistent", definition);
    if r.source_allocated_bytes > 0 && r.destination_allocated_bytes > 0 {
        field(
            &mut out,
            "allocation",
            &format!(
                "{} on the source, {} on the destination ({:.3}×)",
                human_bytes(r.source_allocated_bytes),
                human_bytes(r.destination_allocated_bytes),
                r.destination_allocated_bytes as f64 / r.source_allocated_bytes as f64
            ),
        );
    }
    out
}

/// Why a FAILED or CANCELLED migration ended and where its disk is, starting
/// with the `error: CODE: message` line.
pub fn failed_summary(ev: &MigrationEvent) -> String {
    let phase = phase_name(ev.phase());
    let mut out = format!(
        "migration {} {phase}{}\n",
        or_dash(&ev.migration_id),
        took(ev)
    );
    match &ev.error {
        Some(e) => {
            let message = if e.message.is_empty() {
                &ev.message
            } else {
                &e.message
            };
            out.push_str(&format!(
                "error: {}: {}\n",
                code_name(tonic::Code::from_i32(e.code)),
                or_dash(message)
            ));
            out.push_str(&format!("  phase:      {}\n", phase_name(e.phase())));
            if ev.disks.is_empty() {
                out.push_str(&format!("  disk state: {}\n", or_dash(&e.disk_state)));
            } else {
                out.push_str(&disks_summary(ev));
            }
        }
        None => {
            // Only a misbehaving server ends without an error; still say how it ended.
            let code = if ev.phase() == Phase::Cancelled {
                tonic::Code::Cancelled
            } else {
                tonic::Code::Unknown
            };
            out.push_str(&format!(
                "error: {}: {}\n",
                code_name(code),
                or_dash(&ev.message)
            ));
        }
    }
    out
}

/// One line per disk of a multi-disk migration: where it is now.
fn disks_summary(ev: &MigrationEvent) -> String {
    let mut out = String::new();
    for d in &ev.disks {
        let state = match (&d.result, &d.error) {
            (Some(r), _) => {
                let old = if r.source_deleted {
                    "deleted".to_string()
                } else if r.source_kept_reason.is_empty() {
                    "kept".to_string()
                } else {
                    format!("kept ({})", r.source_kept_reason)
                };
                format!(
                    "on {} (pool {}); old source {}: {old}",
                    or_dash(&r.destination_source),
                    or_dash(&r.destination_pool),
                    or_dash(&r.previous_source)
                )
            }
            (None, Some(e)) => or_dash(&e.disk_state).to_string(),
            (None, None) => d.message.clone(),
        };
        out.push_str(&format!(
            "  {:<6} {:<10} {state}\n",
            d.disk,
            phase_name(d.phase())
        ));
    }
    for s in &ev.skipped {
        out.push_str(&format!("  {:<6} {:<10} {}\n", s.disk, "skipped", s.reason));
    }
    if ev.pivot_window_ms > 0 {
        out.push_str(&format!(
            "  pivots: {} ms from the first issued to the last ended\n",
            ev.pivot_window_ms
        ));
    }
    out
}

fn took(ev: &MigrationEvent) -> String {
    elapsed_seconds(ev).map_or_else(String::new, |s| format!(" after {}", human_duration(s)))
}

#[cfg(test)]
mod tests {
    use super::super::test_events::group_copying;
    use super::*;
    use crate::proto::{MigrationError, MigrationResult, VolumeFormat};

    #[test]
    fn completed_summary_says_where_the_disk_is_now() {
        let ev = MigrationEvent {
            migration_id: "m1".into(),
            phase: Phase::Completed as i32,
            started_at_unix_ms: 1_000,
            timestamp_unix_ms: 193_000,
            result: Some(MigrationResult {
                destination_source: "/fast/vm1.qcow2".into(),
                destination_pool: "fast".into(),
                destination_volume: "vm1.qcow2".into(),
                destination_format: VolumeFormat::Qcow2 as i32,
                source_pool: "default".into(),
                source_volume: "vm1.qcow2".into(),
                previous_source: "/var/lib/libvirt/images/vm1.qcow2".into(),
                source_deleted: false,
                persistent_definition_repaired: true,
                source_kept_reason: String::new(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            completed_summary(&ev),
            "migration m1 COMPLETED after 3m12s\n\
             \x20 new source   /fast/vm1.qcow2\n\
             \x20 pool         fast\n\
             \x20 volume       vm1.qcow2\n\
             \x20 format       qcow2\n\
             \x20 old source   /var/lib/libvirt/images/vm1.qcow2 (pool default, volume vm1.qcow2): kept\n\
             \x20 persistent   repaired by volmig (libvirt had not updated it)\n"
        );
    }

    #[test]
    fn failed_summary_gives_code_message_phase_and_disk_state() {
        let ev = MigrationEvent {
            migration_id: "m1".into(),
            phase: Phase::Failed as i32,
            error: Some(MigrationError {
                code: 8,
                message: "pool fast is full".into(),
                phase: Phase::Copying as i32,
                disk_state: "guest still on its source; destination volume deleted".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            failed_summary(&ev),
            "migration m1 FAILED\n\
             error: RESOURCE_EXHAUSTED: pool fast is full\n\
             \x20 phase:      COPYING\n\
             \x20 disk state: guest still on its source; destination volume deleted\n"
        );
    }

    #[test]
    fn a_multi_disk_summary_says_where_each_disk_is() {
        let mut ev = group_copying();
        ev.phase = Phase::Failed as i32;
        ev.disks[0].phase = Phase::Completed as i32;
        ev.disks[0].result = Some(MigrationResult {
            destination_source: "/fast/vda.qcow2".into(),
            destination_pool: "fast".into(),
            previous_source: "/slow/vda.qcow2".into(),
            ..Default::default()
        });
        ev.disks[1].phase = Phase::Failed as i32;
        ev.disks[1].error = Some(MigrationError {
            disk_state: "the guest stays on its source /slow/vdb.qcow2".into(),
            ..Default::default()
        });
        ev.error = Some(MigrationError {
            code: 13,
            message: "disk vdb: the pivot failed".into(),
            phase: Phase::Pivoting as i32,
            ..Default::default()
        });
        ev.pivot_window_ms = 41;
        let summary = failed_summary(&ev);
        assert!(
            summary.ends_with(
                "  vda    COMPLETED  on /fast/vda.qcow2 (pool fast); old source /slow/vda.qcow2: kept\n\
                 \x20 vdb    FAILED     the guest stays on its source /slow/vdb.qcow2\n\
                 \x20 hdc    skipped    cdrom\n\
                 \x20 pivots: 41 ms from the first issued to the last ended\n"
            ),
            "{summary}"
        );
    }
}
