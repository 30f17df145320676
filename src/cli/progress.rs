//! Following a migration's event stream for an operator (`migrate`, `watch`).
//!
//! Three styles: on a terminal a single progress line redrawn in place, with
//! every phase change on its own line; otherwise (logs, CI) plain lines, at
//! most one progress line every [`PLAIN_PROGRESS_EVERY`]; with `--json` one
//! object per event on stdout and nothing else there. Human output goes to
//! stderr except the final success summary, so `volmig migrate ... >result`
//! keeps just the result.
//!
//! Ctrl-C only detaches: the migration runs in the node, not in this process,
//! so the operator is told how to follow or cancel it.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use tonic::codec::Streaming;

use super::units::{human_bytes, human_duration, human_rate};
use crate::api::client::{code_name, status_message};
use crate::proto::{ConvergenceWarning, MigrationEvent, Phase, VolumeFormat};

/// Without a terminal, progress lines are for logs: one every so often is enough.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `\r` plus "erase line", so the next write replaces the live progress line.
const CLEAR_LINE: &str = "\r\x1b[2K";

/// Cursor one line up, to redraw a multi-line progress display.
const LINE_UP: &str = "\x1b[1A";

/// Exit code when the operator pressed Ctrl-C (128 + SIGINT, as shells do).
pub const EXIT_INTERRUPTED: i32 = 130;

/// How a stream of events is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// stderr is a terminal: redraw a progress line in place.
    Live,
    /// stderr is a file or pipe: plain lines, progress throttled.
    Plain,
    /// `--json`: one object per event on stdout.
    Json,
}

/// What to tell the operator when they detach, so they can find the migration again.
#[derive(Debug, Clone, Default)]
pub struct Detach {
    /// Flags that point a follow-up command at the same service, e.g.
    /// `" --controller http://c1:7400"`; empty for the default node.
    pub target_flags: String,
    /// The migration id when known before any event arrives (`watch ID`).
    pub migration_id: Option<String>,
    /// For `migrate`: the request id and the domain, to reattach or find a
    /// migration whose first event never arrived.
    pub request: Option<(String, String)>,
}

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
            writeln!(self.out, "{}", super::json::event(ev))?;
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

/// Follows `stream` until its terminal event, Ctrl-C or a broken stream, and
/// returns the exit code: 0 on COMPLETED, 1 on FAILED, CANCELLED or a broken
/// stream, [`EXIT_INTERRUPTED`] on Ctrl-C.
pub async fn follow(
    mut stream: Streaming<MigrationEvent>,
    style: Style,
    detach: &Detach,
) -> io::Result<i32> {
    let mut display = Display::new(style, io::stdout(), io::stderr());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // If the handler cannot be installed, Ctrl-C keeps its default effect of
    // ending the process, which also only detaches.
    let mut ctrl_c_armed = true;
    loop {
        tokio::select! {
            signal = &mut ctrl_c, if ctrl_c_armed => match signal {
                Ok(()) => {
                    display.interrupted(detach)?;
                    return Ok(EXIT_INTERRUPTED);
                }
                Err(_) => ctrl_c_armed = false,
            },
            message = stream.message() => match message {
                Ok(Some(ev)) => {
                    display.event(&ev, Instant::now())?;
                    if is_terminal(ev.phase()) {
                        return Ok(exit_code(ev.phase()));
                    }
                }
                Ok(None) => {
                    display.stream_lost(None, detach)?;
                    return Ok(1);
                }
                Err(status) => {
                    display.stream_lost(Some(&status), detach)?;
                    return Ok(1);
                }
            },
        }
    }
}

/// A phase without its `PHASE_` prefix, as operators read it: `COPYING`.
pub fn phase_name(phase: Phase) -> &'static str {
    let name = phase.as_str_name();
    name.strip_prefix("PHASE_").unwrap_or(name)
}

/// A format as operators type it: `qcow2`, `raw`, or `-` when not known.
pub fn format_name(format: VolumeFormat) -> &'static str {
    match format {
        VolumeFormat::Raw => "raw",
        VolumeFormat::Qcow2 => "qcow2",
        VolumeFormat::Unspecified => "-",
    }
}

/// Whether no event follows this phase.
pub fn is_terminal(phase: Phase) -> bool {
    matches!(phase, Phase::Completed | Phase::Failed | Phase::Cancelled)
}

/// The exit code for a migration that ended in `phase`.
pub fn exit_code(phase: Phase) -> i32 {
    if phase == Phase::Completed {
        0
    } else {
        1
    }
}

fn has_progress(ev: &MigrationEvent) -> bool {
    ev.progress.is_some_and(|p| p.bytes_total > 0)
}

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

fn progress_text(phase: Phase, progress: Option<&crate::proto::MigrationProgress>) -> String {
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

/// What a COMPLETED event did, over several lines.
pub fn completed_summary(ev: &MigrationEvent) -> String {
    let mut out = format!(
        "migration {} COMPLETED{}\n",
        or_dash(&ev.migration_id),
        took(ev)
    );
    if !ev.disks.is_empty() {
        return out + &disks_summary(ev);
    }
    let Some(r) = &ev.result else {
        return out;
    };
    let field = |out: &mut String, name: &str, value: &str| {
        out.push_str(&format!("  {name:<12} {}\n", or_dash(value)));
    };
    field(&mut out, "new source", &r.destination_source);
    field(&mut out, "pool", &r.destination_pool);
    field(&mut out, "volume", &r.destination_volume);
    field(&mut out, "format", format_name(r.destination_format()));
    let fate = match (r.source_deleted, r.source_kept_reason.as_str()) {
        (true, _) => "deleted".to_string(),
        (false, "") => "kept".to_string(),
        (false, why) => format!("kept ({why})"),
    };
    field(
        &mut out,
        "old source",
        &format!(
            "{} (pool {}, volume {}): {fate}",
            or_dash(&r.previous_source),
            or_dash(&r.source_pool),
            or_dash(&r.source_volume)
        ),
    );
    let definition = if r.persistent_definition_repaired {
        "repaired by volmig (libvirt had not updated it)"
    } else {
        "updated"
    };
    field(&mut out, "persistent", definition);
    if r.source_allocated_bytes > 0 && r.destination_allocated_bytes > 0 {
        field(
            &mut out,
            "allocation",
            &format!(
                "{} on the source, {} on the destination ({:.3}×)",
                crate::cli::units::human_bytes(r.source_allocated_bytes),
                crate::cli::units::human_bytes(r.destination_allocated_bytes),
                r.destination_allocated_bytes as f64 / r.source_allocated_bytes as f64
            ),
        );
    }
    out
}

/// Why a FAILED or CANCELLED migration ended and where its disk is, starting
/// with the `error: CODE: message` line.
pub fn failed_summary(ev: &MigrationEvent) -> String {
    let phase = phase_name(ev.phase());
    let mut out = format!(
        "migration {} {phase}{}\n",
        or_dash(&ev.migration_id),
        took(ev)
    );
    match &ev.error {
        Some(e) => {
            let message = if e.message.is_empty() {
                &ev.message
            } else {
                &e.message
            };
            out.push_str(&format!(
                "error: {}: {}\n",
                code_name(tonic::Code::from_i32(e.code)),
                or_dash(message)
            ));
            out.push_str(&format!("  phase:      {}\n", phase_name(e.phase())));
            if ev.disks.is_empty() {
                out.push_str(&format!("  disk state: {}\n", or_dash(&e.disk_state)));
            } else {
                out.push_str(&disks_summary(ev));
            }
        }
        None => {
            // Only a misbehaving server ends without an error; still say how it ended.
            let code = if ev.phase() == Phase::Cancelled {
                tonic::Code::Cancelled
            } else {
                tonic::Code::Unknown
            };
            out.push_str(&format!(
                "error: {}: {}\n",
                code_name(code),
                or_dash(&ev.message)
            ));
        }
    }
    out
}

/// One line per disk of a multi-disk migration: where it is now.
fn disks_summary(ev: &MigrationEvent) -> String {
    let mut out = String::new();
    for d in &ev.disks {
        let state = match (&d.result, &d.error) {
            (Some(r), _) => {
                let old = if r.source_deleted {
                    "deleted".to_string()
                } else if r.source_kept_reason.is_empty() {
                    "kept".to_string()
                } else {
                    format!("kept ({})", r.source_kept_reason)
                };
                format!(
                    "on {} (pool {}); old source {}: {old}",
                    or_dash(&r.destination_source),
                    or_dash(&r.destination_pool),
                    or_dash(&r.previous_source)
                )
            }
            (None, Some(e)) => or_dash(&e.disk_state).to_string(),
            (None, None) => d.message.clone(),
        };
        out.push_str(&format!(
            "  {:<6} {:<10} {state}\n",
            d.disk,
            phase_name(d.phase())
        ));
    }
    for s in &ev.skipped {
        out.push_str(&format!("  {:<6} {:<10} {}\n", s.disk, "skipped", s.reason));
    }
    if ev.pivot_window_ms > 0 {
        out.push_str(&format!(
            "  pivots: {} ms from the first issued to the last ended\n",
            ev.pivot_window_ms
        ));
    }
    out
}

fn took(ev: &MigrationEvent) -> String {
    elapsed_seconds(ev).map_or_else(String::new, |s| format!(" after {}", human_duration(s)))
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// What to print on Ctrl-C: the migration goes on, and how to reach it again.
pub fn detach_message(
    detach: &Detach,
    migration_id: Option<&str>,
    node_id: Option<&str>,
) -> String {
    let flags = &detach.target_flags;
    match (migration_id, &detach.request) {
        (Some(id), _) => {
            let on_node = node_id.map(|n| format!(" on node {n}")).unwrap_or_default();
            format!(
                "interrupted: detached from migration {id}, which continues{on_node}\n  \
                 follow it: volmig watch {id}{flags}\n  \
                 cancel it: volmig cancel {id}{flags}\n"
            )
        }
        (None, Some((request_id, domain))) => format!(
            "interrupted before the first event; the migration may have started\n  \
             attach to it: rerun the same command with --request-id {request_id}\n  \
             find it:      volmig list --domain {domain} --active{flags}\n"
        ),
        (None, None) => "interrupted\n".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{MigrationError, MigrationProgress, MigrationResult};

    fn copying(done: u64, total: u64, rate: u64, eta: u64) -> MigrationEvent {
        MigrationEvent {
            migration_id: "m1".into(),
            node_id: "n1".into(),
            domain: "vm1".into(),
            disk: "vda".into(),
            phase: Phase::Copying as i32,
            progress: Some(MigrationProgress {
                bytes_done: done,
                bytes_total: total,
                rate_bytes_per_sec: rate,
                eta_seconds: eta,
            }),
            started_at_unix_ms: 1_000_000,
            timestamp_unix_ms: 1_245_500,
            message: "copying vda to pool fast".into(),
            ..Default::default()
        }
    }

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

    #[test]
    fn completed_summary_says_where_the_disk_is_now() {
        let ev = MigrationEvent {
            migration_id: "m1".into(),
            phase: Phase::Completed as i32,
            started_at_unix_ms: 1_000,
            timestamp_unix_ms: 193_000,
            result: Some(MigrationResult {
                destination_source: "/fast/vm1.qcow2".into(),
                destination_pool: "fast".into(),
                destination_volume: "vm1.qcow2".into(),
                destination_format: VolumeFormat::Qcow2 as i32,
                source_pool: "default".into(),
                source_volume: "vm1.qcow2".into(),
                previous_source: "/var/lib/libvirt/images/vm1.qcow2".into(),
                source_deleted: false,
                persistent_definition_repaired: true,
                source_kept_reason: String::new(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            completed_summary(&ev),
            "migration m1 COMPLETED after 3m12s\n\
             \x20 new source   /fast/vm1.qcow2\n\
             \x20 pool         fast\n\
             \x20 volume       vm1.qcow2\n\
             \x20 format       qcow2\n\
             \x20 old source   /var/lib/libvirt/images/vm1.qcow2 (pool default, volume vm1.qcow2): kept\n\
             \x20 persistent   repaired by volmig (libvirt had not updated it)\n"
        );
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
    fn failed_summary_gives_code_message_phase_and_disk_state() {
        let ev = MigrationEvent {
            migration_id: "m1".into(),
            phase: Phase::Failed as i32,
            error: Some(MigrationError {
                code: 8,
                message: "pool fast is full".into(),
                phase: Phase::Copying as i32,
                disk_state: "guest still on its source; destination volume deleted".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            failed_summary(&ev),
            "migration m1 FAILED\n\
             error: RESOURCE_EXHAUSTED: pool fast is full\n\
             \x20 phase:      COPYING\n\
             \x20 disk state: guest still on its source; destination volume deleted\n"
        );
    }

    fn group_copying() -> MigrationEvent {
        let mut ev = copying(3 << 30, 4 << 30, 0, 0);
        ev.disk = "vda,vdb".into();
        let disk = |name: &str, phase: Phase, done: u64| crate::proto::DiskStatus {
            disk: name.into(),
            phase: phase as i32,
            progress: Some(MigrationProgress {
                bytes_done: done,
                bytes_total: 2 << 30,
                ..Default::default()
            }),
            ..Default::default()
        };
        ev.disks = vec![
            disk("vda", Phase::Synchronized, 2 << 30),
            disk("vdb", Phase::Copying, 1 << 30),
        ];
        ev.skipped = vec![crate::proto::SkippedDisk {
            disk: "hdc".into(),
            reason: "cdrom".into(),
        }];
        ev
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
    fn a_multi_disk_summary_says_where_each_disk_is() {
        let mut ev = group_copying();
        ev.phase = Phase::Failed as i32;
        ev.disks[0].phase = Phase::Completed as i32;
        ev.disks[0].result = Some(MigrationResult {
            destination_source: "/fast/vda.qcow2".into(),
            destination_pool: "fast".into(),
            previous_source: "/slow/vda.qcow2".into(),
            ..Default::default()
        });
        ev.disks[1].phase = Phase::Failed as i32;
        ev.disks[1].error = Some(MigrationError {
            disk_state: "the guest stays on its source /slow/vdb.qcow2".into(),
            ..Default::default()
        });
        ev.error = Some(MigrationError {
            code: 13,
            message: "disk vdb: the pivot failed".into(),
            phase: Phase::Pivoting as i32,
            ..Default::default()
        });
        ev.pivot_window_ms = 41;
        let summary = failed_summary(&ev);
        assert!(
            summary.ends_with(
                "  vda    COMPLETED  on /fast/vda.qcow2 (pool fast); old source /slow/vda.qcow2: kept\n\
                 \x20 vdb    FAILED     the guest stays on its source /slow/vdb.qcow2\n\
                 \x20 hdc    skipped    cdrom\n\
                 \x20 pivots: 41 ms from the first issued to the last ended\n"
            ),
            "{summary}"
        );
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
    fn ctrl_c_tells_how_to_follow_and_cancel() {
        let detach = Detach {
            target_flags: " --controller http://c1:7400".into(),
            ..Default::default()
        };
        assert_eq!(
            detach_message(&detach, Some("m1"), Some("n1")),
            "interrupted: detached from migration m1, which continues on node n1\n  \
             follow it: volmig watch m1 --controller http://c1:7400\n  \
             cancel it: volmig cancel m1 --controller http://c1:7400\n"
        );
    }

    #[test]
    fn ctrl_c_before_the_first_event_tells_how_to_reattach() {
        let detach = Detach {
            request: Some(("r1".into(), "vm1".into())),
            ..Default::default()
        };
        let message = detach_message(&detach, None, None);
        assert!(message.contains("--request-id r1"), "{message}");
        assert!(
            message.contains("volmig list --domain vm1 --active"),
            "{message}"
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
