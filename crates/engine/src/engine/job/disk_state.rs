//! Where a failed migration left the disk, as decided by the rollback; the
//! terminal event's disk state is its description, and what else may be
//! deleted (the copied backing layers) follows from the value, not the text.

use crate::journal::Plan;

/// Where the disk is after a rollback, with what the description names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DiskState {
    /// It failed before anything was created.
    Untouched,
    /// The node lost track while creating the destination volume, which may
    /// exist and is not deleted.
    CreationUnknown,
    /// The guest stays on its source; `destination` says what became of the
    /// destination volume (a suffix, empty when there was none).
    OnSource { destination: String },
    /// libvirt could not be asked where the disk is: both sides are kept.
    Unknown { destination: String, error: String },
    /// The guest's definitions name the destination although volmig did not
    /// pivot: both sides are kept.
    PivotedByOthers { destination: String },
    /// After the pivot: the guest runs on the destination.
    OnDestination { destination: String },
    /// After the pivot was issued, the definitions name what `live` and
    /// `persistent` describe: both sides are kept.
    PivotIssued {
        destination: String,
        live: String,
        persistent: String,
    },
}

impl DiskState {
    /// Whether the guest provably never left its source, so the backing
    /// layers copied for it are used by nothing of this migration.
    pub(super) fn never_left_source(&self) -> bool {
        matches!(
            self,
            DiskState::Untouched | DiskState::CreationUnknown | DiskState::OnSource { .. }
        )
    }

    /// The terminal event's disk state (before what became of the layers).
    pub(super) fn describe(&self, plan: &Plan) -> String {
        let source = plan.source.display_name();
        match self {
            DiskState::Untouched => {
                format!("nothing was changed; the guest stays on its source {source}")
            }
            DiskState::CreationUnknown => format!(
                "the guest stays on its source {source}; the node lost track while creating volume {} in pool {}: if that volume exists, volmig did not delete it because it cannot prove it created it (check with `virsh vol-info {} --pool {}` and delete it if nothing uses it)",
                plan.dest_volume, plan.dest_pool, plan.dest_volume, plan.dest_pool
            ),
            DiskState::OnSource { destination } => {
                format!("the guest stays on its source {source}{destination}")
            }
            DiskState::Unknown { destination, error } => format!(
                "unknown: libvirt could not be asked where disk {} is ({error}); both the source {source} and the destination {destination} are kept: check with `virsh domblklist {}` and delete the unused one",
                plan.target, plan.domain
            ),
            DiskState::PivotedByOthers { destination } => format!(
                "the guest's definitions name the destination {destination} although volmig did not pivot (someone else did); both it and the source {source} are kept"
            ),
            DiskState::OnDestination { destination } => format!(
                "the guest runs on the destination {destination} (pivot done); the source {source} is kept"
            ),
            DiskState::PivotIssued {
                destination,
                live,
                persistent,
            } => format!(
                "the pivot was issued; the running guest uses {live}, its persistent definition names {persistent}; both the source {source} and the destination {destination} are kept"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{DiskSource, ImageFormat};

    fn plan() -> Plan {
        Plan {
            domain: "web".into(),
            domain_uuid: "u".into(),
            target: "vda".into(),
            source: DiskSource::File {
                path: "/a/web.qcow2".into(),
            },
            source_format: ImageFormat::Qcow2,
            source_volume: None,
            capacity: 1 << 30,
            dest_pool: "fast".into(),
            dest_volume: "web.qcow2".into(),
            dest_format: ImageFormat::Qcow2,
            chain: Vec::new(),
            snapshots: 0,
            offline: false,
        }
    }

    #[test]
    fn only_a_guest_that_never_left_its_source_frees_the_copied_layers() {
        let dest = || "/b/web.qcow2".to_string();
        let cases = [
            (DiskState::Untouched, true, "nothing was changed; the guest stays on its source /a/web.qcow2"),
            (DiskState::CreationUnknown, true, "the guest stays on its source /a/web.qcow2; the node lost track while creating volume web.qcow2 in pool fast"),
            (
                DiskState::OnSource { destination: "; destination volume fast/web.qcow2 deleted".into() },
                true,
                "the guest stays on its source /a/web.qcow2; destination volume fast/web.qcow2 deleted",
            ),
            (
                DiskState::Unknown { destination: dest(), error: "gone".into() },
                false,
                "unknown: libvirt could not be asked where disk vda is (gone); both the source /a/web.qcow2 and the destination /b/web.qcow2 are kept",
            ),
            (
                DiskState::PivotedByOthers { destination: dest() },
                false,
                "the guest's definitions name the destination /b/web.qcow2 although volmig did not pivot",
            ),
            (
                DiskState::OnDestination { destination: dest() },
                false,
                "the guest runs on the destination /b/web.qcow2 (pivot done); the source /a/web.qcow2 is kept",
            ),
            (
                DiskState::PivotIssued { destination: dest(), live: "the source /a/web.qcow2".into(), persistent: "no such disk".into() },
                false,
                "the pivot was issued; the running guest uses the source /a/web.qcow2, its persistent definition names no such disk; both the source /a/web.qcow2 and the destination /b/web.qcow2 are kept",
            ),
        ];
        for (state, never_left, text) in cases {
            assert_eq!(state.never_left_source(), never_left, "{state:?}");
            assert!(state.describe(&plan()).starts_with(text), "{state:?}");
        }
    }
}
