//! The single lines shown while a migration runs: the header, one line per
//! phase change, the progress display and the convergence warning.

use super::{is_terminal, or_dash, phase_name};
use crate::cli::quantities::{human_bytes, human_duration, human_rate};
use crate::proto::{MigrationEvent, MigrationProgress, Phase};

/// Seconds from acceptance to this event, when the server sent both times.
pub fn elapsed_seconds(ev: &MigrationEvent) -> Option<u64> {
    (ev.started_at_unix_ms > 0 && ev.timestamp_unix_ms >= ev.started_at_unix_ms)
        .then(|| (ev.timestamp_unix_ms - ev.started_at_unix_ms) / 1000)
}

/// Bytes done as a percentage of the total with one decimal, rounded down so
/// that 100.0% means done, and capped there because the total can lag behind.
pub fn percent(done: u64, total: u64) -> Option<String> {
    if total == 0 {
        return None;
    }
    let tenths = (u128::from(done) * 1000 / u128::from(total)).min(1000);
    Some(format!("{}.{}%", tenths / 10, tenths % 10))
}

/// The one-line progress display: `COPYING  42.0%  4.2 GiB / 10.0 GiB  118.3 MiB/s  ETA 52s`.
/// Rate and ETA are left out while unknown (0); a terminal phase is shown
/// alone, since its last rate and ETA no longer mean anything.
pub fn progress_line(ev: &MigrationEvent) -> String {
    progress_text(ev.phase(), ev.progress.as_ref())
}

/// The progress display of an event: one line, or for a multi-disk migration
/// the total and then a line per disk.
pub fn progress_lines(ev: &MigrationEvent) -> Vec<String> {
    let mut lines = vec![progress_line(ev)];
    if !ev.disks.is_empty() {
        lines[0] = format!("{:<6} {}", "total", lines[0]);
        lines.extend(ev.disks.iter().map(|d| {
            format!(
                "{:<6} {}",
                d.disk,
                progress_text(d.phase(), d.progress.as_ref())
            )
        }));
    }
    lines
}

fn progress_text(phase: Phase, progress: Option<&MigrationProgress>) -> String {
    let mut line = phase_name(phase).to_string();
    let Some(p) = progress.filter(|p| p.bytes_total > 0 && !is_terminal(phase)) else {
        return line;
    };
    if let Some(pct) = percent(p.bytes_done, p.bytes_total) {
        line.push_str(&format!("  {pct:>6}"));
    }
    line.push_str(&format!(
        "  {} / {}",
        human_bytes(p.bytes_done),
        human_bytes(p.bytes_total)
    ));
    if p.rate_bytes_per_sec > 0 {
        line.push_str(&format!("  {}", human_rate(p.rate_bytes_per_sec)));
    }
    if p.eta_seconds > 0 {
        line.push_str(&format!("  ETA {}", human_duration(p.eta_seconds)));
    }
    line
}

/// Printed once, before the first phase line: which migration this is.
pub fn header_line(ev: &MigrationEvent) -> String {
    let mut line = format!("migration {}", or_dash(&ev.migration_id));
    if !ev.node_id.is_empty() {
        line.push_str(&format!(" on node {}", ev.node_id));
    }
    if !ev.domain.is_empty() || !ev.disk.is_empty() {
        line.push_str(&format!(
            ": domain {} {} {}",
            or_dash(&ev.domain),
            if ev.disks.len() > 1 { "disks" } else { "disk" },
            or_dash(&ev.disk)
        ));
    }
    for s in &ev.skipped {
        line.push_str(&format!("\n  skipped {}: {}", s.disk, s.reason));
    }
    line
}

/// The warning that a copy does not converge, with both rates and the remedy.
pub fn convergence_line(ev: &MigrationEvent) -> Option<String> {
    let c = ev.convergence.as_ref()?;
    Some(format!(
        "warning: the copy does not converge: the guest dirties {} while {} is copied ({} left); {}",
        human_rate(c.dirty_rate_bytes_per_sec),
        human_rate(c.copy_rate_bytes_per_sec),
        human_bytes(c.remaining_bytes),
        c.remedy
    ))
}

/// One line per phase change: time since acceptance, phase, and the event's message.
pub fn phase_line(ev: &MigrationEvent) -> String {
    let elapsed =
        elapsed_seconds(ev).map_or_else(|| "-".to_string(), |s| format!("+{}", human_duration(s)));
    let line = format!(
        "{elapsed:>9}  {:<21}  {}",
        phase_name(ev.phase()),
        ev.message
    );
    line.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::super::test_events::copying;
    use super::*;

    #[test]
    fn progress_line_shows_percent_bytes_rate_and_eta() {
        let ev = copying(4_509_715_661, 10 << 30, 124_046_540, 52);
        assert_eq!(
            progress_line(&ev),
            "COPYING   42.0%  4.2 GiB / 10.0 GiB  118.3 MiB/s  ETA 52s"
        );
    }

    #[test]
    fn progress_line_leaves_out_unknown_rate_and_eta() {
        let ev = copying(0, 1 << 30, 0, 0);
        assert_eq!(progress_line(&ev), "COPYING    0.0%  0 B / 1.0 GiB");
    }

    #[test]
    fn progress_line_without_total_is_just_the_phase() {
        let mut ev = copying(0, 0, 0, 0);
        ev.phase = Phase::Validating as i32;
        assert_eq!(progress_line(&ev), "VALIDATING");
        ev.progress = None;
        assert_eq!(progress_line(&ev), "VALIDATING");
    }

    #[test]
    fn progress_line_of_a_terminal_event_is_just_the_phase() {
        let mut ev = copying(1 << 30, 4 << 30, 100, 30);
        ev.phase = Phase::Cancelled as i32;
        assert_eq!(progress_line(&ev), "CANCELLED");
    }

    #[test]
    fn percent_never_exceeds_100_while_the_total_grows() {
        assert_eq!(percent(11, 10).as_deref(), Some("100.0%"));
        assert_eq!(percent(1, 3).as_deref(), Some("33.3%"));
        assert_eq!(percent(u64::MAX, u64::MAX).as_deref(), Some("100.0%"));
        assert_eq!(percent(5, 0), None);
    }

    #[test]
    fn phase_line_has_elapsed_time_phase_and_message() {
        let ev = copying(0, 1, 0, 0);
        assert_eq!(
            phase_line(&ev),
            "   +4m05s  COPYING                copying vda to pool fast"
        );
    }
}
