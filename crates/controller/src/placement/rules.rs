//! The pipeline of named rules: each judges one concern of one pool for one
//! disk, and a rejection always carries an operator-readable reason.

use std::fmt;

use volmig_types::host::{pool_disk_kind, space_needed, DiskKind, ImageFormat};
use volmig_types::units::{human_bytes, utc_time};

use super::{DiskToPlace, PoolCandidate, PoolPolicy};

/// The pool types volmig can write to, as operators should read them.
const SUPPORTED_TYPES: &str = "dir, fs, netfs, logical, disk, iscsi, rbd";

/// A placement rule; [`Rule::ALL`] is the order in which they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// The pool is not running.
    Inactive,
    /// The pool is the storage the disk is on now.
    SourcePool,
    /// An operator put the pool in maintenance.
    Maintenance,
    /// The domain's node cannot reach the pool.
    Unreachable,
    /// volmig cannot write to this pool type.
    IncompatibleType,
    /// The requested format cannot live on this pool.
    IncompatibleFormat,
    /// The pool reports no capacity, so free space cannot be checked.
    CapacityUnknown,
    /// Not enough space, or the pool would go over its used threshold.
    UsedThreshold,
    /// The pool would go over its over-provisioning factor.
    Overprovisioned,
    /// The pool lacks a required tag.
    MissingTag,
    /// The pool is at its limit of in-flight migrations.
    InFlightLimit,
}

impl Rule {
    /// Every rule, in the order they are applied.
    pub const ALL: [Rule; 11] = [
        Rule::Inactive,
        Rule::SourcePool,
        Rule::Maintenance,
        Rule::Unreachable,
        Rule::IncompatibleType,
        Rule::IncompatibleFormat,
        Rule::CapacityUnknown,
        Rule::UsedThreshold,
        Rule::Overprovisioned,
        Rule::MissingTag,
        Rule::InFlightLimit,
    ];

    /// The stable name shown to operators and in the API (`rejected_by`).
    pub fn name(self) -> &'static str {
        match self {
            Rule::Inactive => "inactive",
            Rule::SourcePool => "source_pool",
            Rule::Maintenance => "maintenance",
            Rule::Unreachable => "unreachable",
            Rule::IncompatibleType => "incompatible_type",
            Rule::IncompatibleFormat => "incompatible_format",
            Rule::CapacityUnknown => "capacity_unknown",
            Rule::UsedThreshold => "used_threshold",
            Rule::Overprovisioned => "overprovisioned",
            Rule::MissingTag => "missing_tag",
            Rule::InFlightLimit => "in_flight_limit",
        }
    }

    /// `Err(reason)` when this rule rejects the candidate. Each rule judges only
    /// its own concern, so it can be re-checked on its own.
    pub(super) fn check(self, c: &Candidate<'_>) -> Result<(), String> {
        match self {
            Rule::Inactive => inactive(c),
            Rule::SourcePool => source_pool(c),
            Rule::Maintenance => maintenance(c),
            Rule::Unreachable => unreachable(c),
            Rule::IncompatibleType => incompatible_type(c),
            Rule::IncompatibleFormat => incompatible_format(c),
            Rule::CapacityUnknown => capacity_unknown(c),
            Rule::UsedThreshold => used_threshold(c),
            Rule::Overprovisioned => overprovisioned(c),
            Rule::MissingTag => missing_tag(c),
            Rule::InFlightLimit => in_flight_limit(c),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One pool being judged for one disk, with what the rules share worked out once.
pub(super) struct Candidate<'a> {
    disk: &'a DiskToPlace,
    pool: &'a PoolCandidate,
    policy: &'a PoolPolicy,
    /// How the pool's volumes are addressed; `None` for types volmig cannot write.
    kind: Option<DiskKind>,
    /// Bytes the copy will allocate in the pool.
    pub(super) needed: u64,
}

impl<'a> Candidate<'a> {
    pub(super) fn new(
        disk: &'a DiskToPlace,
        pool: &'a PoolCandidate,
        policy: &'a PoolPolicy,
    ) -> Self {
        let kind = pool_disk_kind(&pool.pool_type);
        // A type volmig cannot write to is rejected before space is
        // considered; counting it thick keeps `needed` total.
        // SHALLOW: the top's allocation plus every layer the pool lacks.
        let layers: u64 = disk
            .shallow_layers
            .iter()
            .filter(|l| !l.present_in.contains(&pool.name))
            .map(|l| l.allocation)
            .sum();
        let needed = space_needed(
            kind.unwrap_or(DiskKind::Block),
            disk.virtual_size,
            disk.copy_allocation(),
        )
        .saturating_add(layers);
        Candidate {
            disk,
            pool,
            policy,
            kind,
            needed,
        }
    }

    /// Why `needed` is what it is, for reasons about space.
    fn needed_basis(&self) -> &'static str {
        if !self.disk.shallow_layers.is_empty() {
            return "the top image's allocation plus the backing layers the pool does not hold yet (SHALLOW)";
        }
        let flattened = !self.disk.flattened_layers.is_empty();
        match self.kind {
            Some(DiskKind::File | DiskKind::Network) if flattened => {
                "the allocations of the top image and its backing layers, merged by FLATTEN, at most the virtual size"
            }
            Some(DiskKind::File) => "the disk's allocation: file pools keep the copy sparse",
            Some(DiskKind::Network) => "the disk's allocation: rbd images stay thin",
            Some(DiskKind::Block) | None => "the disk's virtual size: block pools are thick",
        }
    }
}

fn inactive(c: &Candidate<'_>) -> Result<(), String> {
    if c.pool.active {
        return Ok(());
    }
    Err(format!(
        "pool '{}' is not active; start it with `virsh pool-start {}`",
        c.pool.name, c.pool.name
    ))
}

fn source_pool(c: &Candidate<'_>) -> Result<(), String> {
    if c.pool.storage_id != c.disk.source_storage_id {
        return Ok(());
    }
    Err(format!(
        "pool '{}' (storage '{}') is where the disk is now; the destination must be other storage",
        c.pool.name, c.pool.storage_id
    ))
}

fn maintenance(c: &Candidate<'_>) -> Result<(), String> {
    let Some(flag) = c.pool.maintenance.as_ref().filter(|m| m.on) else {
        return Ok(());
    };
    let reason = match flag.reason.as_deref() {
        Some(r) if !r.is_empty() => format!(": {r}"),
        _ => String::new(),
    };
    Err(format!(
        "pool '{}' is in maintenance since {} (set by {}{reason}); turn it off with `volmig pool maintenance {} off`",
        c.pool.name,
        utc_time(flag.since_ms),
        flag.actor,
        c.pool.name
    ))
}

fn unreachable(c: &Candidate<'_>) -> Result<(), String> {
    if c.pool.reachable_from.contains(&c.disk.node_id) {
        return Ok(());
    }
    let reached_by = if c.pool.reachable_from.is_empty() {
        "no node reports it".to_string()
    } else {
        format!("reachable from {}", c.pool.reachable_from.join(", "))
    };
    Err(format!(
        "pool '{}' is not reachable from node '{}', which runs the domain ({reached_by})",
        c.pool.name, c.disk.node_id
    ))
}

fn incompatible_type(c: &Candidate<'_>) -> Result<(), String> {
    if c.kind.is_some() {
        return Ok(());
    }
    Err(format!(
        "pool '{}' is of type '{}', which volmig cannot write to (supported: {SUPPORTED_TYPES})",
        c.pool.name, c.pool.pool_type
    ))
}

fn incompatible_format(c: &Candidate<'_>) -> Result<(), String> {
    let raw_only = matches!(c.kind, Some(DiskKind::Block | DiskKind::Network));
    if !c.disk.shallow_layers.is_empty()
        && (raw_only || c.disk.requested_format == Some(ImageFormat::Raw))
    {
        return Err(format!(
            "chain policy SHALLOW keeps a qcow2 chain of files, and pool '{}' (type '{}') would hold a raw volume; choose a dir, fs or netfs pool, or FLATTEN",
            c.pool.name, c.pool.pool_type
        ));
    }
    if raw_only && c.disk.requested_format == Some(ImageFormat::Qcow2) {
        return Err(format!(
            "qcow2 was requested, but pool '{}' is of type '{}', which holds raw volumes only; ask for raw or leave the format unset",
            c.pool.name, c.pool.pool_type
        ));
    }
    let raw = raw_only || c.disk.requested_format == Some(ImageFormat::Raw);
    if raw && !c.disk.checkpoints.is_empty() {
        return Err(format!(
            "the disk is tracked by checkpoint(s) {} (incremental-backup dirty bitmaps), which only qcow2 can hold, and pool '{}' ({}) would get it as raw",
            c.disk.checkpoints.join(", "),
            c.pool.name,
            c.pool.pool_type
        ));
    }
    Ok(())
}

fn capacity_unknown(c: &Candidate<'_>) -> Result<(), String> {
    if c.pool.capacity != 0 {
        return Ok(());
    }
    Err(format!(
        "pool '{}' reports no capacity (as an rbd pool does without ceph-mgr statistics), so its free space cannot be checked",
        c.pool.name
    ))
}

fn used_threshold(c: &Candidate<'_>) -> Result<(), String> {
    let pool = c.pool;
    if pool.capacity == 0 {
        // capacity_unknown's concern.
        return Ok(());
    }
    if c.needed > pool.available {
        return Err(format!(
            "pool '{}' has {} available but placing the disk needs {} ({})",
            pool.name,
            human_bytes(pool.available),
            human_bytes(c.needed),
            c.needed_basis()
        ));
    }
    let used_after = pool.allocation.saturating_add(c.needed) as f64 / pool.capacity as f64;
    let threshold = c.policy.used_threshold;
    // A NaN threshold compares false with everything; refuse rather than accept.
    if used_after <= threshold && !threshold.is_nan() {
        return Ok(());
    }
    Err(format!(
        "pool '{}' would be {} used after placing {} (threshold {}); {} is {}",
        pool.name,
        percent(used_after),
        human_bytes(c.needed),
        percent(threshold),
        human_bytes(c.needed),
        c.needed_basis()
    ))
}

fn overprovisioned(c: &Candidate<'_>) -> Result<(), String> {
    let (pool, disk) = (c.pool, c.disk);
    let Some(factor) = c.policy.overprovision_factor else {
        return Ok(());
    };
    if pool.capacity == 0 {
        // capacity_unknown's concern.
        return Ok(());
    }
    let provisioned_after = pool.provisioned.saturating_add(disk.virtual_size);
    let ratio = provisioned_after as f64 / pool.capacity as f64;
    if ratio <= factor && !factor.is_nan() {
        return Ok(());
    }
    Err(format!(
        "pool '{}' would have {} provisioned on {} of capacity ({ratio:.2}×) after adding this {} disk (over-provisioning factor {factor})",
        pool.name,
        human_bytes(provisioned_after),
        human_bytes(pool.capacity),
        human_bytes(disk.virtual_size)
    ))
}

fn missing_tag(c: &Candidate<'_>) -> Result<(), String> {
    let mut missing: Vec<&str> = Vec::new();
    for tag in &c.disk.required_tags {
        if !c.pool.tags.contains(tag) && !missing.contains(&tag.as_str()) {
            missing.push(tag);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let has = if c.pool.tags.is_empty() {
        "it has none".to_string()
    } else {
        format!("it has {}", c.pool.tags.join(", "))
    };
    Err(format!(
        "pool '{}' lacks required tag(s) {} ({has})",
        c.pool.name,
        missing.join(", ")
    ))
}

fn in_flight_limit(c: &Candidate<'_>) -> Result<(), String> {
    match c.policy.max_in_flight {
        Some(max) if c.pool.in_flight >= max => Err(format!(
            "pool '{}' already has {} migration(s) writing to it (limit {max})",
            c.pool.name, c.pool.in_flight
        )),
        _ => Ok(()),
    }
}

/// A ratio as a percentage with at most one decimal: `91.2 %`, `85 %`.
fn percent(ratio: f64) -> String {
    let text = format!("{:.1}", ratio * 100.0);
    match text.strip_suffix(".0") {
        Some(whole) => format!("{whole} %"),
        None => format!("{text} %"),
    }
}
