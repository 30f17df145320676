//! Sizes, rates, durations and times, parsed from and written for operators.
//!
//! Single-letter and `iB` suffixes are binary (`10M` = `10MiB` = 10·2²⁰ bytes),
//! as in qemu-img and virsh, because that is how the people running volmig
//! think of disk sizes; `kB`/`MB`/`GB`/`TB` are decimal for the rare case that
//! someone means it. Output is always binary (`GiB`).

/// A size or bandwidth the operator typed that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No digits, or garbage where the number should be.
    #[error("{0:?} is not a size: expected a number with an optional unit, e.g. 50MiB, 10M, 1G or 1048576")]
    Malformed(String),
    /// A suffix that is not a known unit.
    #[error("{input:?} has unknown unit {unit:?}: use B, K, M, G, T (binary), KiB..TiB, or kB..TB (decimal)")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The suffix that was not understood.
        unit: String,
    },
    /// More than fits in 64 bits.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses a byte size: a number (fractions allowed with a unit, `1.5G`),
/// optional spaces, and an optional case-insensitive unit.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim_start();
    let multiplier = unit_multiplier(unit).ok_or_else(|| {
        if number.is_empty() {
            SizeError::Malformed(input.to_string())
        } else {
            SizeError::UnknownUnit {
                input: input.to_string(),
                unit: unit.to_string(),
            }
        }
    })?;

    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !digits_ok(whole) || !digits_ok(fraction) {
        return Err(SizeError::Malformed(input.to_string()));
    }
    let too_large = || SizeError::TooLarge(input.to_string());
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    // A fraction of a byte is dropped: sizes are whole bytes.
    let fraction_bytes = if fraction.is_empty() {
        0
    } else {
        let digits = u32::try_from(fraction.len()).map_err(|_| too_large())?;
        let scale = 10u128.checked_pow(digits).ok_or_else(too_large)?;
        let numerator: u128 = fraction.parse().map_err(|_| too_large())?;
        numerator
            .checked_mul(u128::from(multiplier))
            .ok_or_else(too_large)?
            / scale
    };
    let bytes = whole
        .checked_mul(u128::from(multiplier))
        .and_then(|b| b.checked_add(fraction_bytes))
        .ok_or_else(too_large)?;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses a bandwidth: a size per second, with or without a trailing `/s`.
/// `0` means unlimited.
pub fn parse_bandwidth(input: &str) -> Result<u64, SizeError> {
    let text = input.trim();
    parse_size(text.strip_suffix("/s").unwrap_or(text))
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    const KI: u64 = 1 << 10;
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KI,
        "m" | "mib" => KI.pow(2),
        "g" | "gib" => KI.pow(3),
        "t" | "tib" => KI.pow(4),
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    })
}

pub use crate::units::{human_bytes, utc_time};

/// A rate in binary units per second: `118.3 MiB/s`.
pub fn human_rate(bytes_per_sec: u64) -> String {
    format!("{}/s", human_bytes(bytes_per_sec))
}

/// A duration as `52s`, `4m05s` or `1h02m03s`.
pub fn human_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("512B"), Ok(512));
    }

    #[test]
    fn single_letters_and_iec_suffixes_are_binary() {
        assert_eq!(parse_size("50MiB"), Ok(50 << 20));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert_eq!(parse_size("4 KiB"), Ok(4096));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
    }

    #[test]
    fn si_suffixes_are_decimal() {
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1kB"), Ok(1000));
    }

    #[test]
    fn fractions_scale_and_drop_partial_bytes() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(".5K"), Ok(512));
        assert_eq!(parse_size("1.0001K"), Ok(1024));
    }

    #[test]
    fn garbage_is_rejected_with_the_reason() {
        assert_eq!(parse_size(""), Err(SizeError::Malformed(String::new())));
        assert_eq!(parse_size("MiB"), Err(SizeError::Malformed("MiB".into())));
        assert_eq!(
            parse_size("1.2.3M"),
            Err(SizeError::Malformed("1.2.3M".into()))
        );
        assert_eq!(parse_size("."), Err(SizeError::Malformed(".".into())));
        assert_eq!(parse_size("-1"), Err(SizeError::Malformed("-1".into())));
        assert_eq!(
            parse_size("5 parsecs"),
            Err(SizeError::UnknownUnit {
                input: "5 parsecs".into(),
                unit: "parsecs".into()
            })
        );
    }

    #[test]
    fn overflow_is_too_large() {
        assert_eq!(
            parse_size("16777216T"),
            Err(SizeError::TooLarge("16777216T".into()))
        );
        assert_eq!(
            parse_size("99999999999999999999999999999999999999999"),
            Err(SizeError::TooLarge(
                "99999999999999999999999999999999999999999".into()
            ))
        );
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn bandwidth_accepts_per_second_suffix() {
        assert_eq!(parse_bandwidth("50MiB/s"), Ok(50 << 20));
        assert_eq!(parse_bandwidth("50MiB"), Ok(50 << 20));
        assert_eq!(parse_bandwidth("0"), Ok(0));
    }

    #[test]
    fn human_bytes_picks_the_largest_sensible_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(4_509_715_660), "4.2 GiB");
        assert_eq!(human_bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(human_rate(124_046_540), "118.3 MiB/s");
    }

    #[test]
    fn human_duration_drops_empty_leading_units() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(52), "52s");
        assert_eq!(human_duration(245), "4m05s");
        assert_eq!(human_duration(3723), "1h02m03s");
    }
}
