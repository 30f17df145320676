//! Data written into a guest disk before its first boot, so that a copy that drops,
//! shifts or zeroes real data is caught, not only one that loses the guest's records.
//!
//! The pattern is a function of a seed and the absolute byte offset in the disk: every
//! 8-byte word at offset `o` (a multiple of 8) holds `splitmix64(seed, o / 8)` with every
//! byte forced non-zero. So a region copied to the wrong place, left as zeros (a hole
//! the copy skipped) or taken from another disk (another seed) differs at its first byte.

use std::fmt;

/// A region of a disk that holds the pattern of `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Seed of the pattern.
    pub seed: u64,
    /// First byte of the region in the disk (a multiple of 8).
    pub offset: u64,
    /// Length in bytes (a multiple of 8).
    pub len: u64,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 8 bytes the pattern of `seed` has at word-aligned disk offset `offset`.
fn word(seed: u64, offset: u64) -> [u8; 8] {
    // OR-ing 1 into every byte keeps each byte non-zero, so no part of the pattern
    // can be mistaken for an unwritten (zero) sector.
    (splitmix64(seed ^ splitmix64(offset / 8)) | 0x0101_0101_0101_0101).to_le_bytes()
}

/// A seed derived from a name (e.g. domain name + disk target), so that two disks never
/// share a pattern.
pub fn seed_of(name: &str) -> u64 {
    // FNV-1a: stable across runs and Rust versions, unlike `DefaultHasher`.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Region {
    /// The region's expected bytes.
    pub fn bytes(&self) -> Vec<u8> {
        assert!(
            self.offset.is_multiple_of(8) && self.len.is_multiple_of(8),
            "{self:?} is not word-aligned"
        );
        let mut out = Vec::with_capacity(self.len as usize);
        let mut at = self.offset;
        while at < self.offset + self.len {
            out.extend_from_slice(&word(self.seed, at));
            at += 8;
        }
        out
    }

    /// Compares `found` (the region as read back) with the pattern.
    ///
    /// # Errors
    /// The first differing byte, and how many bytes differ.
    pub fn check(&self, found: &[u8]) -> Result<(), Mismatch> {
        let expected = self.bytes();
        let short = (found.len() as u64) < self.len;
        let mut first = None;
        let mut differing = 0u64;
        let mut zero = 0u64;
        for (i, want) in expected.iter().enumerate() {
            let got = found.get(i).copied();
            if got != Some(*want) {
                differing += 1;
                if got == Some(0) {
                    zero += 1;
                }
                if first.is_none() {
                    first = Some((self.offset + i as u64, *want, got));
                }
            }
        }
        match first {
            None => Ok(()),
            Some((offset, expected, found)) => Err(Mismatch {
                region: *self,
                offset,
                expected,
                found,
                differing,
                zero,
                short,
            }),
        }
    }
}

/// Where a region read back differs from its pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The region checked.
    pub region: Region,
    /// Disk offset of the first differing byte.
    pub offset: u64,
    /// The byte the pattern has there.
    pub expected: u8,
    /// The byte found there (`None`: the image ends before it).
    pub found: Option<u8>,
    /// Number of differing bytes in the region.
    pub differing: u64,
    /// How many of them are zero (a hole where data should be).
    pub zero: u64,
    /// The image ended inside the region.
    pub short: bool,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.region;
        write!(
            f,
            "pre-written data [{}, {}) differs first at byte offset {} (expected {:#04x}, found ",
            r.offset,
            r.offset + r.len,
            self.offset,
            self.expected
        )?;
        match self.found {
            Some(b) => write!(f, "{b:#04x})")?,
            None => f.write_str("nothing: the image ends there)")?,
        }
        write!(
            f,
            "; {} of {} bytes differ, {} of them zero",
            self.differing, r.len, self.zero
        )?;
        if self.short {
            f.write_str("; the image is shorter than the region")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> Region {
        Region {
            seed: seed_of("guest/vda"),
            offset: 4096,
            len: 8192,
        }
    }

    #[test]
    fn pattern_is_deterministic_non_zero_and_position_dependent() {
        let r = region();
        let a = r.bytes();
        assert_eq!(a, r.bytes());
        assert!(a.iter().all(|&b| b != 0));
        // The region's bytes landed one word further on (a shifted copy) are wrong there.
        let shifted = Region {
            offset: r.offset + 8,
            ..r
        };
        let len = a.len() - 8;
        assert!(a[..len] != shifted.bytes()[..len], "a shift must show");
        assert!(shifted.check(&a).is_err());
        // Another disk's pattern differs.
        let other = Region {
            seed: seed_of("guest/vdb"),
            ..r
        };
        assert!(a != other.bytes(), "two seeds, one pattern");
        assert!(r.check(&a).is_ok());
    }

    #[test]
    fn the_first_differing_offset_is_named() {
        let r = region();
        let mut data = r.bytes();
        data[100..300].fill(0);
        let err = r.check(&data).expect_err("zeroed bytes");
        assert_eq!(err.offset, 4096 + 100);
        assert_eq!((err.differing, err.zero), (200, 200));
        assert!(err.to_string().contains("byte offset 4196"), "{err}");
        let err = r.check(&data[..1000]).expect_err("short");
        assert!(err.short && err.offset == 4196, "{err:?}");
    }
}
