//! Properties of every plan, over generated pools, policies and disks.

use std::collections::BTreeMap;

use proptest::prelude::*;

use volmig_types::host::ImageFormat;

use super::rules::Candidate;
use super::*;

const GIB: u64 = 1 << 30;

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
            // Mostly no flag; an off flag must count as none.
            prop::option::weighted(0.3, any::<bool>()),
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
                (reachable_from, tags, in_flight, maintenance),
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
                    maintenance: maintenance.map(PoolMaintenance::sample),
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
                .all(|d| matches!(d.verdict, PoolVerdict::Rejected(_))));
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
        prop_assert!(pool.maintenance.as_ref().is_none_or(|m| !m.on));
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
            &PoolVerdict::Accepted(Fit {
                score: (pool.available - needed) as f64,
                free_after: pool.available - needed,
            })
        );
    }

    #[test]
    fn a_pool_put_in_maintenance_is_never_chosen_and_the_others_keep_their_verdicts(
        disk in arb_disk(),
        (pools, policies) in arb_pools(),
        pick in any::<prop::sample::Index>(),
    ) {
        prop_assume!(!pools.is_empty());
        let flagged_id = pools[pick.index(pools.len())].storage_id.clone();
        let flagged: Vec<PoolCandidate> = pools
            .iter()
            .map(|p| PoolCandidate {
                maintenance: if p.storage_id == flagged_id { Some(PoolMaintenance::sample(true)) } else { p.maintenance.clone() },
                ..p.clone()
            })
            .collect();
        let before = plan(&disk, &pools, policy_of(&policies));
        let after = plan(&disk, &flagged, policy_of(&policies));
        prop_assert!(after.chosen().is_none_or(|c| c.storage_id != flagged_id));
        let verdict = |p: &PlacementPlan, id: &str| {
            p.decisions.iter().find(|d| d.storage_id == id).map(|d| d.verdict.clone())
        };
        for pool in &pools {
            let (was, is) = (verdict(&before, &pool.storage_id), verdict(&after, &pool.storage_id));
            if pool.storage_id != flagged_id {
                prop_assert_eq!(was, is);
                continue;
            }
            let Some(PoolVerdict::Rejected(rejection)) = is else {
                return Err(TestCaseError::fail("a pool in maintenance was accepted"));
            };
            // Only the rules before it (inactive, source_pool) may speak first.
            if rejection.rule != Rule::Maintenance {
                prop_assert!(matches!(rejection.rule, Rule::Inactive | Rule::SourcePool));
            }
        }
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
                    PoolVerdict::Accepted(fit) => Ok(*fit),
                    PoolVerdict::Rejected(rejection) => Err(rejection.clone()),
                }
            );
            match &decision.verdict {
                PoolVerdict::Accepted(fit) => {
                    prop_assert!(!seen_rejected);
                    prop_assert!(fit.free_after <= last_free);
                    last_free = fit.free_after;
                }
                PoolVerdict::Rejected(rejection) => {
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
