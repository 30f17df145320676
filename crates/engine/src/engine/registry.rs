//! Who holds what on this node: migrations by id and by request id, the
//! per-disk leases, the reserved destination names, the groups, and the
//! requests admitted that are still planning. Admission, start-up recovery
//! and the end of a migration all change it through the calls here.

use std::collections::HashMap;
use std::iter;
use std::sync::Arc;

use super::admission::Planning;
use super::Job;
use crate::engine::group::Group;
use crate::error::Error;
use crate::journal::Plan;

#[derive(Default)]
pub(super) struct Registry {
    pub(super) by_id: HashMap<String, Arc<Job>>,
    pub(super) by_request: HashMap<String, String>,
    /// Active migrations by (domain uuid, target): the per-disk lease.
    pub(super) by_disk: HashMap<(String, String), String>,
    /// Destination names of active migrations by (pool, volume), so two
    /// migrations can never race for one name.
    pub(super) reserved: HashMap<(String, String), String>,
    /// Multi-disk migrations by id.
    pub(super) groups: HashMap<String, Arc<Group>>,
    /// Requests admitted and still planning, by reservation number.
    pub(super) planning: HashMap<u64, Planning>,
    /// The number of the next reservation.
    pub(super) next_reservation: u64,
}

impl Registry {
    /// The active migration of `disk` (target or source) of `domain` (name or
    /// UUID): its domain, target and id.
    pub(super) fn active_on(&self, domain: &str, disk: &str) -> Option<(String, String, String)> {
        self.by_disk
            .values()
            .filter_map(|id| self.by_id.get(id))
            .find_map(|job| {
                let plan = job.lock().record.plan.clone();
                let same_domain = plan.domain == domain || plan.domain_uuid == domain;
                let same_disk = plan.target == disk || plan.source.display_name() == disk;
                (same_domain && same_disk).then(|| (plan.domain, plan.target, job.id.clone()))
            })
    }

    /// Why the migration `plan` describes cannot be registered now: its disk
    /// is leased, or a name it would create or reuse is reserved.
    pub(super) fn conflict(&self, plan: &Plan) -> Option<Error> {
        let key = (plan.domain_uuid.clone(), plan.target.clone());
        if let Some(other) = self.by_disk.get(&key) {
            return Some(Error::AlreadyMigrating {
                domain: plan.domain.clone(),
                disk: plan.target.clone(),
                migration_id: other.clone(),
            });
        }
        // A layer another migration is copying may yet be rolled back:
        // neither copied again nor reused until that migration ends.
        let layers = plan.chain.iter().map(|l| l.dest_volume.clone());
        iter::once(plan.dest_volume.clone())
            .chain(layers)
            .find_map(|volume| {
                let name = (plan.dest_pool.clone(), volume);
                self.reserved
                    .get(&name)
                    .map(|other| Error::DestinationReserved {
                        pool: name.0,
                        volume: name.1,
                        migration_id: other.clone(),
                    })
            })
    }

    /// Leases the disk of `plan` to migration `id` and reserves the names it
    /// creates: its top, named `volume`, and the layers it copies.
    pub(super) fn claim(&mut self, id: &str, plan: &Plan, volume: &str) {
        self.by_disk.insert(
            (plan.domain_uuid.clone(), plan.target.clone()),
            id.to_string(),
        );
        let copied = plan
            .chain
            .iter()
            .filter(|l| l.reused.is_none())
            .map(|l| l.dest_volume.clone());
        for name in iter::once(volume.to_string()).chain(copied) {
            self.reserved
                .insert((plan.dest_pool.clone(), name), id.to_string());
        }
    }

    /// Forgets the migrations `ids` and the group `group`, with their leases,
    /// names and request ids.
    pub(super) fn forget(&mut self, ids: &[String], group: Option<&str>) {
        let gone = |id: &String| ids.contains(id) || group == Some(id.as_str());
        self.by_id.retain(|id, _| !gone(id));
        self.by_disk.retain(|_, id| !gone(id));
        self.reserved.retain(|_, id| !gone(id));
        self.by_request.retain(|_, id| !gone(id));
        if let Some(group) = group {
            self.groups.remove(group);
        }
    }

    /// The error for a destination name planning found taken: a name another
    /// migration is creating is reported as that migration's, which the
    /// caller can follow.
    pub(super) fn reserved_or_exists(&self, pool: String, volume: String) -> Error {
        match self.reserved.get(&(pool.clone(), volume.clone())) {
            Some(other) => Error::DestinationReserved {
                pool,
                volume,
                migration_id: other.clone(),
            },
            None => Error::DestinationExists { pool, volume },
        }
    }
}
