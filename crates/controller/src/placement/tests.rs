use super::*;

use volmig_types::host::ImageFormat;

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
        maintenance: None,
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

fn order(plan: &PlacementPlan) -> Vec<&str> {
    plan.decisions
        .iter()
        .map(|d| d.storage_id.as_str())
        .collect()
}

fn fit(plan: &PlacementPlan, storage_id: &str) -> Option<Fit> {
    plan.decisions
        .iter()
        .find(|d| d.storage_id == storage_id)
        .and_then(|d| match d.verdict {
            PoolVerdict::Accepted(fit) => Some(fit),
            PoolVerdict::Rejected(_) => None,
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
                maintenance: Some(PoolMaintenance::sample(true)),
                ..pool()
            },
            ..case(
                Rule::Maintenance,
                &[
                    "'images' is in maintenance since 2024-05-01 12:00:00 UTC",
                    "(set by operator:alice: disk replacement)",
                    "`volmig pool maintenance images off`",
                ],
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
                verdict: PoolVerdict::Rejected(rejection.clone()),
            }],
            "{rule}"
        );
    }
}

#[test]
fn a_pool_whose_maintenance_was_turned_off_is_chosen_again() {
    let off = PoolCandidate {
        maintenance: Some(PoolMaintenance::sample(false)),
        ..pool()
    };
    let planned = plan(&disk(), &[off], |_| PoolPolicy::default());
    assert_eq!(planned.chosen().map(|d| d.name.as_str()), Some("images"));
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
    let Some(PoolVerdict::Rejected(r)) = rejected else {
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
    let PoolVerdict::Rejected(rejection) = &planned.decisions[1].verdict else {
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
    let PoolVerdict::Rejected(rejection) = &planned.decisions[1].verdict else {
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
