//! Whether a block copy converges, judged from its (cur, end) samples alone.
//!
//! QEMU's mirror counts bytes copied in `cur` and grows `end` whenever the
//! guest dirties a block that was clean (already copied, or never allocated),
//! so over a stretch of time `d(cur)/dt` is the copy rate and `d(end)/dt` the
//! rate at which the guest makes new work; `end - cur` is what is left. A
//! guest rewriting blocks that are still dirty adds nothing: that data is
//! copied once anyway, so the measured dirty rate is exactly the part of the
//! guest's writes the copy has to race.
//!
//! The copy does not converge when what is left did not shrink over a whole
//! window while the guest kept dirtying data. A long but shrinking backlog is
//! a slow copy, not a diverging one (the request's timeout bounds that), so no
//! projection of the time to converge is used: it would flag every large disk
//! copied at a low bandwidth limit. Under a limit QEMU 7.2 moves up to its
//! 16 MiB buffer at once, sleeps, and updates `cur` and `end` only then, so
//! between two bursts nothing changes (no verdict: nothing was dirtied as far
//! as can be seen) and the rates over a short window come in steps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a window of samples says about a copy that does not converge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rates {
    /// Bytes/s the guest newly dirtied.
    pub dirty: u64,
    /// Bytes/s copied.
    pub copy: u64,
    /// Bytes left to copy now.
    pub remaining: u64,
}

/// The samples of one copy, at most a window (plus one sample) long.
#[derive(Debug)]
pub(crate) struct Detector {
    window: Duration,
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Detector {
    /// A detector that judges over `window`.
    pub fn new(window: Duration) -> Self {
        Detector {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records the job's `cur` and `end` as polled at `at`; returns the rates
    /// once the copy has not converged over a whole window.
    pub fn observe(&mut self, at: Instant, cur: u64, end: u64) -> Option<Rates> {
        // QEMU reports 0/0 until it has scanned what to copy; such a sample
        // would make the first real `end` look like a burst of guest writes.
        if end == 0 {
            return None;
        }
        self.samples.push_back((at, cur, end));
        // Keep exactly one sample at least a window old: the window's start.
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _, _)| at.saturating_duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
        let &(t0, cur0, end0) = self.samples.front()?;
        let span = at.saturating_duration_since(t0);
        if span < self.window {
            return None;
        }
        let dirtied = end.saturating_sub(end0);
        let left_then = end0.saturating_sub(cur0);
        let left_now = end.saturating_sub(cur);
        // A window in which the copy did not move at all says nothing about
        // the race: under a limit QEMU may not have reached its next burst
        // yet (every 16 s at 1 MiB/s), and a copy that is stuck altogether is
        // the request timeout's business, not a guest outrunning the copy.
        if dirtied == 0 || left_now < left_then || cur == cur0 {
            return None;
        }
        let per_sec = |bytes: u64| (bytes as f64 / span.as_secs_f64()) as u64;
        Some(Rates {
            dirty: per_sec(dirtied),
            copy: per_sec(cur.saturating_sub(cur0)),
            remaining: left_now,
        })
    }
}

/// Whether a QEMU version (`major.minor.micro`) has `block-job-change`
/// (QEMU 8.2 and later), which can change a running copy's mode in place.
pub(crate) fn qemu_has_block_job_change(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (8, 2),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Feeds one sample a second from `(cur, end)` pairs; returns the verdicts.
    fn run(window: u64, samples: &[(u64, u64)]) -> Vec<Option<Rates>> {
        let start = Instant::now();
        let mut d = Detector::new(Duration::from_secs(window));
        samples
            .iter()
            .enumerate()
            .map(|(i, &(cur, end))| d.observe(start + Duration::from_secs(i as u64), cur, end))
            .collect()
    }

    #[test]
    fn a_guest_dirtying_faster_than_the_copy_is_found_after_one_window() {
        // Copies 1 MiB/s, the guest dirties 3 MiB/s.
        let samples: Vec<(u64, u64)> = (0..8).map(|s| (s * MIB, 64 * MIB + 3 * s * MIB)).collect();
        let verdicts = run(5, &samples);
        assert!(verdicts[..5].iter().all(Option::is_none), "{verdicts:?}");
        assert_eq!(
            verdicts[5],
            Some(Rates {
                dirty: 3 * MIB,
                copy: MIB,
                remaining: 64 * MIB + 10 * MIB
            })
        );
    }

    #[test]
    fn a_shrinking_backlog_converges_however_long_it_takes() {
        // 10 GiB left, copied at 1 MiB/s while the guest dirties 0.9 MiB/s.
        let samples: Vec<(u64, u64)> = (0..30)
            .map(|s| (s * MIB, 10 * 1024 * MIB + s * 9 * MIB / 10))
            .collect();
        assert!(run(5, &samples).iter().all(Option::is_none));
    }

    #[test]
    fn a_copy_the_guest_does_not_dirty_is_never_flagged() {
        // Stalled between two bursts: neither cur nor end moves.
        let samples = vec![(16 * MIB, 64 * MIB); 20];
        assert!(run(5, &samples).iter().all(Option::is_none));
    }

    #[test]
    fn samples_before_qemu_knows_the_size_are_ignored() {
        let mut samples = vec![(0, 0); 3];
        samples.extend((0..8).map(|s| (s * MIB, 64 * MIB)));
        assert!(run(5, &samples).iter().all(Option::is_none));
    }

    #[test]
    fn a_window_between_two_bursts_is_not_judged() {
        // 1 MiB/s limit: QEMU moves 16 MiB every 16 s; a 10 s window may hold
        // no burst while the guest dirties a little.
        let samples: Vec<(u64, u64)> = (0..15).map(|s| (32 * MIB, 64 * MIB + s * 4096)).collect();
        assert!(run(10, &samples).iter().all(Option::is_none));
    }

    #[test]
    fn bursts_within_the_window_count_as_progress() {
        // QEMU copies 8 MiB at once every 4 s; the guest dirties 1 MiB/s.
        let samples: Vec<(u64, u64)> = (0..20)
            .map(|s| ((s / 4) * 8 * MIB, 64 * MIB + s * MIB))
            .collect();
        assert!(run(8, &samples).iter().all(Option::is_none));
    }

    #[test]
    fn block_job_change_needs_qemu_8_2() {
        assert!(!qemu_has_block_job_change("7.2.0"));
        assert!(!qemu_has_block_job_change("8.1.5"));
        assert!(qemu_has_block_job_change("8.2.0"));
        assert!(qemu_has_block_job_change("10.0.0"));
        assert!(!qemu_has_block_job_change("unknown"));
    }
}
