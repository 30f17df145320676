//! A plan: every pool judged by the rules, then ranked.

use std::cmp::Ordering;

use super::rules::Candidate;
use super::{DiskToPlace, PoolCandidate, PoolPolicy, Rule};

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
pub enum PoolVerdict {
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
    pub verdict: PoolVerdict,
}

/// A placement: a decision for every pool considered.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementPlan {
    /// Accepted pools first, by score (best first), then rejected pools by
    /// `storage_id`.
    pub decisions: Vec<Decision>,
}

impl PlacementPlan {
    /// The chosen pool: the best accepted one, `None` when every pool was rejected.
    pub fn chosen(&self) -> Option<&Decision> {
        self.decisions
            .first()
            .filter(|d| matches!(d.verdict, PoolVerdict::Accepted(_)))
    }
}

/// Places `disk` among `pools`, taking each pool's limits from `policy`.
pub fn plan(
    disk: &DiskToPlace,
    pools: &[PoolCandidate],
    policy: impl Fn(&PoolCandidate) -> PoolPolicy,
) -> PlacementPlan {
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
                Ok(fit) => PoolVerdict::Accepted(fit),
                Err(rejection) => PoolVerdict::Rejected(rejection),
            },
        })
        .collect();
    PlacementPlan { decisions }
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

/// The total order of [`PlacementPlan::decisions`]. Accepted pools are ordered by the
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
