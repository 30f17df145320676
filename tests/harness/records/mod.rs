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

mod console;
mod disk;
mod record;
#[cfg(test)]
mod tests;

pub use console::{boots, check_resumes, first_seq_of_last_boot, last_ack, Boot};
pub use disk::{verify, BadRun, RecordError, RecordReport};
pub use record::{crc32, decode_record, encode_record, Defect, Record, RECORD_SIZE};
