//! Checks on names and paths from requests, before any reaches libvirt.
//!
//! The XML writer escapes everything anyway; these checks exist so that a name
//! can never address anything outside its pool (`/`, `..`) and so that mistakes
//! are reported as INVALID_ARGUMENT instead of as odd libvirt failures.

/// A request field that failed a check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Which field, and what is wrong with it.
    #[error("invalid {field}: {reason}")]
    Field {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A migration id that no migration can have; not repeated back, only its
    /// length.
    #[error("invalid migration_id: {bytes} bytes that no migration id can be (ids are 1-128 characters of letters, digits, '.', '_', ':', '-')")]
    MigrationId {
        /// Length of what was given.
        bytes: usize,
    },
}

const MAX_NAME: usize = 255;

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid::Field {
        field,
        reason: reason.into(),
    }
}

fn common(field: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(invalid(
            field,
            format!("is {} bytes long; the limit is {max}", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(invalid(
            field,
            format!("contains the control character {:?}", c),
        ));
    }
    if let Some(c) = value.chars().find(|c| is_deceptive(*c)) {
        return Err(invalid(
            field,
            format!(
                "contains U+{:04X}, a bidirectional-text or line-separator character (it makes logs and listings display something other than what they hold)",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// Characters that are not control characters yet change how the text
/// around them is displayed: bidirectional embeddings, overrides, isolates
/// and marks reorder a log line on screen, and the line and paragraph
/// separators break it in editors and viewers. Refused in names like control
/// characters.
pub fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// A control or [`is_deceptive`] character.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || is_deceptive(c)
}

/// A libvirt object name (domain, pool): no `/`, not `.` or `..`.
pub fn object_name(field: &'static str, value: &str) -> Result<(), Invalid> {
    common(field, value, MAX_NAME)?;
    if value.contains('/') {
        return Err(invalid(field, format!("'{value}' must not contain '/'")));
    }
    if value == "." || value == ".." {
        return Err(invalid(field, format!("'{value}' is not a name")));
    }
    Ok(())
}

/// A volume name: a single path component of safe characters, so it can become
/// a file name, an rbd image name or a partition label in any pool type.
pub fn volume_name(field: &'static str, value: &str) -> Result<(), Invalid> {
    object_name(field, value)?;
    if value.starts_with('.') || value.starts_with('-') {
        return Err(invalid(
            field,
            format!("'{value}' must not start with '.' or '-'"),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')))
    {
        return Err(invalid(
            field,
            format!("'{value}' contains {c:?}; use letters, digits, '.', '_', '-', '+'"),
        ));
    }
    Ok(())
}

/// Longest operator-chosen shared storage id (`[shared_pools]`): it is shown
/// in every pool listing and is a key of the controller's reservations.
pub const MAX_SHARED_STORAGE_ID: usize = 255;

/// An operator-chosen shared storage id (`filer1:/export/vms`): not empty,
/// at most [`MAX_SHARED_STORAGE_ID`] bytes, no control or display-changing
/// characters, and no surrounding space (which would make two ids that look
/// alike in a listing differ).
pub fn shared_storage_id(field: &'static str, value: &str) -> Result<(), Invalid> {
    common(field, value, MAX_SHARED_STORAGE_ID)?;
    if value.trim() != value {
        return Err(invalid(
            field,
            format!("{value:?} must not begin or end with white space"),
        ));
    }
    Ok(())
}

/// A disk: a target such as `vda`, or an absolute source path without `..`.
pub fn disk(value: &str) -> Result<(), Invalid> {
    common("disk", value, 4096)?;
    if value.starts_with('/') {
        if value.split('/').any(|part| part == "..") {
            return Err(invalid(
                "disk",
                format!("path '{value}' must not contain '..'"),
            ));
        }
        return Ok(());
    }
    if value.chars().all(|c| c.is_ascii_alphanumeric()) && value.len() <= 32 {
        return Ok(());
    }
    if value.contains('/') && !value.contains("..") && !value.starts_with('/') {
        // rbd sources are named pool/image.
        return Ok(());
    }
    Err(invalid(
        "disk",
        format!("'{value}' is neither a target such as 'vda' nor an absolute source path"),
    ))
}

/// Smallest bandwidth limit accepted: below this a copy of any real disk
/// would not finish, and QEMU's own granularity is 1 MiB/s.
pub const MIN_BANDWIDTH: u64 = 1 << 20;
/// Largest bandwidth limit accepted (2^53 B/s, exact in a JSON number).
pub const MAX_BANDWIDTH: u64 = 1 << 53;

/// A copy bandwidth in bytes/s: 0 (unlimited) or 1 MiB/s … 2^53 B/s.
pub fn bandwidth(value: u64) -> Result<(), Invalid> {
    if value == 0 || (MIN_BANDWIDTH..=MAX_BANDWIDTH).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            "bytes_per_sec",
            format!("{value} is out of range: use 0 (unlimited) or {MIN_BANDWIDTH} to {MAX_BANDWIDTH} bytes/s"),
        ))
    }
}

/// Shortest convergence window accepted: QEMU reports progress in bursts
/// (see `convergence`), so a verdict over less would rest on one or two of
/// them, and the node polls only a few times a second.
pub const MIN_CONVERGENCE_WINDOW: u64 = 5;
/// Longest convergence window accepted (a day).
pub const MAX_CONVERGENCE_WINDOW: u64 = 86_400;

/// A convergence window: `None` (the default) or 5 s … 86400 s.
pub fn convergence_window(value: Option<std::time::Duration>) -> Result<(), Invalid> {
    match value {
        None => Ok(()),
        Some(d) if (MIN_CONVERGENCE_WINDOW..=MAX_CONVERGENCE_WINDOW).contains(&d.as_secs()) => {
            Ok(())
        }
        Some(d) => Err(invalid(
            "convergence_window_seconds",
            format!(
                "{} is out of range: use 0 (default, 60) or {MIN_CONVERGENCE_WINDOW} to {MAX_CONVERGENCE_WINDOW} seconds",
                d.as_secs()
            ),
        )),
    }
}

/// A migration id as given back by a caller: 1-128 characters of
/// `[A-Za-z0-9._:-]` (the node makes UUIDs). Checked before the id is looked
/// up, echoed in an error or logged, so none of those carries a caller's
/// megabyte or control characters. Any other string is an id no migration
/// has (NOT_FOUND, as for an unknown id), and the error does not repeat it.
pub fn migration_id(value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Invalid::MigrationId { bytes: value.len() })
    }
}

/// The names a ListMigrations filter may hold: each empty (no filter) or a
/// valid object name.
pub fn list_filter(domain: &str, node_id: &str) -> Result<(), Invalid> {
    if !domain.is_empty() {
        object_name("domain", domain)?;
    }
    if !node_id.is_empty() {
        object_name("node_id", node_id)?;
    }
    Ok(())
}

/// A pool as a caller names it: a pool name or a storage id (a path or URL,
/// so `/` is allowed): 1-1024 bytes without control or deceptive characters.
pub fn pool_ref(value: &str) -> Result<(), Invalid> {
    common("pool", value, 1024)
}

/// Free text an operator gives and every operator is shown (a reason): empty,
/// or at most `max` bytes without control or deceptive characters.
pub fn note(field: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Ok(());
    }
    common(field, value, max)
}

/// A request id: 1-128 characters of `[A-Za-z0-9._:-]`.
pub fn request_id(value: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        return Ok(());
    }
    common("request_id", value, 128)?;
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        Ok(())
    } else {
        Err(invalid(
            "request_id",
            "use 1-128 characters of letters, digits, '.', '_', ':', '-'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_and_line_separator_characters_are_refused_in_names() {
        for c in [
            '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
            '\u{2028}', '\u{2029}',
        ] {
            let name = format!("web{c}01");
            let err = object_name("domain", &name).expect_err("refused");
            assert!(
                err.to_string().contains(&format!("U+{:04X}", u32::from(c))),
                "{err}"
            );
            assert!(volume_name("volume", &name).is_err());
        }
        assert!(object_name("domain", "web-01.é").is_ok());
    }

    #[test]
    fn rejects_hostile_names() {
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../etc",
            "x\0y",
            "x\ny",
            &"a".repeat(4096),
        ] {
            assert!(object_name("pool", bad).is_err(), "{bad:?}");
            assert!(volume_name("volume", bad).is_err(), "{bad:?}");
        }
        for bad in ["a'b", "a\"b", "a<b", "a&b", ".hidden", "-rf", "a b"] {
            assert!(volume_name("volume", bad).is_err(), "{bad:?}");
        }
        assert!(volume_name("volume", "root-disk_1.qcow2").is_ok());
        assert!(object_name("pool", "pool with 'quotes' & <tags>").is_ok());
    }

    #[test]
    fn disks_are_targets_or_clean_paths() {
        assert!(disk("vda").is_ok());
        assert!(disk("/var/lib/libvirt/images/a.qcow2").is_ok());
        assert!(disk("volmig/img").is_ok());
        assert!(disk("/var/lib/../../etc/shadow").is_err());
        assert!(disk("").is_err());
        assert!(disk("vd a").is_err());
        assert!(disk("../x").is_err());
    }

    #[test]
    fn migration_ids() {
        assert!(migration_id("1b4e28ba-2fa1-11d2-883f-0016d3cca427").is_ok());
        for bad in ["", "a b", "x\ny", "\u{1b}[31m", "é", &"x".repeat(129)] {
            let err = migration_id(bad).expect_err(bad);
            assert!(matches!(err, Invalid::MigrationId { .. }), "{err}");
            assert!(!err.to_string().contains(bad) || bad.is_empty(), "{err}");
        }
    }

    #[test]
    fn shared_storage_ids() {
        assert!(shared_storage_id("k", "filer1:/export/vms").is_ok());
        for bad in ["", " x", "x ", "a\tb", "a\u{202E}b", &"x".repeat(256)] {
            assert!(shared_storage_id("k", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_ids() {
        assert!(request_id("").is_ok());
        assert!(request_id("cs-job:1234.5").is_ok());
        assert!(request_id("a b").is_err());
        assert!(request_id(&"x".repeat(129)).is_err());
    }
}
