//! Logging and tracing set-up.
//!
//! Log lines carry strings from callers (domain names, ids, endpoints). Call
//! sites log them escaped, and as a last line of defence every event passes
//! through [`EscapingWriter`], which escapes control characters (a newline
//! in a domain name would otherwise start a forged log line), so one event
//! is always exactly one line.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs a stderr logger filtered by `RUST_LOG` (default `info`); colours
/// only on a terminal.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = io::stderr().is_terminal();
    // A second init (tests, or a library user with its own subscriber) is harmless.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(Escaping { keep_esc: ansi }),
        )
        .try_init();
}

/// Makes [`EscapingWriter`]s over stderr.
#[derive(Clone, Copy)]
struct Escaping {
    /// Let ESC through: the formatter's own colours (it escapes ESC in the
    /// values it prints itself).
    keep_esc: bool,
}

impl<'a> MakeWriter<'a> for Escaping {
    type Writer = EscapingWriter<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter {
            inner: io::stderr(),
            keep_esc: self.keep_esc,
        }
    }
}

/// Writes one formatted event, with every control character but the final
/// newline (and ESC when colours are on) written as `\xNN`.
pub struct EscapingWriter<W> {
    inner: W,
    keep_esc: bool,
}

/// `buf` with its control characters escaped (see [`EscapingWriter`]).
fn escape(buf: &[u8], keep_esc: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() + 8);
    let last = buf.len().saturating_sub(1);
    for (i, &b) in buf.iter().enumerate() {
        let control = b < 0x20 || b == 0x7f;
        let allowed = (b == b'\n' && i == last) || (b == 0x1b && keep_esc);
        if control && !allowed {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(&escape(buf, self.keep_esc))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_one_line() {
        let line = b"INFO domain=evil\nINFO forged\x1b[2J\x00\r\tend\n";
        let out = String::from_utf8(escape(line, false)).expect("utf8");
        assert_eq!(
            out,
            "INFO domain=evil\\x0aINFO forged\\x1b[2J\\x00\\x0d\\x09end\n"
        );
        assert_eq!(
            escape(b"\x1b[32mINFO\x1b[0m x\n", true),
            b"\x1b[32mINFO\x1b[0m x\n"
        );
    }
}
