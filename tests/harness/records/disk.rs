//! Whether a disk image still holds every record the guest acknowledged.

use super::record::{decode_record, Defect, RECORD_SIZE};
use std::fmt;
use std::io::{self, BufReader, Read};

/// A run of consecutive bad records with the same defect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRun {
    /// First bad sequence number of the run.
    pub first: u64,
    /// Last bad sequence number of the run (inclusive).
    pub last: u64,
    /// What is wrong with them.
    pub defect: Defect,
    /// For `Misplaced`: the sequence number found in the run's first sector, which shows
    /// where the data came from.
    pub found: Option<u64>,
}

impl BadRun {
    /// Number of records in the run.
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}

impl fmt::Display for BadRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "record {} {}", self.first, self.defect)?;
        } else {
            write!(f, "records {}..={} {}", self.first, self.last, self.defect)?;
        }
        if let Some(found) = self.found {
            write!(f, " (first holds record {found})")?;
        }
        Ok(())
    }
}

/// Result of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordReport {
    /// Records 1..=`acked` were all found intact.
    pub acked: u64,
    /// Intact records directly after `acked`: written but not yet acknowledged when the
    /// console was read (the guest acks one record before writing the next, so a quiescent
    /// guest leaves at most one).
    pub unacked: u64,
    /// The distinct boot start numbers found in the intact records, in disk order: one
    /// entry per boot that wrote something.
    pub boots: Vec<u64>,
}

/// Why [`verify`] failed.
#[derive(Debug)]
pub enum RecordError {
    /// Reading the disk image failed.
    Io(io::Error),
    /// Some acknowledged records are not intact.
    Bad {
        /// The `last_ack` that was checked against.
        last_ack: u64,
        /// Total number of bad records among 1..=`last_ack`.
        bad: u64,
        /// The bad records, as runs in ascending order.
        runs: Vec<BadRun>,
    },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough runs to see the pattern without flooding a test failure message.
        const SHOWN: usize = 8;
        match self {
            RecordError::Io(e) => write!(f, "reading the disk image: {e}"),
            RecordError::Bad {
                last_ack,
                bad,
                runs,
            } => {
                write!(
                    f,
                    "{bad} of {last_ack} acknowledged records are not intact: "
                )?;
                for (i, run) in runs.iter().take(SHOWN).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{run}")?;
                }
                if runs.len() > SHOWN {
                    write!(f, ", and {} more runs", runs.len() - SHOWN)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for RecordError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecordError::Io(e) => Some(e),
            RecordError::Bad { .. } => None,
        }
    }
}

impl From<io::Error> for RecordError {
    fn from(e: io::Error) -> Self {
        RecordError::Io(e)
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read. `read_exact`
/// would not tell a short image apart from an I/O error.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Checks that every record 1..=`last_ack` is intact in a raw disk image read from `disk`
/// (from byte 0; it is buffered here). For a qcow2 or RBD disk, read it as raw first, e.g.
/// with `qemu-img convert -O raw` or `qemu-img dd`.
///
/// # Errors
/// [`RecordError::Bad`] lists every acknowledged record that is not intact, as runs;
/// [`RecordError::Io`] if reading fails.
pub fn verify(disk: impl Read, last_ack: u64) -> Result<RecordReport, RecordError> {
    let mut disk = BufReader::with_capacity(1 << 20, disk);
    let mut sector = [0u8; RECORD_SIZE];
    let mut runs: Vec<BadRun> = Vec::new();
    let mut bad = 0u64;
    let mut boots: Vec<u64> = Vec::new();
    let mut note_boot = |boot: u64| {
        if boots.last() != Some(&boot) {
            boots.push(boot);
        }
    };

    // Sector 0 is reserved; a short image simply has no records.
    let mut ended = read_full(&mut disk, &mut sector)? < RECORD_SIZE;
    for seq in 1..=last_ack {
        if ended || read_full(&mut disk, &mut sector)? < RECORD_SIZE {
            // Everything from here on is missing: one run, not one iteration per record,
            // so a huge bogus last_ack cannot make this loop for ages.
            bad += last_ack - seq + 1;
            runs.push(BadRun {
                first: seq,
                last: last_ack,
                defect: Defect::Truncated,
                found: None,
            });
            ended = true;
            break;
        }
        let (defect, found) = match decode_record(&sector) {
            Ok(record) if record.seq == seq => {
                note_boot(record.boot);
                continue;
            }
            Ok(record) => (Defect::Misplaced, Some(record.seq)),
            Err(defect) => (defect, None),
        };
        bad += 1;
        match runs.last_mut() {
            Some(run) if run.defect == defect && run.last + 1 == seq => run.last = seq,
            _ => runs.push(BadRun {
                first: seq,
                last: seq,
                defect,
                found,
            }),
        }
    }
    if !runs.is_empty() {
        return Err(RecordError::Bad {
            last_ack,
            bad,
            runs,
        });
    }

    let mut unacked = 0;
    while !ended && read_full(&mut disk, &mut sector)? == RECORD_SIZE {
        match decode_record(&sector) {
            Ok(record) if record.seq == last_ack + unacked + 1 => {
                note_boot(record.boot);
                unacked += 1;
            }
            _ => break,
        }
    }
    Ok(RecordReport {
        acked: last_ack,
        unacked,
        boots,
    })
}
