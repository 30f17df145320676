//! The checks run against fabricated images and console logs, so that a pass in an
//! end-to-end test can be trusted.

use super::record::BODY_LEN;
use super::*;
use std::io::{self, Read};

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
