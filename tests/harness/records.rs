//! What the volmig test guest (`tests/guest/init.sh`) leaves behind, and how to check it.
//!
//! The guest appends one 512-byte record per sequence number `n` at byte offset `n * 512`
//! of its disk (sector 0 is never written) and prints `VOLMIG-ACK n` on its serial console
//! only after record `n` is durable. A migration lost data exactly when an acked record is
//! not on the disk afterwards, so the checks here compare the console against the image.
//!
//! Record layout (all ASCII, see `tests/guest/README.md`):
//!
//! ```text
//! bytes   0..31   "VOLMIG-REC " + seq as 20 zero-padded decimal digits
//! byte   31       ' '
//! bytes  32..52   first seq of the boot that wrote it, 20 zero-padded decimal digits
//! byte   52       '\n'
//! bytes  53..503  spaces
//! bytes 503..511  CRC-32 of bytes 0..503, 8 lowercase hex digits (busybox `crc32`)
//! byte  511       '\n'
//! ```
//!
//! Console lines (each may end in `\r\n`; kernel messages may be interleaved):
//! `VOLMIG-START <first seq of this boot>`, `VOLMIG-ACK <seq>`, `VOLMIG-ERROR <text>`,
//! `VOLMIG-FULL`.
#![allow(dead_code)]

use std::fmt;
use std::io::{self, BufReader, Read};

/// Size of one record, which is also the sector size the guest writes with.
pub const RECORD_SIZE: usize = 512;

const MAGIC: &[u8] = b"VOLMIG-REC ";
const SEQ_DIGITS: usize = 20;
/// The part of a record the checksum covers.
const BODY_LEN: usize = 503;
const CRC_HEX_LEN: usize = 8;

/// CRC-32 as computed by busybox `crc32` (and zlib): reflected IEEE polynomial, initial
/// value and final xor `0xffffffff`, no length appended — unlike POSIX `cksum`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// The exact bytes the guest writes for record `seq` during a boot that started at `boot`.
///
/// Useful to fabricate disk images, e.g. to test the checks themselves.
pub fn encode_record(seq: u64, boot: u64) -> [u8; RECORD_SIZE] {
    let body = format!("VOLMIG-REC {seq:020} {boot:020}\n{:450}", "");
    let mut record = [0u8; RECORD_SIZE];
    // Both numbers always fit in 20 digits (u64::MAX has 20), so the body is fixed-size.
    record[..BODY_LEN].copy_from_slice(body.as_bytes());
    let crc = format!("{:08x}\n", crc32(&record[..BODY_LEN]));
    record[BODY_LEN..].copy_from_slice(crc.as_bytes());
    record
}

/// An intact record as found on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// The first sequence number of the boot that wrote it.
    pub boot: u64,
}

/// Why a record the guest acknowledged is not intact on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// The sector is all zeros: never written, or the write was lost.
    Missing,
    /// The sector holds something that is not an intact record (bad magic, format or checksum).
    Corrupt,
    /// The sector holds an intact record, but of another sequence number: data landed at the
    /// wrong offset, e.g. a copy that shifted or mixed up extents.
    Misplaced,
    /// The disk image ends before this record.
    Truncated,
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Defect::Missing => "missing (zeros)",
            Defect::Corrupt => "corrupt",
            Defect::Misplaced => "misplaced",
            Defect::Truncated => "beyond the end of the image",
        })
    }
}

/// Decodes one sector; `Err` says what is wrong with it. Does not check the sequence number
/// against the sector's position, so a `Misplaced` is never returned here.
///
/// # Errors
/// The [`Defect`] of a sector that does not hold an intact record.
pub fn decode_record(sector: &[u8]) -> Result<Record, Defect> {
    if sector.len() < RECORD_SIZE {
        return Err(Defect::Truncated);
    }
    let sector = &sector[..RECORD_SIZE];
    if sector.iter().all(|&b| b == 0) {
        return Err(Defect::Missing);
    }
    let body = &sector[..BODY_LEN];
    let stored_crc = std::str::from_utf8(&sector[BODY_LEN..BODY_LEN + CRC_HEX_LEN])
        .ok()
        .filter(|s| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or(Defect::Corrupt)?;
    if sector[RECORD_SIZE - 1] != b'\n' || stored_crc != crc32(body) {
        return Err(Defect::Corrupt);
    }
    // The checksum matched, so a malformed header here means a record of another format,
    // still not something we can trust.
    let seq_at = MAGIC.len();
    let boot_at = seq_at + SEQ_DIGITS + 1;
    if !body.starts_with(MAGIC)
        || body[seq_at + SEQ_DIGITS] != b' '
        || body[boot_at + SEQ_DIGITS] != b'\n'
    {
        return Err(Defect::Corrupt);
    }
    let seq = parse_digits(&body[seq_at..seq_at + SEQ_DIGITS]).ok_or(Defect::Corrupt)?;
    let boot = parse_digits(&body[boot_at..boot_at + SEQ_DIGITS]).ok_or(Defect::Corrupt)?;
    Ok(Record { seq, boot })
}

fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

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
/// the loss even after the new boot has rewritten the hole, which [`verify`] cannot.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An image as the guest would leave it: records 1..=`upto`, the boot that wrote each
    /// given by `boot_starts` (ascending), plus trailing zeros.
    fn image(upto: u64, boot_starts: &[u64], trailing_sectors: usize) -> Vec<u8> {
        let mut disk = vec![0u8; RECORD_SIZE];
        for seq in 1..=upto {
            let boot = boot_starts
                .iter()
                .copied()
                .filter(|&b| b <= seq)
                .max()
                .unwrap_or(1);
            disk.extend_from_slice(&encode_record(seq, boot));
        }
        disk.resize(disk.len() + trailing_sectors * RECORD_SIZE, 0);
        disk
    }

    fn sector_mut(disk: &mut [u8], seq: u64) -> &mut [u8] {
        let at = seq as usize * RECORD_SIZE;
        &mut disk[at..at + RECORD_SIZE]
    }

    fn bad_runs(result: Result<RecordReport, RecordError>) -> (u64, Vec<BadRun>) {
        match result {
            Err(RecordError::Bad { bad, runs, .. }) => (bad, runs),
            other => panic!("expected bad records, got {other:?}"),
        }
    }

    #[test]
    fn crc32_matches_busybox() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        // `printf 'hello world' | busybox crc32`
        assert_eq!(crc32(b"hello world"), 0x0d4a_1185);
    }

    #[test]
    fn encode_matches_a_record_written_by_the_guest() {
        // Sector 1 of a disk written by the real guest (busybox 1.35) on its first boot.
        let mut expected = b"VOLMIG-REC 00000000000000000001 00000000000000000001\n".to_vec();
        expected.extend_from_slice(&[b' '; 450]);
        expected.extend_from_slice(b"5299d28d\n");
        assert_eq!(encode_record(1, 1).as_slice(), expected.as_slice());
        assert_eq!(decode_record(&expected), Ok(Record { seq: 1, boot: 1 }));
    }

    #[test]
    fn good_image_verifies() {
        let disk = image(50, &[1, 31], 4);
        let report = verify(disk.as_slice(), 50).expect("intact image");
        assert_eq!(
            report,
            RecordReport {
                acked: 50,
                unacked: 0,
                boots: vec![1, 31]
            }
        );
    }

    #[test]
    fn written_but_unacked_records_are_counted() {
        let disk = image(51, &[1], 0);
        let report = verify(disk.as_slice(), 50).expect("intact image");
        assert_eq!(report.unacked, 1);
    }

    #[test]
    fn nothing_acked_is_trivially_fine() {
        assert!(verify(&[][..], 0).is_ok());
        assert!(verify(vec![0u8; 4096].as_slice(), 0).is_ok());
    }

    #[test]
    fn missing_records_are_reported_as_one_run() {
        let mut disk = image(50, &[1], 0);
        for seq in 10..=12 {
            sector_mut(&mut disk, seq).fill(0);
        }
        let err = verify(disk.as_slice(), 50).expect_err("records 10..=12 are gone");
        assert!(err.to_string().contains("records 10..=12 missing"), "{err}");
        let (bad, runs) = bad_runs(Err(err));
        assert_eq!(bad, 3);
        assert_eq!(
            runs,
            vec![BadRun {
                first: 10,
                last: 12,
                defect: Defect::Missing,
                found: None
            }]
        );
    }

    #[test]
    fn corrupt_record_is_reported() {
        let mut disk = image(50, &[1], 0);
        sector_mut(&mut disk, 20)[100] = b'X';
        let (bad, runs) = bad_runs(verify(disk.as_slice(), 50));
        assert_eq!(bad, 1);
        assert_eq!(
            runs,
            vec![BadRun {
                first: 20,
                last: 20,
                defect: Defect::Corrupt,
                found: None
            }]
        );
    }

    #[test]
    fn torn_record_is_corrupt() {
        // First half from record 30, second half zeros: what a torn sector write looks like.
        let mut disk = image(50, &[1], 0);
        sector_mut(&mut disk, 30)[256..].fill(0);
        let (_, runs) = bad_runs(verify(disk.as_slice(), 50));
        assert_eq!(runs[0].defect, Defect::Corrupt);
        assert_eq!(runs[0].first, 30);
    }

    #[test]
    fn record_at_the_wrong_offset_is_misplaced() {
        let mut disk = image(50, &[1], 0);
        let five = encode_record(5, 1);
        sector_mut(&mut disk, 6).copy_from_slice(&five);
        let (bad, runs) = bad_runs(verify(disk.as_slice(), 50));
        assert_eq!(bad, 1);
        assert_eq!(
            runs,
            vec![BadRun {
                first: 6,
                last: 6,
                defect: Defect::Misplaced,
                found: Some(5)
            }]
        );
    }

    #[test]
    fn short_image_is_truncated() {
        let disk = image(40, &[1], 0);
        let (bad, runs) = bad_runs(verify(disk.as_slice(), 1_000_000_000));
        assert_eq!(bad, 1_000_000_000 - 40);
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].first, runs[0].defect), (41, Defect::Truncated));
    }

    #[test]
    fn several_defects_are_all_counted() {
        let mut disk = image(100, &[1], 0);
        sector_mut(&mut disk, 3).fill(0);
        sector_mut(&mut disk, 4)[0] = b'x';
        for seq in 60..=69 {
            sector_mut(&mut disk, seq).fill(0);
        }
        let (bad, runs) = bad_runs(verify(disk.as_slice(), 100));
        assert_eq!(bad, 12);
        let kinds: Vec<_> = runs.iter().map(|r| (r.first, r.last, r.defect)).collect();
        assert_eq!(
            kinds,
            vec![
                (3, 3, Defect::Missing),
                (4, 4, Defect::Corrupt),
                (60, 69, Defect::Missing)
            ]
        );
    }

    #[test]
    fn read_errors_are_passed_on() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        assert!(matches!(verify(Broken, 1), Err(RecordError::Io(_))));
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        assert_eq!(decode_record(&[0xff; RECORD_SIZE]), Err(Defect::Corrupt));
        assert_eq!(decode_record(&[0; 100]), Err(Defect::Truncated));
        // A valid checksum over a body in some other format.
        let mut sector = [b' '; RECORD_SIZE];
        sector[..5].copy_from_slice(b"hello");
        let crc = format!("{:08x}\n", crc32(&sector[..BODY_LEN]));
        sector[BODY_LEN..].copy_from_slice(crc.as_bytes());
        assert_eq!(decode_record(&sector), Err(Defect::Corrupt));
    }

    const LOG: &str = "SeaBIOS\r\n[    2.8] Run /init as init process\r\n\
        VOLMIG-START 1\r\nVOLMIG-ACK 1\r\nVOLMIG-ACK 2\r\n\
        [    9.1] I/O error, dev vda, sector 6\r\n\
        VOLMIG-ERROR write seq 3: dd: error writing '/dev/vda': Input/output error\r\n\
        VOLMIG-ACK 3\r\nVOLMIG-ACK 4\r\n\
        SeaBIOS\r\nVOLMIG-START 6\r\nVOLMIG-ACK 6\r\nVOLMIG-ACK 7\r\nVOLMIG-FULL\r\n";

    #[test]
    fn console_log_is_parsed() {
        assert_eq!(last_ack(LOG), Some(7));
        assert_eq!(first_seq_of_last_boot(LOG), Some(6));
        let boots = boots(LOG);
        assert_eq!(boots.len(), 2);
        assert_eq!(
            (boots[0].start, boots[0].last_ack, boots[0].full),
            (1, Some(4), false)
        );
        assert_eq!(boots[0].errors.len(), 1);
        assert!(boots[0].errors[0].starts_with("write seq 3"));
        assert_eq!(
            (boots[1].start, boots[1].last_ack, boots[1].full),
            (6, Some(7), true)
        );
        assert!(check_resumes(LOG).is_ok());
    }

    #[test]
    fn empty_or_cut_logs() {
        assert_eq!(last_ack(""), None);
        assert_eq!(first_seq_of_last_boot("[ 1.0] booting\n"), None);
        // Destroyed while printing: the partial number is a prefix, never an overstatement.
        assert_eq!(
            last_ack("VOLMIG-START 1\nVOLMIG-ACK 122\nVOLMIG-ACK 12"),
            Some(122)
        );
        assert_eq!(last_ack("VOLMIG-ACK \nVOLMIG-ACK x1\n"), None);
        // A guest destroyed mid-line: the next boot starts on the same line.
        let glued = "VOLMIG-START 1\r\nVOLMIG-ACK 24VOLMIG-START 25\r\nVOLMIG-ACK 25\r\n";
        assert_eq!(boots(glued).len(), 2);
        assert_eq!(first_seq_of_last_boot(glued), Some(25));
    }

    #[test]
    fn rewind_is_detected() {
        let log = "VOLMIG-START 1\nVOLMIG-ACK 1\nVOLMIG-ACK 2\nVOLMIG-ACK 3\nVOLMIG-START 3\n";
        let err = check_resumes(log).expect_err("boot 2 rewinds");
        assert!(err.contains("started at record 3"), "{err}");
    }
}
