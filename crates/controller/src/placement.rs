//! Placement: which storage pool a disk should move to, and why every other
//! pool was not chosen.
//!
//! Pure functions over plain values, so that a placement can be explained,
//! replayed and tested without a cluster: the controller hands in the disk, its
//! pool inventory and a policy per pool, and gets back a [`Plan`] with a
//! [`Decision`] for every pool. `PlanMigration` shows that plan as it is.
//!
//! # Pipeline
//!
//! Each pool is run through the rules of [`Rule::ALL`], in this order; the first
//! rule that fails rejects the pool with an operator-readable reason carrying
//! the numbers behind it:
//!
//! 1. `inactive`: the pool is not running.
//! 2. `source_pool`: it is the storage the disk is on now (same `storage_id`).
//! 3. `unreachable`: the node running the domain cannot reach it.
//! 4. `incompatible_type`: volmig cannot write to this pool type. It writes to
//!    `dir`, `fs`, `netfs` (file), `logical`, `disk`, `iscsi` (block) and `rbd`.
//! 5. `incompatible_format`: qcow2 was asked for on a block or rbd pool, which
//!    hold raw volumes only; or the disk is tracked by checkpoints and would
//!    become raw there (only qcow2 holds their dirty bitmaps).
//! 6. `capacity_unknown`: the pool reports a capacity of 0 (an rbd pool without
//!    ceph-mgr statistics), so its free space cannot be checked.
//! 7. `used_threshold`: the bytes the disk needs exceed what the pool has
//!    available, or would take the pool above its used threshold (default
//!    85 %): `(allocation + needed) / capacity > used_threshold`.
//! 8. `overprovisioned`: only when the pool's policy sets a factor:
//!    `(provisioned + virtual_size) / capacity > factor`.
//! 9. `missing_tag`: the pool lacks a tag the request requires.
//! 10. `in_flight_limit`: the pool already has its maximum of migrations
//!     writing to it.
//!
//! # Space accounting
//!
//! The bytes a disk needs depend on the destination, because that is what the
//! copy will allocate there: file and rbd pools keep the copy as sparse as the
//! source, so they need the disk's **allocation**; block pools (`logical`,
//! `disk`, `iscsi`) allocate a volume of the full **virtual size**.
//!
//! # Score
//!
//! An accepted pool's score is the number of bytes it has free after the
//! placement, `available - needed`: higher is better, so the pool left with
//! the most room is chosen. Ties go to the pool with fewer migrations in
//! flight, then to the lexicographically smaller `storage_id`.
//!
//! # Invariants
//!
//! - Every input pool appears exactly once in [`Plan::decisions`]: accepted
//!   pools first, best first, then rejected pools ordered by `storage_id`.
//! - The plan depends only on the set of pools, not their order, as long as
//!   `storage_id` is unique (the inventory lists a shared pool once).
//! - [`check_named`] gives a pool the caller named exactly the verdict [`plan`]
//!   gives it, so naming a pool never bypasses a rule silently.

use std::cmp::Ordering;
use std::fmt;

use volmig_types::units::human_bytes;

use volmig_types::host::{
    flattened_allocation, pool_disk_kind, space_needed, DiskKind, ImageFormat,
};

/// The pool types volmig can write to, as operators should read them.
const SUPPORTED_TYPES: &str = "dir, fs, netfs, logical, disk, iscsi, rbd";

/// One pool as the controller's inventory sees it. A pool that several hosts
/// share appears once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolCandidate {
    /// Identity of the storage across hosts; unique in the inventory.
    pub storage_id: String,
    /// Pool name, as known on the domain's node when that node reaches it.
    pub name: String,
    /// libvirt pool type: `dir`, `fs`, `netfs`, `logical`, `disk`, `iscsi`, `rbd`, ...
    pub pool_type: String,
    /// Whether the pool is running.
    pub active: bool,
    /// Bytes; 0 means the pool does not report it.
    pub capacity: u64,
    /// Bytes in use.
    pub allocation: u64,
    /// Bytes free for new volumes.
    pub available: u64,
    /// Sum of the virtual sizes of the pool's volumes, in bytes.
    pub provisioned: u64,
    /// Ids of the nodes that reach the pool.
    pub reachable_from: Vec<String>,
    /// Operator-assigned tags (`ssd`, `zone-a`, ...).
    pub tags: Vec<String>,
    /// Migrations currently writing to the pool.
    pub in_flight: u32,
}

/// The limits an operator set for one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPolicy {
    /// Highest fraction of the capacity that may be used after a placement.
    pub used_threshold: f64,
    /// Highest ratio of provisioned virtual bytes to capacity; `None` does not
    /// limit thin provisioning.
    pub overprovision_factor: Option<f64>,
    /// Most migrations that may write to the pool at once; `None` is unlimited.
    pub max_in_flight: Option<u32>,
}

impl PoolPolicy {
    /// The used threshold when none is configured: 85 %.
    pub const DEFAULT_USED_THRESHOLD: f64 = 0.85;
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            used_threshold: Self::DEFAULT_USED_THRESHOLD,
            overprovision_factor: None,
            max_in_flight: None,
        }
    }
}

/// The disk to place, as the node running its domain reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskToPlace {
    /// The node running the domain.
    pub node_id: String,
    /// `storage_id` of the pool the disk is on now.
    pub source_storage_id: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Bytes the source image (the top of a chain) occupies.
    pub allocation: u64,
    /// The format the request asks for; `None` takes the pool's natural format.
    pub requested_format: Option<ImageFormat>,
    /// Tags the destination pool must all carry.
    pub required_tags: Vec<String>,
    /// Chain policy SHALLOW: the disk's backing layers, which the destination
    /// needs too unless it already holds them. Empty when the chain is
    /// flattened or there is none.
    pub shallow_layers: Vec<LayerToPlace>,
    /// Chain policy FLATTEN: the allocations of the backing layers the copy
    /// merges into one image. Empty under SHALLOW or when there is no chain.
    pub flattened_layers: Vec<u64>,
    /// Checkpoints whose dirty bitmaps live in the disk (qcow2 only can hold them).
    pub checkpoints: Vec<String>,
}

impl DiskToPlace {
    /// Bytes of data the copy holds: the top image's allocation, or when the
    /// chain is flattened, every layer's merged and capped at the virtual size
    /// (the node checks the same, so placement never picks a pool it refuses).
    pub fn copy_allocation(&self) -> u64 {
        // Without a chain the node counts the allocation uncapped (qcow2
        // metadata can make it exceed the virtual size), and so does this.
        if self.flattened_layers.is_empty() {
            return self.allocation;
        }
        flattened_allocation(
            self.allocation,
            self.flattened_layers.iter().copied(),
            self.virtual_size,
        )
    }
}

/// One backing layer of a disk migrated SHALLOW.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerToPlace {
    /// Bytes its copy would spend.
    pub allocation: u64,
    /// Pools (by name on the domain's node) that already hold it.
    pub present_in: Vec<String>,
}

/// A placement rule; [`Rule::ALL`] is the order in which they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// The pool is not running.
    Inactive,
    /// The pool is the storage the disk is on now.
    SourcePool,
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
    pub const ALL: [Rule; 10] = [
        Rule::Inactive,
        Rule::SourcePool,
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
    fn check(self, c: &Candidate<'_>) -> Result<(), String> {
        match self {
            Rule::Inactive => inactive(c),
            Rule::SourcePool => source_pool(c),
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

/// How well an accepted pool fits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Higher is better: the free bytes left after placement (see the module docs).
    pub score: f64,
    /// Bytes the pool has available after placement.
    pub free_after: u64,
}

/// Why a pool was rejected: the first rule it fails and an operator-readable
/// sentence with the numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    /// The rule that rejected the pool.
    pub rule: Rule,
    /// Why, for an operator.
    pub reason: String,
}

/// The outcome for one pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The pool can take the disk.
    Accepted(Fit),
    /// The pool cannot take the disk.
    Rejected(Rejection),
}

/// The verdict on one pool, named so an operator can find it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The pool's `storage_id`.
    pub storage_id: String,
    /// The pool's name.
    pub name: String,
    /// Accepted with its fit, or rejected with the reason.
    pub verdict: Verdict,
}

/// A placement: a decision for every pool considered.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Accepted pools first, by score (best first), then rejected pools by
    /// `storage_id`.
    pub decisions: Vec<Decision>,
}

impl Plan {
    /// The chosen pool: the best accepted one, `None` when every pool was rejected.
    pub fn chosen(&self) -> Option<&Decision> {
        self.decisions
            .first()
            .filter(|d| matches!(d.verdict, Verdict::Accepted(_)))
    }
}

/// Places `disk` among `pools`, taking each pool's limits from `policy`.
pub fn plan(
    disk: &DiskToPlace,
    pools: &[PoolCandidate],
    policy: impl Fn(&PoolCandidate) -> PoolPolicy,
) -> Plan {
    let mut assessed: Vec<(&PoolCandidate, Result<Fit, Rejection>)> = pools
        .iter()
        .map(|pool| (pool, check_named(disk, pool, &policy(pool))))
        .collect();
    assessed.sort_by(|(a, fit_a), (b, fit_b)| rank(a, fit_a, b, fit_b));
    let decisions = assessed
        .into_iter()
        .map(|(pool, outcome)| Decision {
            storage_id: pool.storage_id.clone(),
            name: pool.name.clone(),
            verdict: match outcome {
                Ok(fit) => Verdict::Accepted(fit),
                Err(rejection) => Verdict::Rejected(rejection),
            },
        })
        .collect();
    Plan { decisions }
}

/// Checks one pool against every rule, in order: for a pool the caller named
/// instead of letting [`plan`] choose. The verdict is the one [`plan`] gives it.
pub fn check_named(
    disk: &DiskToPlace,
    pool: &PoolCandidate,
    policy: &PoolPolicy,
) -> Result<Fit, Rejection> {
    let candidate = Candidate::new(disk, pool, policy);
    for rule in Rule::ALL {
        rule.check(&candidate)
            .map_err(|reason| Rejection { rule, reason })?;
    }
    // The used_threshold rule passed, so `needed <= available`.
    let free_after = pool.available.saturating_sub(candidate.needed);
    Ok(Fit {
        score: free_after as f64,
        free_after,
    })
}

/// The total order of [`Plan::decisions`]. Accepted pools are ordered by the
/// exact `free_after` rather than the `f64` score so that ranking stays exact;
/// the score is a monotone function of it.
fn rank(
    a: &PoolCandidate,
    fit_a: &Result<Fit, Rejection>,
    b: &PoolCandidate,
    fit_b: &Result<Fit, Rejection>,
) -> Ordering {
    let by_identity = || {
        a.storage_id
            .cmp(&b.storage_id)
            .then_with(|| a.name.cmp(&b.name))
    };
    match (fit_a, fit_b) {
        (Ok(fa), Ok(fb)) => fb
            .free_after
            .cmp(&fa.free_after)
            .then(a.in_flight.cmp(&b.in_flight))
            .then_with(by_identity),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => by_identity(),
    }
}

/// One pool being judged for one disk, with what the rules share worked out once.
struct Candidate<'a> {
    disk: &'a DiskToPlace,
    pool: &'a PoolCandidate,
    policy: &'a PoolPolicy,
    /// How the pool's volumes are addressed; `None` for types volmig cannot write.
    kind: Option<DiskKind>,
    /// Bytes the copy will allocate in the pool.
    needed: u64,
}

impl<'a> Candidate<'a> {
    fn new(disk: &'a DiskToPlace, pool: &'a PoolCandidate, policy: &'a PoolPolicy) -> Self {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const GIB: u64 = 1 << 30;

    /// A pool that accepts [`disk`] under the default policy.
    fn pool() -> PoolCandidate {
        PoolCandidate {
            storage_id: "s-images".to_string(),
            name: "images".to_string(),
            pool_type: "dir".to_string(),
            active: true,
            capacity: 100 * GIB,
            allocation: 40 * GIB,
            available: 60 * GIB,
            provisioned: 50 * GIB,
            reachable_from: vec!["n1".to_string()],
            tags: vec!["ssd".to_string()],
            in_flight: 0,
        }
    }

    /// A 20 GiB disk with 8 GiB allocated, on node n1.
    fn disk() -> DiskToPlace {
        DiskToPlace {
            node_id: "n1".to_string(),
            source_storage_id: "s-src".to_string(),
            virtual_size: 20 * GIB,
            allocation: 8 * GIB,
            requested_format: None,
            required_tags: Vec::new(),
            shallow_layers: Vec::new(),
            flattened_layers: Vec::new(),
            checkpoints: Vec::new(),
        }
    }

    fn named(storage_id: &str, pool: PoolCandidate) -> PoolCandidate {
        PoolCandidate {
            storage_id: storage_id.to_string(),
            name: format!("pool-{storage_id}"),
            ..pool
        }
    }

    fn order(plan: &Plan) -> Vec<&str> {
        plan.decisions
            .iter()
            .map(|d| d.storage_id.as_str())
            .collect()
    }

    fn fit(plan: &Plan, storage_id: &str) -> Option<Fit> {
        plan.decisions
            .iter()
            .find(|d| d.storage_id == storage_id)
            .and_then(|d| match d.verdict {
                Verdict::Accepted(fit) => Some(fit),
                Verdict::Rejected(_) => None,
            })
    }

    #[test]
    fn each_rule_rejects_with_its_numbers_and_check_named_agrees_with_plan() {
        struct Case {
            rule: Rule,
            disk: DiskToPlace,
            pool: PoolCandidate,
            policy: PoolPolicy,
            says: &'static [&'static str],
        }
        let case = |rule, says| Case {
            rule,
            disk: disk(),
            pool: pool(),
            policy: PoolPolicy::default(),
            says,
        };
        let cases = vec![
            Case {
                pool: PoolCandidate {
                    active: false,
                    ..pool()
                },
                ..case(
                    Rule::Inactive,
                    &["'images' is not active", "pool-start images"],
                )
            },
            Case {
                pool: PoolCandidate {
                    storage_id: "s-src".to_string(),
                    ..pool()
                },
                ..case(
                    Rule::SourcePool,
                    &["'images'", "'s-src'", "where the disk is now"],
                )
            },
            Case {
                pool: PoolCandidate {
                    reachable_from: vec!["n2".to_string(), "n3".to_string()],
                    ..pool()
                },
                ..case(Rule::Unreachable, &["node 'n1'", "reachable from n2, n3"])
            },
            Case {
                pool: PoolCandidate {
                    pool_type: "zfs".to_string(),
                    ..pool()
                },
                ..case(Rule::IncompatibleType, &["type 'zfs'", "supported: dir"])
            },
            Case {
                disk: DiskToPlace {
                    shallow_layers: vec![LayerToPlace {
                        allocation: GIB,
                        present_in: Vec::new(),
                    }],
                    ..disk()
                },
                pool: PoolCandidate {
                    pool_type: "rbd".to_string(),
                    ..pool()
                },
                ..case(Rule::IncompatibleFormat, &["SHALLOW", "'rbd'"])
            },
            Case {
                disk: DiskToPlace {
                    requested_format: Some(ImageFormat::Qcow2),
                    ..disk()
                },
                pool: PoolCandidate {
                    pool_type: "logical".to_string(),
                    ..pool()
                },
                ..case(
                    Rule::IncompatibleFormat,
                    &["qcow2", "'logical'", "raw volumes only"],
                )
            },
            Case {
                disk: DiskToPlace {
                    checkpoints: vec!["nightly".into()],
                    ..disk()
                },
                pool: PoolCandidate {
                    pool_type: "rbd".to_string(),
                    ..pool()
                },
                ..case(
                    Rule::IncompatibleFormat,
                    &["checkpoint(s) nightly", "only qcow2", "'images' (rbd)"],
                )
            },
            Case {
                disk: DiskToPlace {
                    checkpoints: vec!["nightly".into()],
                    requested_format: Some(ImageFormat::Raw),
                    ..disk()
                },
                ..case(Rule::IncompatibleFormat, &["checkpoint(s) nightly", "raw"])
            },
            Case {
                pool: PoolCandidate {
                    pool_type: "rbd".to_string(),
                    capacity: 0,
                    allocation: 0,
                    available: 0,
                    ..pool()
                },
                ..case(Rule::CapacityUnknown, &["reports no capacity", "ceph-mgr"])
            },
            Case {
                // 892 GiB + 20 GiB (thick) of 1000 GiB = 91.2 %.
                pool: PoolCandidate {
                    pool_type: "logical".to_string(),
                    capacity: 1000 * GIB,
                    allocation: 892 * GIB,
                    available: 108 * GIB,
                    ..pool()
                },
                ..case(
                    Rule::UsedThreshold,
                    &[
                        "would be 91.2 % used after placing 20.0 GiB (threshold 85 %)",
                        "virtual size",
                    ],
                )
            },
            Case {
                // Plenty of capacity on paper, but only 5 GiB available (reserved blocks).
                pool: PoolCandidate {
                    capacity: 1000 * GIB,
                    allocation: 100 * GIB,
                    available: 5 * GIB,
                    ..pool()
                },
                ..case(
                    Rule::UsedThreshold,
                    &[
                        "has 5.0 GiB available but placing the disk needs 8.0 GiB",
                        "allocation",
                    ],
                )
            },
            Case {
                // 140 GiB + 20 GiB provisioned on 100 GiB = 1.60×.
                pool: PoolCandidate {
                    provisioned: 140 * GIB,
                    ..pool()
                },
                policy: PoolPolicy {
                    overprovision_factor: Some(1.5),
                    ..PoolPolicy::default()
                },
                ..case(
                    Rule::Overprovisioned,
                    &[
                        "160.0 GiB provisioned on 100.0 GiB",
                        "(1.60×)",
                        "20.0 GiB disk",
                        "factor 1.5",
                    ],
                )
            },
            Case {
                disk: DiskToPlace {
                    required_tags: vec![
                        "ssd".into(),
                        "zone-a".into(),
                        "zone-a".into(),
                        "nvme".into(),
                    ],
                    ..disk()
                },
                ..case(
                    Rule::MissingTag,
                    &["lacks required tag(s) zone-a, nvme (it has ssd)"],
                )
            },
            Case {
                pool: PoolCandidate {
                    in_flight: 2,
                    ..pool()
                },
                policy: PoolPolicy {
                    max_in_flight: Some(2),
                    ..PoolPolicy::default()
                },
                ..case(
                    Rule::InFlightLimit,
                    &["already has 2 migration(s)", "(limit 2)"],
                )
            },
        ];
        for Case {
            rule,
            disk,
            pool,
            policy,
            says,
        } in cases
        {
            let named = check_named(&disk, &pool, &policy);
            let Err(rejection) = &named else {
                panic!("{rule}: expected a rejection, got {named:?}");
            };
            assert_eq!(rejection.rule, rule, "{rejection}");
            for fragment in says {
                assert!(
                    rejection.reason.contains(fragment),
                    "{rule}: {:?} does not contain {fragment:?}",
                    rejection.reason
                );
            }
            let planned = plan(&disk, std::slice::from_ref(&pool), |_| policy.clone());
            assert_eq!(planned.chosen(), None, "{rule}");
            assert_eq!(
                planned.decisions,
                vec![Decision {
                    storage_id: pool.storage_id.clone(),
                    name: pool.name.clone(),
                    verdict: Verdict::Rejected(rejection.clone()),
                }],
                "{rule}"
            );
        }
    }

    #[test]
    fn rule_names_are_distinct_snake_case() {
        let names: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        assert_eq!(Rule::UsedThreshold.to_string(), "used_threshold");
    }

    #[test]
    fn first_failing_rule_is_the_reason() {
        let inactive_and_unreachable = PoolCandidate {
            active: false,
            reachable_from: Vec::new(),
            ..pool()
        };
        let rejection = check_named(&disk(), &inactive_and_unreachable, &PoolPolicy::default());
        assert_eq!(rejection.map_err(|r| r.rule), Err(Rule::Inactive));
    }

    #[test]
    fn accepted_pool_scores_its_free_bytes_after_placement() {
        let result = check_named(&disk(), &pool(), &PoolPolicy::default());
        let expected = 60 * GIB - 8 * GIB;
        assert_eq!(
            result,
            Ok(Fit {
                score: expected as f64,
                free_after: expected
            })
        );
    }

    #[test]
    fn file_and_rbd_pools_need_the_allocation_block_pools_the_virtual_size() {
        let pools: Vec<PoolCandidate> = ["dir", "netfs", "rbd", "logical", "disk", "iscsi"]
            .iter()
            .map(|t| PoolCandidate {
                pool_type: t.to_string(),
                ..named(t, pool())
            })
            .collect();
        let planned = plan(&disk(), &pools, |_| PoolPolicy::default());
        for thin in ["dir", "netfs", "rbd"] {
            assert_eq!(
                fit(&planned, thin).map(|f| f.free_after),
                Some(52 * GIB),
                "{thin}"
            );
        }
        for thick in ["logical", "disk", "iscsi"] {
            assert_eq!(
                fit(&planned, thick).map(|f| f.free_after),
                Some(40 * GIB),
                "{thick}"
            );
        }
    }

    #[test]
    fn shallow_needs_the_top_plus_the_layers_a_pool_lacks() {
        let with_template = named("has", pool());
        let without = named("lacks", pool());
        let disk = DiskToPlace {
            shallow_layers: vec![LayerToPlace {
                allocation: 30 * GIB,
                present_in: vec![with_template.name.clone()],
            }],
            ..disk()
        };
        let planned = plan(&disk, &[with_template, without], |_| PoolPolicy::default());
        // 60 GiB free: the 8 GiB top alone where the template is, 38 GiB elsewhere.
        assert_eq!(fit(&planned, "has").map(|f| f.free_after), Some(52 * GIB));
        assert_eq!(fit(&planned, "lacks").map(|f| f.free_after), Some(22 * GIB));
    }

    /// A 20 GiB disk whose 1 GiB top sits on a 12 GiB backing layer.
    fn chained() -> DiskToPlace {
        DiskToPlace {
            allocation: GIB,
            flattened_layers: vec![12 * GIB],
            ..disk()
        }
    }

    /// A pool with `available` GiB free and 10 GiB used out of 100.
    fn with_room(storage_id: &str, available: u64) -> PoolCandidate {
        PoolCandidate {
            allocation: 10 * GIB,
            available: available * GIB,
            ..named(storage_id, pool())
        }
    }

    #[test]
    fn flatten_needs_every_layer_of_the_chain_not_just_the_top() {
        let pools = [with_room("top-only", 5), with_room("whole-chain", 20)];
        let planned = plan(&chained(), &pools, |_| PoolPolicy::default());
        let rejected = planned
            .decisions
            .iter()
            .find(|d| d.storage_id == "top-only")
            .map(|d| d.verdict.clone());
        let Some(Verdict::Rejected(r)) = rejected else {
            panic!("a pool with room for the top only was accepted: {rejected:?}");
        };
        assert_eq!(r.rule, Rule::UsedThreshold);
        for says in ["5.0 GiB available", "needs 13.0 GiB", "FLATTEN"] {
            assert!(r.reason.contains(says), "{:?} lacks {says:?}", r.reason);
        }
        assert_eq!(
            planned.chosen().map(|d| d.storage_id.as_str()),
            Some("whole-chain")
        );
        assert_eq!(
            fit(&planned, "whole-chain").map(|f| f.free_after),
            Some(7 * GIB)
        );

        // SHALLOW copies the top alone to a pool that already holds the layer.
        let shallow = DiskToPlace {
            flattened_layers: Vec::new(),
            shallow_layers: vec![LayerToPlace {
                allocation: 12 * GIB,
                present_in: vec![pools[0].name.clone()],
            }],
            ..chained()
        };
        let planned = plan(&shallow, &pools, |_| PoolPolicy::default());
        assert_eq!(
            fit(&planned, "top-only").map(|f| f.free_after),
            Some(4 * GIB)
        );
    }

    #[test]
    fn flatten_counts_the_chain_at_most_at_the_virtual_size() {
        let disk = DiskToPlace {
            flattened_layers: vec![12 * GIB, 30 * GIB],
            ..chained()
        };
        let planned = plan(&disk, &[with_room("roomy", 60)], |_| PoolPolicy::default());
        assert_eq!(fit(&planned, "roomy").map(|f| f.free_after), Some(40 * GIB));
    }

    #[test]
    fn a_disk_that_fits_sparse_does_not_fit_thick() {
        // 15 GiB available: the 8 GiB allocation fits, the 20 GiB volume does not.
        let tight = PoolCandidate {
            capacity: 100 * GIB,
            allocation: 10 * GIB,
            available: 15 * GIB,
            ..pool()
        };
        let pools = vec![
            PoolCandidate {
                pool_type: "dir".to_string(),
                ..named("file", tight.clone())
            },
            PoolCandidate {
                pool_type: "logical".to_string(),
                ..named("block", tight)
            },
        ];
        let planned = plan(&disk(), &pools, |_| PoolPolicy::default());
        assert_eq!(order(&planned), ["file", "block"]);
        assert_eq!(fit(&planned, "file").map(|f| f.free_after), Some(7 * GIB));
        let Verdict::Rejected(rejection) = &planned.decisions[1].verdict else {
            panic!("the block pool should be rejected: {planned:?}");
        };
        assert_eq!(rejection.rule, Rule::UsedThreshold);
        assert!(rejection.reason.contains("needs 20.0 GiB"), "{rejection}");
    }

    #[test]
    fn most_free_space_wins_even_with_more_in_flight() {
        let pools = vec![
            PoolCandidate {
                available: 50 * GIB,
                in_flight: 0,
                ..named("a", pool())
            },
            PoolCandidate {
                available: 60 * GIB,
                in_flight: 3,
                ..named("b", pool())
            },
        ];
        let planned = plan(&disk(), &pools, |_| PoolPolicy::default());
        assert_eq!(order(&planned), ["b", "a"]);
        assert_eq!(planned.chosen().map(|d| d.name.as_str()), Some("pool-b"));
    }

    #[test]
    fn equal_free_space_goes_to_fewer_in_flight() {
        let pools = vec![
            PoolCandidate {
                in_flight: 1,
                ..named("a", pool())
            },
            PoolCandidate {
                in_flight: 0,
                ..named("b", pool())
            },
        ];
        let planned = plan(&disk(), &pools, |_| PoolPolicy::default());
        assert_eq!(order(&planned), ["b", "a"]);
    }

    #[test]
    fn full_tie_goes_to_the_smaller_storage_id() {
        let pools = vec![named("b", pool()), named("c", pool()), named("a", pool())];
        let planned = plan(&disk(), &pools, |_| PoolPolicy::default());
        assert_eq!(order(&planned), ["a", "b", "c"]);
    }

    #[test]
    fn rejected_pools_follow_accepted_ones_by_storage_id() {
        let pools = vec![
            PoolCandidate {
                active: false,
                ..named("a", pool())
            },
            named("z", pool()),
            PoolCandidate {
                pool_type: "zfs".to_string(),
                ..named("c", pool())
            },
            named("y", pool()),
        ];
        let planned = plan(&disk(), &pools, |_| PoolPolicy::default());
        assert_eq!(order(&planned), ["y", "z", "a", "c"]);
    }

    #[test]
    fn no_pools_or_no_acceptable_pool_chooses_nothing() {
        assert_eq!(plan(&disk(), &[], |_| PoolPolicy::default()).chosen(), None);
        let full = PoolCandidate {
            available: 0,
            ..pool()
        };
        assert_eq!(
            plan(&disk(), &[full], |_| PoolPolicy::default()).chosen(),
            None
        );
    }

    #[test]
    fn policy_is_taken_per_pool() {
        // Both pools end at 48 % used; only the strict one refuses.
        let pools = vec![named("strict", pool()), named("lax", pool())];
        let planned = plan(&disk(), &pools, |p| PoolPolicy {
            used_threshold: if p.storage_id == "strict" { 0.4 } else { 0.9 },
            ..PoolPolicy::default()
        });
        assert_eq!(order(&planned), ["lax", "strict"]);
        let Verdict::Rejected(rejection) = &planned.decisions[1].verdict else {
            panic!("strict should be rejected: {planned:?}");
        };
        assert!(
            rejection.reason.contains("48 % used") && rejection.reason.contains("threshold 40 %"),
            "{rejection}"
        );
    }

    #[test]
    fn a_nan_threshold_refuses_instead_of_accepting() {
        let policy = PoolPolicy {
            used_threshold: f64::NAN,
            overprovision_factor: None,
            max_in_flight: None,
        };
        let rejection = check_named(&disk(), &pool(), &policy).map_err(|r| r.rule);
        assert_eq!(rejection, Err(Rule::UsedThreshold));
    }

    const TYPES: [&str; 9] = [
        "dir", "fs", "netfs", "logical", "disk", "iscsi", "rbd", "zfs", "gluster",
    ];

    fn strings(values: Vec<&str>) -> Vec<String> {
        values.into_iter().map(str::to_string).collect()
    }

    /// Small value ranges (in half-GiB steps) so that ties and boundaries are common.
    fn arb_pool_and_policy() -> impl Strategy<Value = (PoolCandidate, PoolPolicy)> {
        (
            (
                prop::sample::select(TYPES.to_vec()),
                prop::bool::weighted(0.85),
                0u64..=16,
                0u64..=16,
                0u64..=16,
                0u64..=40,
            ),
            (
                prop::sample::subsequence(vec!["n1", "n2"], 0..=2),
                prop::sample::subsequence(vec!["ssd", "zone-a"], 0..=2),
                0u32..=3,
            ),
            (
                prop::sample::select(vec![0.5, 0.85, 1.0]),
                prop::option::of(prop::sample::select(vec![1.0, 1.5, 3.0])),
                prop::option::of(1u32..=3),
            ),
        )
            .prop_map(
                |(
                    (pool_type, active, capacity, allocation, available, provisioned),
                    (reachable_from, tags, in_flight),
                    (used_threshold, overprovision_factor, max_in_flight),
                )| {
                    let half = GIB / 2;
                    let allocation = allocation.min(capacity);
                    let available = available.min(capacity - allocation);
                    let pool = PoolCandidate {
                        storage_id: String::new(),
                        name: String::new(),
                        pool_type: pool_type.to_string(),
                        active,
                        capacity: capacity * half,
                        allocation: allocation * half,
                        available: available * half,
                        provisioned: provisioned * half,
                        reachable_from: strings(reachable_from),
                        tags: strings(tags),
                        in_flight,
                    };
                    let policy = PoolPolicy {
                        used_threshold,
                        overprovision_factor,
                        max_in_flight,
                    };
                    (pool, policy)
                },
            )
    }

    /// Pools with unique storage ids (as the inventory guarantees) and their policies.
    fn arb_pools() -> impl Strategy<Value = (Vec<PoolCandidate>, BTreeMap<String, PoolPolicy>)> {
        prop::collection::vec(arb_pool_and_policy(), 0..10).prop_map(|entries| {
            let mut pools = Vec::new();
            let mut policies = BTreeMap::new();
            for (i, (pool, policy)) in entries.into_iter().enumerate() {
                let pool = PoolCandidate {
                    storage_id: format!("s{i}"),
                    // Names may repeat across hosts; storage ids may not.
                    name: format!("p{}", i % 3),
                    ..pool
                };
                policies.insert(pool.storage_id.clone(), policy);
                pools.push(pool);
            }
            (pools, policies)
        })
    }

    fn arb_disk() -> impl Strategy<Value = DiskToPlace> {
        (
            prop::sample::select(vec!["n1", "n2"]),
            prop::sample::select(vec!["s0", "s1", "elsewhere"]),
            0u64..=8,
            0u64..=9,
            prop::option::of(prop::sample::select(vec![
                ImageFormat::Raw,
                ImageFormat::Qcow2,
            ])),
            prop::sample::subsequence(vec!["ssd", "zone-a"], 0..=2),
        )
            .prop_map(
                |(node, source, virtual_size, allocation, requested_format, tags)| DiskToPlace {
                    node_id: node.to_string(),
                    source_storage_id: source.to_string(),
                    virtual_size: virtual_size * GIB / 2,
                    // qcow2 metadata can make the allocation exceed the virtual size.
                    allocation: allocation * GIB / 2,
                    requested_format,
                    required_tags: strings(tags),
                    shallow_layers: Vec::new(),
                    flattened_layers: Vec::new(),
                    checkpoints: Vec::new(),
                },
            )
    }

    fn policy_of(
        policies: &BTreeMap<String, PoolPolicy>,
    ) -> impl Fn(&PoolCandidate) -> PoolPolicy + '_ {
        |pool| policies.get(&pool.storage_id).cloned().unwrap_or_default()
    }

    proptest! {
        #[test]
        fn chosen_pool_passes_every_rule(disk in arb_disk(), (pools, policies) in arb_pools()) {
            let planned = plan(&disk, &pools, policy_of(&policies));
            let Some(chosen) = planned.chosen() else {
                // Nothing chosen: then nothing may have been accepted.
                prop_assert!(planned
                    .decisions
                    .iter()
                    .all(|d| matches!(d.verdict, Verdict::Rejected(_))));
                return Ok(());
            };
            let Some(pool) = pools.iter().find(|p| p.storage_id == chosen.storage_id) else {
                return Err(TestCaseError::fail("the chosen pool is not an input pool"));
            };
            let policy = policy_of(&policies)(pool);
            let candidate = Candidate::new(&disk, pool, &policy);
            for rule in Rule::ALL {
                prop_assert_eq!(rule.check(&candidate), Ok(()), "{}", rule);
            }
            // And again, spelled out from the design rather than through the rules.
            let thick = matches!(pool.pool_type.as_str(), "logical" | "disk" | "iscsi");
            let thin = matches!(pool.pool_type.as_str(), "dir" | "fs" | "netfs" | "rbd");
            let file = matches!(pool.pool_type.as_str(), "dir" | "fs" | "netfs");
            let needed = if thick { disk.virtual_size } else { disk.allocation };
            prop_assert!(pool.active);
            prop_assert_ne!(&pool.storage_id, &disk.source_storage_id);
            prop_assert!(pool.reachable_from.contains(&disk.node_id));
            prop_assert!(thick || thin);
            prop_assert!(file || disk.requested_format != Some(ImageFormat::Qcow2));
            prop_assert!(pool.capacity > 0);
            prop_assert!(needed <= pool.available);
            prop_assert!(
                (pool.allocation + needed) as f64 / pool.capacity as f64 <= policy.used_threshold
            );
            if let Some(factor) = policy.overprovision_factor {
                prop_assert!(
                    (pool.provisioned + disk.virtual_size) as f64 / pool.capacity as f64 <= factor
                );
            }
            prop_assert!(disk.required_tags.iter().all(|t| pool.tags.contains(t)));
            if let Some(max) = policy.max_in_flight {
                prop_assert!(pool.in_flight < max);
            }
            prop_assert_eq!(
                &chosen.verdict,
                &Verdict::Accepted(Fit {
                    score: (pool.available - needed) as f64,
                    free_after: pool.available - needed,
                })
            );
        }

        #[test]
        fn plan_ignores_the_order_of_the_pools(
            disk in arb_disk(),
            (pools, shuffled, policies) in arb_pools().prop_flat_map(|(pools, policies)| {
                (Just(pools.clone()), Just(pools).prop_shuffle(), Just(policies))
            }),
        ) {
            prop_assert_eq!(
                plan(&disk, &pools, policy_of(&policies)),
                plan(&disk, &shuffled, policy_of(&policies))
            );
        }

        #[test]
        fn every_pool_is_decided_once_and_in_order(
            disk in arb_disk(),
            (pools, policies) in arb_pools(),
        ) {
            let planned = plan(&disk, &pools, policy_of(&policies));
            let mut decided: Vec<(&str, &str)> = planned
                .decisions
                .iter()
                .map(|d| (d.storage_id.as_str(), d.name.as_str()))
                .collect();
            let mut given: Vec<(&str, &str)> = pools
                .iter()
                .map(|p| (p.storage_id.as_str(), p.name.as_str()))
                .collect();
            decided.sort_unstable();
            given.sort_unstable();
            prop_assert_eq!(decided, given);

            // Accepted first, best first; a rejection names the first rule that fails.
            let mut seen_rejected = false;
            let mut last_free = u64::MAX;
            for decision in &planned.decisions {
                let Some(pool) = pools.iter().find(|p| p.storage_id == decision.storage_id) else {
                    return Err(TestCaseError::fail("decision for a pool not in the input"));
                };
                let policy = policy_of(&policies)(pool);
                prop_assert_eq!(
                    check_named(&disk, pool, &policy),
                    match &decision.verdict {
                        Verdict::Accepted(fit) => Ok(*fit),
                        Verdict::Rejected(rejection) => Err(rejection.clone()),
                    }
                );
                match &decision.verdict {
                    Verdict::Accepted(fit) => {
                        prop_assert!(!seen_rejected);
                        prop_assert!(fit.free_after <= last_free);
                        last_free = fit.free_after;
                    }
                    Verdict::Rejected(rejection) => {
                        seen_rejected = true;
                        let candidate = Candidate::new(&disk, pool, &policy);
                        let first_failing = Rule::ALL
                            .into_iter()
                            .find(|rule| rule.check(&candidate).is_err());
                        prop_assert_eq!(first_failing, Some(rejection.rule));
                    }
                }
            }
        }
    }
}
