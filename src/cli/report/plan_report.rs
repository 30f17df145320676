//! A placement dry run (`plan`): the disk, the chosen pool, and every
//! candidate pool with why it was accepted or rejected.

use super::{disk_type, field, size_or_dash};
use crate::cli::progress::{format_name, or_dash};
use crate::cli::quantities::human_bytes;
use crate::cli::table::Table;
use crate::proto::PlanMigrationResponse;

/// A placement dry run: the disk, the chosen pool, and every candidate with
/// why it was accepted or rejected.
pub fn plan(p: &PlanMigrationResponse) -> String {
    if !p.disks.is_empty() {
        // A multi-disk plan: each disk's, judged after the ones before it.
        let mut out = String::new();
        field(&mut out, "node", &p.node_id);
        for d in &p.disks {
            out.push('\n');
            out.push_str(&plan(d));
        }
        return out;
    }
    let mut out = String::new();
    field(&mut out, "node", &p.node_id);
    if let Some(d) = &p.disk {
        field(
            &mut out,
            "disk",
            &format!(
                "{} ({}, {}, {} virtual, {} allocated): {}",
                or_dash(&d.target),
                disk_type(d.r#type()),
                format_name(d.format()),
                size_or_dash(d.capacity_bytes),
                size_or_dash(d.allocation_bytes),
                or_dash(&d.source)
            ),
        );
    }
    field(&mut out, "source pool", &p.source_pool);
    let chosen = if p.chosen_pool.is_empty() {
        "none: no candidate is acceptable"
    } else {
        &p.chosen_pool
    };
    field(&mut out, "chosen pool", chosen);
    out.push('\n');
    let mut t = Table::new(&[
        "POOL",
        "STORAGE-ID",
        "RESULT",
        "SCORE",
        "FREE-AFTER",
        "REASON",
    ]);
    for c in &p.candidates {
        let result = if c.accepted {
            "accepted".to_string()
        } else if c.rejected_by.is_empty() {
            "rejected".to_string()
        } else {
            format!("rejected:{}", c.rejected_by)
        };
        t.row(vec![
            c.pool.clone(),
            c.storage_id.clone(),
            result,
            if c.accepted {
                format!("{:.3}", c.score)
            } else {
                String::new()
            },
            human_bytes(c.free_after_bytes),
            c.reason.clone(),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PlacementCandidate;

    #[test]
    fn plan_shows_the_choice_and_each_rejection_reason() {
        let reply = PlanMigrationResponse {
            node_id: "n1".into(),
            source_pool: "default".into(),
            chosen_pool: "fast".into(),
            candidates: vec![
                PlacementCandidate {
                    pool: "fast".into(),
                    accepted: true,
                    score: 0.8125,
                    free_after_bytes: 90 << 30,
                    ..Default::default()
                },
                PlacementCandidate {
                    pool: "small".into(),
                    rejected_by: "free_space".into(),
                    reason: "would be 97% used, threshold 85%".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = plan(&reply);
        assert!(text.contains("chosen pool  fast\n"), "{text}");
        assert!(
            text.contains("fast   -           accepted             0.812  90.0 GiB    -\n"),
            "{text}"
        );
        assert!(
            text.contains("small  -           rejected:free_space  -      0 B         would be 97% used, threshold 85%\n"),
            "{text}"
        );
    }
}
