//! What the guest's console log says: its boots, their acks, errors and whether the
//! disk ran full.

/// One boot of the guest as seen on its console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Boot {
    /// The sequence number it started writing at (`VOLMIG-START`).
    pub start: u64,
    /// Its highest `VOLMIG-ACK`, if any.
    pub last_ack: Option<u64>,
    /// The text of its `VOLMIG-ERROR` lines.
    pub errors: Vec<String>,
    /// Whether it reported `VOLMIG-FULL`.
    pub full: bool,
}

enum Event<'a> {
    Start(u64),
    Ack(u64),
    Error(&'a str),
    Full,
}

/// Leading decimal digits of `s`. A line cut short (guest destroyed mid-write, or a kernel
/// message spliced in) then yields a prefix, i.e. a smaller number: an understated ack never
/// makes a good disk look bad.
fn leading_number(s: &str) -> Option<u64> {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    s[..end].parse().ok()
}

/// The protocol events in the console log, in order. Tokens are looked for anywhere in a
/// line, and several may share one: kernel output can precede them, and a guest destroyed
/// mid-line leaves its last token unterminated, so the next boot's first token follows it
/// on the same line.
fn events(console_log: &str) -> impl Iterator<Item = Event<'_>> {
    console_log
        .lines()
        .flat_map(|line| line.split("VOLMIG-").skip(1))
        .filter_map(|token| {
            if let Some(n) = token.strip_prefix("ACK ") {
                leading_number(n).map(Event::Ack)
            } else if let Some(n) = token.strip_prefix("START ") {
                leading_number(n).map(Event::Start)
            } else if let Some(text) = token.strip_prefix("ERROR") {
                Some(Event::Error(text.trim()))
            } else if token.starts_with("FULL") {
                Some(Event::Full)
            } else {
                None
            }
        })
}

/// The highest `VOLMIG-ACK` in the console log: every record up to it must be on the disk.
/// A log keeps acks across boots only if its `<serial>` source has `append='on'`.
pub fn last_ack(console_log: &str) -> Option<u64> {
    events(console_log)
        .filter_map(|e| if let Event::Ack(n) = e { Some(n) } else { None })
        .max()
}

/// The boots recorded in the console log, in order. Acks before the first `VOLMIG-START`
/// (a log that was cut) are not attributed to any boot; [`last_ack`] still counts them.
pub fn boots(console_log: &str) -> Vec<Boot> {
    let mut boots: Vec<Boot> = Vec::new();
    for event in events(console_log) {
        match event {
            Event::Start(start) => boots.push(Boot {
                start,
                ..Boot::default()
            }),
            Event::Ack(n) => {
                if let Some(boot) = boots.last_mut() {
                    boot.last_ack = boot.last_ack.max(Some(n));
                }
            }
            Event::Error(text) => {
                if let Some(boot) = boots.last_mut() {
                    boot.errors.push(text.to_string());
                }
            }
            Event::Full => {
                if let Some(boot) = boots.last_mut() {
                    boot.full = true;
                }
            }
        }
    }
    boots
}

/// The `VOLMIG-START` of the last boot in the console log.
pub fn first_seq_of_last_boot(console_log: &str) -> Option<u64> {
    boots(console_log).last().map(|b| b.start)
}

/// Checks that no boot started at or below a record an earlier boot had acknowledged.
///
/// The guest resumes after the last intact record it finds, so a start at or below an
/// earlier ack means it did not find that record: the disk lost it. Checking this catches
/// the loss even after the new boot has rewritten the hole, which
/// [`verify`](super::verify) cannot.
///
/// # Errors
/// A message naming the first boot that started too low.
pub fn check_resumes(console_log: &str) -> Result<(), String> {
    let mut acked_before: Option<u64> = None;
    for (i, boot) in boots(console_log).iter().enumerate() {
        if let Some(acked) = acked_before {
            if boot.start <= acked {
                return Err(format!(
                    "boot {} started at record {} although record {acked} had been acknowledged",
                    i + 1,
                    boot.start
                ));
            }
        }
        acked_before = acked_before.max(boot.last_ack);
    }
    Ok(())
}
