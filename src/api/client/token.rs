//! The bearer token a client presents: given as text, or read from a token
//! file that is re-read when it changes, so a rotated token is used without
//! a restart.
//!
//! A token file is a credential: it must hold at least [`MIN_TOKEN_CHARS`]
//! characters (services keep only hashes, so a short token could be guessed
//! offline from a leaked configuration) and be neither readable nor writable
//! by group or others. Both are checked at start, where a failure stops the
//! component, and at each re-read, where it keeps the previous token in use
//! (and is logged), as a half-written rotation must not take a running
//! component down. The file's identity (inode, size, times) is looked at
//! most once per [`RECHECK`], so a burst of calls costs one `stat`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};

use crate::api::file_stamp::{self, FileStamp};
use crate::api::secret_files::{self, SecretFileError, SecretKind};

/// Shortest token a token file may hold; `openssl rand -hex 32` makes 64.
pub const MIN_TOKEN_CHARS: usize = 32;
/// How long a token file is not looked at again after a look.
const RECHECK: Duration = Duration::from_secs(1);

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token has characters a header cannot carry.
    #[error("the token must be printable ASCII")]
    NotAscii,
    /// The token file could not be read.
    #[error("cannot read token file {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The token file's token is too short to resist guessing.
    #[error("token file {path} holds a {chars}-character token; a token must have at least {MIN_TOKEN_CHARS}: make one with `openssl rand -hex 32 > {path}` and give the service its SHA-256 (`printf %s \"$(cat {path})\" | sha256sum`)")]
    TooShort {
        /// The file.
        path: String,
        /// How many characters it holds.
        chars: usize,
    },
    /// Others may read or change the token file.
    #[error(transparent)]
    Mode(#[from] SecretFileError),
}

/// The `authorization` value for `token` (surrounding whitespace, such as a
/// file's final newline, dropped); `None` for an empty token.
fn header(token: &str) -> Result<Option<MetadataValue<Ascii>>, TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Ok(None);
    }
    MetadataValue::try_from(format!("Bearer {token}"))
        .map(Some)
        .map_err(|_| TokenError::NotAscii)
}

/// Reads and checks a token file: its mode, then its token's length.
fn read(path: &Path) -> Result<MetadataValue<Ascii>, TokenError> {
    secret_files::check(path, SecretKind::Private, "token file")?;
    let text = std::fs::read_to_string(path).map_err(|e| TokenError::Unreadable {
        path: path.display().to_string(),
        reason: e.kind().to_string(),
    })?;
    let chars = text.trim().chars().count();
    if chars < MIN_TOKEN_CHARS {
        return Err(TokenError::TooShort {
            path: path.display().to_string(),
            chars,
        });
    }
    header(&text)?.ok_or(TokenError::NotAscii)
}

/// A time source; unit tests step one by hand.
type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

struct FileState {
    value: MetadataValue<Ascii>,
    /// The version of the file last looked at (whether it was usable or not).
    stamp: Option<FileStamp>,
    checked: Instant,
}

struct TokenFile {
    path: PathBuf,
    clock: Clock,
    state: Mutex<FileState>,
}

impl TokenFile {
    fn current(&self) -> MetadataValue<Ascii> {
        let now = (self.clock)();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(state.checked) >= RECHECK {
            state.checked = now;
            let seen = file_stamp::of(&self.path);
            if seen != state.stamp {
                state.stamp = seen;
                match read(&self.path) {
                    Ok(value) => {
                        if value != state.value {
                            tracing::info!(file = %self.path.display(), "token file changed: presenting its new token");
                        }
                        state.value = value;
                    }
                    Err(e) => {
                        tracing::warn!(file = %self.path.display(), error = %e, "token file changed but cannot be used; still presenting the previous token");
                    }
                }
            }
        }
        state.value.clone()
    }
}

enum Source {
    Fixed(MetadataValue<Ascii>),
    File(TokenFile),
}

/// A bearer token to present. `Debug` never shows it.
#[derive(Clone)]
pub struct Token(Arc<Source>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &*self.0 {
            Source::Fixed(_) => "Token(given)",
            Source::File(_) => "Token(file)",
        })
    }
}

impl Token {
    /// A token given as text (`VOLMIG_TOKEN`, tests); `None` when empty.
    pub fn fixed(token: &str) -> Result<Option<Token>, TokenError> {
        Ok(header(token)?.map(|v| Token(Arc::new(Source::Fixed(v)))))
    }

    /// The token of the file at `path`, checked now and re-read when the
    /// file changes (see the module's documentation).
    pub fn load(path: &Path) -> Result<Token, TokenError> {
        Token::load_with_clock(path, Arc::new(Instant::now))
    }

    fn load_with_clock(path: &Path, clock: Clock) -> Result<Token, TokenError> {
        let seen = file_stamp::of(path);
        let value = read(path)?;
        let checked = clock();
        Ok(Token(Arc::new(Source::File(TokenFile {
            path: path.to_path_buf(),
            clock,
            state: Mutex::new(FileState {
                value,
                stamp: seen,
                checked,
            }),
        }))))
    }

    /// The `authorization` header value to send now.
    pub fn header(&self) -> MetadataValue<Ascii> {
        match &*self.0 {
            Source::Fixed(value) => value.clone(),
            Source::File(file) => file.current(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    /// Writes `text` with `mode` and a modification time of its own, so a
    /// rewrite within the same clock tick still reads as a change.
    fn write(path: &Path, text: &str, mode: u32, generation: u64) {
        std::fs::write(path, text).expect("write");
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + generation))
            .expect("mtime");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn bearer(token: &str) -> MetadataValue<Ascii> {
        MetadataValue::try_from(format!("Bearer {token}")).expect("ascii")
    }

    #[test]
    fn a_short_token_file_is_refused_with_how_to_make_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        write(&path, "short-token\n", 0o600, 0);
        let err = Token::load(&path).expect_err("11 characters");
        let text = err.to_string();
        assert!(
            matches!(err, TokenError::TooShort { chars: 11, .. }),
            "{text}"
        );
        assert!(text.contains("openssl rand -hex 32"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        write(&path, &format!("{}\n", &A[..MIN_TOKEN_CHARS]), 0o600, 1);
        assert_eq!(
            Token::load(&path).expect("32 characters").header(),
            bearer(&A[..MIN_TOKEN_CHARS])
        );
    }

    #[test]
    fn a_token_file_others_can_read_or_change_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        for mode in [0o640, 0o604, 0o620, 0o666] {
            write(&path, A, mode, 0);
            let err = Token::load(&path).expect_err("too open");
            assert!(matches!(err, TokenError::Mode(_)), "{mode:o}: {err}");
            assert!(err.to_string().contains("chmod go-rwx"), "{err}");
        }
        write(&path, A, 0o400, 0);
        Token::load(&path).expect("owner-only");
        let err = Token::load(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_rotated_token_file_is_used_after_the_recheck_and_a_bad_one_keeps_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        write(&path, A, 0o600, 0);
        let now = Arc::new(Mutex::new(Instant::now()));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || *now.lock().expect("clock"))
        };
        let step = |d: Duration| *now.lock().expect("clock") += d;
        let token = Token::load_with_clock(&path, clock).expect("load");
        assert_eq!(token.header(), bearer(A));

        write(&path, B, 0o600, 1);
        // Within one recheck interval the file is not looked at again.
        step(RECHECK / 2);
        assert_eq!(token.header(), bearer(A));
        step(RECHECK / 2);
        assert_eq!(token.header(), bearer(B), "rotated without a restart");

        // Unusable new versions keep the previous token: too short, too
        // open, gone.
        write(&path, "short", 0o600, 2);
        step(RECHECK);
        assert_eq!(token.header(), bearer(B));
        write(&path, A, 0o644, 3);
        step(RECHECK);
        assert_eq!(token.header(), bearer(B));
        std::fs::remove_file(&path).expect("rm");
        step(RECHECK);
        assert_eq!(token.header(), bearer(B));
        // And a good one is taken again.
        write(&path, A, 0o600, 4);
        step(RECHECK);
        assert_eq!(token.header(), bearer(A));
    }

    #[test]
    fn given_tokens_are_checked_only_for_what_a_header_can_carry() {
        assert!(Token::fixed("  \n").expect("empty").is_none());
        assert_eq!(
            Token::fixed("s3cret\n")
                .expect("ok")
                .expect("some")
                .header(),
            bearer("s3cret")
        );
        assert!(matches!(
            Token::fixed("bad\u{7f}"),
            Err(TokenError::NotAscii)
        ));
        assert_eq!(
            format!("{:?}", Token::fixed("s3cret").expect("ok")),
            "Some(Token(given))"
        );
    }
}
