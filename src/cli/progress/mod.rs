//! Following a migration's event stream for an operator (`migrate`, `watch`).
//!
//! Three styles: on a terminal a single progress line redrawn in place, with
//! every phase change on its own line; otherwise (logs, CI) plain lines, at
//! most one progress line every `PLAIN_PROGRESS_EVERY`; with `--json` one
//! object per event on stdout and nothing else there. Human output goes to
//! stderr except the final success summary, so `volmig migrate ... >result`
//! keeps just the result.
//!
//! Ctrl-C only detaches: the migration runs in the node, not in this process,
//! so the operator is told how to follow or cancel it.

mod detach;
mod display;
mod follow;
mod lines;
mod summary;
#[cfg(test)]
mod test_events;

pub use detach::Detach;
pub use follow::follow;
pub use lines::{percent, progress_line};
pub use summary::{completed_summary, failed_summary};

use crate::proto::{Phase, VolumeFormat};

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

/// A value as operators read it: `-` when empty.
pub fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}
