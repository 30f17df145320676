//! One record: its bytes as the guest writes them, and what can be wrong with a sector
//! that should hold one.

use std::fmt;

/// Size of one record, which is also the sector size the guest writes with.
pub const RECORD_SIZE: usize = 512;

const MAGIC: &[u8] = b"VOLMIG-REC ";
const SEQ_DIGITS: usize = 20;
/// The part of a record the checksum covers.
pub(super) const BODY_LEN: usize = 503;
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
