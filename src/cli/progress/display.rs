//! The stateful writer behind `migrate` and `watch`: which lines go to stdout
//! or stderr in each [`Style`], erasing the live progress lines before
//! anything else is written, and throttling progress without a terminal.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::detach::{detach_message, Detach};
use super::lines::{convergence_line, header_line, phase_line, progress_lines};
use super::summary::{completed_summary, failed_summary};
use super::{is_terminal, Style};
use crate::api::client::status_message;
use crate::proto::{ConvergenceWarning, MigrationEvent, Phase};

/// Without a terminal, progress lines are for logs: one every so often is enough.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `\r` plus "erase line", so the next write replaces the live progress line.
const CLEAR_LINE: &str = "\r\x1b[2K";

/// Cursor one line up, to redraw a multi-line progress display.
const LINE_UP: &str = "\x1b[1A";

/// Shows events as they arrive, in one [`Style`].
pub struct Display<O: Write, E: Write> {
    style: Style,
    out: O,
    err: E,
    last_phase: Option<Phase>,
    last_progress_line: Option<Instant>,
    /// Live progress lines on screen (the last without a newline); they must
    /// be erased before anything else is written to stderr.
    live_lines: usize,
    migration_id: Option<String>,
    node_id: Option<String>,
    /// The convergence warning last shown, so each is shown once.
    convergence: Option<ConvergenceWarning>,
}

impl<O: Write, E: Write> Display<O, E> {
    /// A display writing results to `out` and progress and errors to `err`.
    pub fn new(style: Style, out: O, err: E) -> Self {
        Display {
            style,
            out,
            err,
            last_phase: None,
            last_progress_line: None,
            live_lines: 0,
            migration_id: None,
            node_id: None,
            convergence: None,
        }
    }

    /// Shows one event received at `now`.
    pub fn event(&mut self, ev: &MigrationEvent, now: Instant) -> io::Result<()> {
        if !ev.migration_id.is_empty() {
            self.migration_id = Some(ev.migration_id.clone());
        }
        if !ev.node_id.is_empty() {
            self.node_id = Some(ev.node_id.clone());
        }
        let phase = ev.phase();
        let phase_changed = self.last_phase != Some(phase);
        let first = self.last_phase.is_none();
        self.last_phase = Some(phase);

        if self.style == Style::Json {
            writeln!(self.out, "{}", crate::cli::json::event(ev))?;
            return self.out.flush();
        }

        if phase_changed {
            self.clear_live_line()?;
            if first {
                writeln!(self.err, "{}", header_line(ev))?;
            }
            writeln!(self.err, "{}", phase_line(ev))?;
        }
        if ev.convergence.is_some() && ev.convergence != self.convergence {
            if let Some(line) = convergence_line(ev) {
                self.clear_live_line()?;
                writeln!(self.err, "{line}")?;
            }
        }
        self.convergence = ev.convergence.clone();
        if is_terminal(phase) {
            self.clear_live_line()?;
            if phase == Phase::Completed {
                write!(self.out, "{}", completed_summary(ev))?;
                self.out.flush()?;
            } else {
                write!(self.err, "{}", failed_summary(ev))?;
            }
        } else if has_progress(ev) {
            let lines = progress_lines(ev);
            match self.style {
                Style::Live => {
                    if self.live_lines > 1 {
                        self.clear_live_line()?;
                    } else {
                        write!(self.err, "{CLEAR_LINE}")?;
                    }
                    write!(self.err, "{}", lines.join("\n"))?;
                    self.live_lines = lines.len();
                }
                Style::Plain => {
                    let due = self
                        .last_progress_line
                        .is_none_or(|at| now.duration_since(at) >= PLAIN_PROGRESS_EVERY);
                    if due {
                        writeln!(self.err, "{}", lines.join("\n"))?;
                        self.last_progress_line = Some(now);
                    }
                }
                Style::Json => {}
            }
        }
        self.err.flush()
    }

    /// Reports that the operator detached (Ctrl-C).
    pub fn interrupted(&mut self, detach: &Detach) -> io::Result<()> {
        self.clear_live_line()?;
        let id = self
            .migration_id
            .clone()
            .or_else(|| detach.migration_id.clone());
        write!(
            self.err,
            "{}",
            detach_message(detach, id.as_deref(), self.node_id.as_deref())
        )?;
        self.err.flush()
    }

    /// Reports that the stream broke (`status`) or ended (`None`) before the
    /// terminal event; the migration itself may well still be running.
    /// The migration id the events named, if any arrived.
    pub fn migration_id(&self) -> Option<&str> {
        self.migration_id.as_deref()
    }

    /// Tells the operator the stream broke and was attached again elsewhere.
    pub fn reattached(&mut self, problem: &str) -> io::Result<()> {
        self.clear_live_line()?;
        writeln!(
            self.err,
            "note: the event stream broke ({problem}); following the migration through another controller"
        )?;
        self.err.flush()
    }

    pub fn stream_lost(
        &mut self,
        status: Option<&tonic::Status>,
        detach: &Detach,
    ) -> io::Result<()> {
        self.clear_live_line()?;
        let problem = match status {
            Some(status) => status_message(status),
            None => "UNAVAILABLE: the event stream ended before the migration finished".to_string(),
        };
        writeln!(self.err, "error: {problem}")?;
        let id = self
            .migration_id
            .clone()
            .or_else(|| detach.migration_id.clone());
        if let Some(id) = id {
            writeln!(
                self.err,
                "the migration may still be running; follow it again: volmig watch {id}{flags}",
                flags = detach.target_flags
            )?;
        }
        self.err.flush()
    }

    fn clear_live_line(&mut self) -> io::Result<()> {
        if self.live_lines > 0 {
            write!(self.err, "{CLEAR_LINE}")?;
            for _ in 1..self.live_lines {
                write!(self.err, "{LINE_UP}{CLEAR_LINE}")?;
            }
            self.live_lines = 0;
        }
        Ok(())
    }
}

fn has_progress(ev: &MigrationEvent) -> bool {
    ev.progress.is_some_and(|p| p.bytes_total > 0)
}

#[cfg(test)]
mod tests {
    use super::super::test_events::{copying, group_copying};
    use super::*;

    fn render<F>(style: Style, f: F) -> (String, String)
    where
        F: FnOnce(&mut Display<&mut Vec<u8>, &mut Vec<u8>>),
    {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        f(&mut Display::new(style, &mut out, &mut err));
        (
            String::from_utf8(out).expect("utf-8"),
            String::from_utf8(err).expect("utf-8"),
        )
    }

    #[test]
    fn a_convergence_warning_is_shown_once_with_both_rates() {
        let (_, err) = render(Style::Plain, |d| {
            let mut ev = copying(1 << 20, 64 << 20, 1 << 20, 0);
            ev.convergence = Some(ConvergenceWarning {
                dirty_rate_bytes_per_sec: 8 << 20,
                copy_rate_bytes_per_sec: 1 << 20,
                remaining_bytes: 32 << 20,
                remedy: "raise the bandwidth".into(),
            });
            for _ in 0..2 {
                d.event(&ev, Instant::now()).expect("shown");
            }
        });
        assert_eq!(err.matches("does not converge").count(), 1, "{err}");
        assert!(
            err.contains("8.0 MiB/s") && err.contains("raise the bandwidth"),
            "{err}"
        );
    }

    #[test]
    fn a_multi_disk_migration_shows_a_total_and_a_line_per_disk() {
        assert_eq!(
            progress_lines(&group_copying()),
            [
                "total  COPYING   75.0%  3.0 GiB / 4.0 GiB",
                "vda    SYNCHRONIZED  100.0%  2.0 GiB / 2.0 GiB",
                "vdb    COPYING   50.0%  1.0 GiB / 2.0 GiB",
            ]
        );
        let t0 = Instant::now();
        let (_, err) = render(Style::Live, |d| {
            d.event(&group_copying(), t0).expect("write");
            d.event(&group_copying(), t0).expect("write");
        });
        // The second redraw erases all three lines first.
        assert!(
            err.contains(&format!(
                "{CLEAR_LINE}{LINE_UP}{CLEAR_LINE}{LINE_UP}{CLEAR_LINE}total"
            )),
            "{err:?}"
        );
        assert!(header_line(&group_copying()).ends_with("disks vda,vdb\n  skipped hdc: cdrom"));
    }

    #[test]
    fn live_display_redraws_progress_in_place_and_phases_on_their_own_lines() {
        let t0 = Instant::now();
        let (out, err) = render(Style::Live, |d| {
            d.event(&copying(1 << 30, 4 << 30, 0, 0), t0)
                .expect("write");
            d.event(&copying(2 << 30, 4 << 30, 0, 0), t0)
                .expect("write");
            let mut synced = copying(4 << 30, 4 << 30, 0, 0);
            synced.phase = Phase::Synchronized as i32;
            synced.message = "in sync".into();
            d.event(&synced, t0).expect("write");
        });
        assert_eq!(out, "");
        assert_eq!(
            err,
            "migration m1 on node n1: domain vm1 disk vda\n   +4m05s  COPYING                copying vda to pool fast\n\
             \r\x1b[2KCOPYING   25.0%  1.0 GiB / 4.0 GiB\
             \r\x1b[2KCOPYING   50.0%  2.0 GiB / 4.0 GiB\
             \r\x1b[2K   +4m05s  SYNCHRONIZED           in sync\n\
             \r\x1b[2KSYNCHRONIZED  100.0%  4.0 GiB / 4.0 GiB"
        );
    }

    #[test]
    fn plain_display_throttles_progress_lines() {
        let t0 = Instant::now();
        let (_, err) = render(Style::Plain, |d| {
            for (i, at) in [0u64, 1, 4, 5, 6].into_iter().enumerate() {
                let done = (i as u64 + 1) << 30;
                d.event(&copying(done, 8 << 30, 0, 0), t0 + Duration::from_secs(at))
                    .expect("write");
            }
        });
        let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("COPYING")).collect();
        assert_eq!(
            progress,
            [
                "COPYING   12.5%  1.0 GiB / 8.0 GiB",
                "COPYING   50.0%  4.0 GiB / 8.0 GiB"
            ]
        );
        assert!(!err.contains('\r'), "{err:?}");
    }

    #[test]
    fn json_display_writes_one_object_per_event_and_nothing_else() {
        let t0 = Instant::now();
        let (out, err) = render(Style::Json, |d| {
            d.event(&copying(1, 2, 0, 0), t0).expect("write");
            d.event(&copying(2, 2, 0, 0), t0).expect("write");
        });
        assert_eq!(err, "");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            let value: serde_json::Value = serde_json::from_str(line).expect("json");
            assert_eq!(value["phase"], "PHASE_COPYING");
        }
    }

    #[test]
    fn completion_goes_to_stdout_and_failure_to_stderr() {
        let t0 = Instant::now();
        let done = MigrationEvent {
            phase: Phase::Completed as i32,
            ..Default::default()
        };
        let (out, _) = render(Style::Plain, |d| d.event(&done, t0).expect("write"));
        assert!(out.starts_with("migration - COMPLETED"), "{out}");

        let failed = MigrationEvent {
            phase: Phase::Cancelled as i32,
            message: "cancelled by operator".into(),
            ..Default::default()
        };
        let (out, err) = render(Style::Plain, |d| d.event(&failed, t0).expect("write"));
        assert_eq!(out, "");
        assert!(
            err.contains("error: CANCELLED: cancelled by operator"),
            "{err}"
        );
    }

    #[test]
    fn interrupted_live_display_erases_the_progress_line_first() {
        let (_, err) = render(Style::Live, |d| {
            d.event(&copying(1, 2, 0, 0), Instant::now())
                .expect("write");
            d.interrupted(&Detach::default()).expect("write");
        });
        assert!(
            err.ends_with(
                "\r\x1b[2Kinterrupted: detached from migration m1, which continues on node n1\n  \
                           follow it: volmig watch m1\n  cancel it: volmig cancel m1\n"
            ),
            "{err:?}"
        );
    }
}
