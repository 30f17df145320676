//! Refusing credential files that other users could change or read.
//!
//! A CA, CRL or certificate file that others can write lets them add a CA or
//! drop a revocation; a key or token file that others can read gives them the
//! credential. Such files are refused when they are loaded (at start and at
//! every reload), naming the file and its mode, instead of being trusted
//! silently. The check follows symbolic links, as the loading does: what is
//! judged is the file that is read.
//!
//! One exception, PostgreSQL's and Debian's `ssl-cert` convention: a service
//! that does not run as root may read a private file through its own group
//! (mode 0440/0640, group = the service's group, owner root or the service).
//! Kubernetes gives secret files exactly that shape when a pod sets
//! `fsGroup`, and nobody outside the service's group can read them. A service
//! running as root gets no such exception: its keys are 0600/0400.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a file holds, which decides what others may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// Public material (CA, CRL, certificate): others may read, not write.
    Trust,
    /// A private key or a token: others may neither read nor write.
    Private,
}

impl SecretKind {
    fn forbidden_bits(self) -> u32 {
        match self {
            SecretKind::Trust => 0o022,
            SecretKind::Private => 0o077,
        }
    }
}

/// A credential file whose mode lets others change or read it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretFileError {
    /// The mode is too open.
    #[error("{what} {path} has mode {mode:04o}: {why}; fix with `chmod {fix} {path}`")]
    TooOpen {
        /// `CA file`, `private key`, …
        what: &'static str,
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
        /// Who could do what.
        why: &'static str,
        /// The mode to set (`go-w` or `go-rwx`).
        fix: &'static str,
    },
    /// The file could not be examined.
    #[error("cannot read {what} {path}: {reason}")]
    Unreadable {
        /// `CA file`, `private key`, …
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Checks that `path` (described as `what` in errors) is not writable by
/// group or others, and for [`SecretKind::Private`] not readable by them either.
pub fn check(path: &Path, kind: SecretKind, what: &'static str) -> Result<(), SecretFileError> {
    let meta = std::fs::metadata(path).map_err(|e| SecretFileError::Unreadable {
        what,
        path: path.display().to_string(),
        reason: e.kind().to_string(),
    })?;
    let mode = meta.mode() & 0o7777;
    let mut forbidden = kind.forbidden_bits();
    if kind == SecretKind::Private && readable_through_own_group(&meta) {
        forbidden &= !0o040;
    }
    if mode & forbidden == 0 {
        return Ok(());
    }
    let (why, fix) = if mode & 0o022 != 0 {
        (
            "other users can change it",
            match kind {
                SecretKind::Trust => "go-w",
                SecretKind::Private => "go-rwx",
            },
        )
    } else {
        ("other users can read it", "go-rwx")
    };
    Err(SecretFileError::TooOpen {
        what,
        path: path.display().to_string(),
        mode,
        why,
        fix,
    })
}

/// Whether the file is the non-root service's own: group is the process's
/// effective group, owner is root or the process.
fn readable_through_own_group(meta: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    own_group_file((meta.uid(), meta.gid()), (uid, gid))
}

fn own_group_file((file_uid, file_gid): (u32, u32), (uid, gid): (u32, u32)) -> bool {
    uid != 0 && gid != 0 && file_gid == gid && (file_uid == 0 || file_uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_with_mode(dir: &Path, mode: u32) -> std::path::PathBuf {
        let path = dir.join(format!("f{mode:o}"));
        std::fs::write(&path, "x").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn trust_files_may_be_read_but_not_written_by_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        for ok in [0o644, 0o600, 0o444] {
            check(
                &file_with_mode(dir.path(), ok),
                SecretKind::Trust,
                "CA file",
            )
            .expect("fine");
        }
        for bad in [0o666, 0o664, 0o646] {
            let err = check(
                &file_with_mode(dir.path(), bad),
                SecretKind::Trust,
                "CA file",
            )
            .expect_err("writable by others");
            let text = err.to_string();
            assert!(text.contains(&format!("{bad:04o}")), "{text}");
            assert!(
                text.contains("can change it") && text.contains("chmod go-w"),
                "{text}"
            );
        }
    }

    #[test]
    fn private_files_may_be_neither_read_nor_written_by_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        check(
            &file_with_mode(dir.path(), 0o600),
            SecretKind::Private,
            "private key",
        )
        .expect("fine");
        check(
            &file_with_mode(dir.path(), 0o400),
            SecretKind::Private,
            "private key",
        )
        .expect("fine");
        let err = check(
            &file_with_mode(dir.path(), 0o640),
            SecretKind::Private,
            "token file",
        )
        .expect_err("readable by the group");
        assert!(err.to_string().contains("can read it"), "{err}");
        assert!(err.to_string().contains("chmod go-rwx"), "{err}");
        let err = check(
            &file_with_mode(dir.path(), 0o620),
            SecretKind::Private,
            "token file",
        )
        .expect_err("writable by the group");
        assert!(err.to_string().contains("can change it"), "{err}");
    }

    #[test]
    fn only_a_non_root_service_may_read_its_key_through_its_own_group() {
        // Kubernetes with fsGroup 10001: root:10001, the service 10001:10001.
        assert!(own_group_file((0, 10001), (10001, 10001)));
        assert!(own_group_file((10001, 10001), (10001, 10001)));
        // Another group, another owner, or a service running as root: no.
        assert!(!own_group_file((0, 50), (10001, 10001)));
        assert!(!own_group_file((2000, 10001), (10001, 10001)));
        assert!(!own_group_file((0, 0), (0, 0)));
        assert!(!own_group_file((0, 10001), (0, 10001)));
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = check(
            Path::new("/nonexistent/ca.pem"),
            SecretKind::Trust,
            "CA file",
        )
        .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
