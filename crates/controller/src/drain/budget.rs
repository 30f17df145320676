//! A drain's bandwidth budget, shared by its running copies: each gets an
//! equal share, re-divided whenever one starts or ends, so their sum stays
//! within the budget. Pure arithmetic; the executor applies it.

/// Each copy's share when `running` copies share `budget` bytes/s: `None`
/// without a budget (0), else `budget / running`, at least 1 (a node reads
/// 0 as "unlimited"; only a budget below one byte per copy exceeds its sum).
pub fn share(budget: u64, running: usize) -> Option<u64> {
    if budget == 0 {
        return None;
    }
    let n = u64::try_from(running.max(1)).unwrap_or(u64::MAX);
    Some((budget / n).max(1))
}

/// The bandwidth changes that bring every running copy (by migration id,
/// with the share it has now) to its share among `copies` (the running ones
/// and any about to start): lowered ones first, so that the sum never
/// exceeds the budget in between.
pub fn redivide(budget: u64, copies: usize, running: &[(String, u64)]) -> Vec<(String, u64)> {
    let Some(each) = share(budget, copies) else {
        return Vec::new();
    };
    let mut changes: Vec<(String, u64, bool)> = running
        .iter()
        .filter(|(_, now)| *now != each)
        .map(|(id, now)| (id.clone(), each, each < *now))
        .collect();
    // Lowerings (true) before raisings.
    changes.sort_by_key(|(_, _, lower)| !*lower);
    changes.into_iter().map(|(id, bps, _)| (id, bps)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_budget_no_share() {
        assert_eq!(share(0, 3), None);
        assert!(redivide(0, 1, &[("a".into(), 5)]).is_empty());
    }

    #[test]
    fn equal_shares_never_exceed_the_budget() {
        for budget in [1u64, 7, 100, 1_000_003] {
            for n in 1..10usize {
                let each = share(budget, n).expect("a share");
                if budget >= n as u64 {
                    assert!(each * n as u64 <= budget, "{budget} over {n}");
                }
                assert!(each >= 1);
            }
        }
        assert_eq!(share(100, 0), Some(100), "the first copy gets it all");
    }

    #[test]
    fn a_start_lowers_the_others_and_an_end_raises_them() {
        // Two run at 50 of 100; a third is about to start.
        let before_start = redivide(100, 3, &[("a".into(), 50), ("b".into(), 50)]);
        assert_eq!(before_start, [("a".into(), 33), ("b".into(), 33)]);
        // "a" ends: the others go to 50.
        let after_end = redivide(100, 2, &[("b".into(), 33), ("c".into(), 33)]);
        assert_eq!(after_end, [("b".into(), 50), ("c".into(), 50)]);
    }

    #[test]
    fn lowerings_come_before_raisings() {
        let changes = redivide(
            90,
            3,
            &[("up".into(), 10), ("down".into(), 80), ("x".into(), 45)],
        );
        assert_eq!(
            changes,
            [("down".into(), 30), ("x".into(), 30), ("up".into(), 30)]
        );
    }
}
