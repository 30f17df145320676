//! Revocation and rotation without a restart: a component re-reads its
//! configuration file when it changes (polled every [`POLL`]) or on SIGHUP,
//! and puts the new `[[identities]]` and `[[tokens]]` in force for the next
//! call. Open connections stay open; only what they may call changes. A file
//! that does not parse, or whose entries are unusable, changes nothing: the
//! policy in force stays, and the error is logged naming the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::file_stamp;
use crate::config::{ConfigError, GrantConfig};

use super::{Policy, PolicyError, SharedPolicy};

/// How often the file's modification time is checked.
pub const POLL: Duration = Duration::from_secs(2);

/// A component's `identities` and `tokens`, out of its whole configuration.
pub type Grants<C> = fn(&C) -> (&[GrantConfig], &[GrantConfig]);

/// Why a changed file was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read or parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Its identities or tokens are unusable.
    #[error("config file {path}: {source}")]
    Policy {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: PolicyError,
    },
}

/// Reads `path` and puts its identities and tokens in force in `policy`;
/// on any error, `policy` is left as it was.
pub fn reload<C: DeserializeOwned + Default>(
    path: &Path,
    policy: &SharedPolicy,
    grants: Grants<C>,
) -> Result<(usize, usize), ReloadError> {
    let config: C = crate::config::load(Some(path))?;
    let (identities, tokens) = grants(&config);
    let new = Policy::new(identities, tokens).map_err(|source| ReloadError::Policy {
        path: path.display().to_string(),
        source,
    })?;
    let counts = new.counts();
    policy.replace(new);
    Ok(counts)
}

/// Reloads `path` into `policy` whenever it changes or SIGHUP arrives, for as
/// long as the process runs.
pub async fn watch<C: DeserializeOwned + Default>(
    path: PathBuf,
    policy: SharedPolicy,
    grants: Grants<C>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; the configuration is reloaded only when it changes");
            None
        }
    };
    let mut last = file_stamp::of(&path);
    loop {
        let signalled = tokio::select! {
            _ = tokio::time::sleep(POLL) => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = file_stamp::of(&path);
        if !signalled && now == last {
            continue;
        }
        last = now;
        match reload(&path, &policy, grants) {
            Ok((identities, tokens)) => tracing::info!(
                file = %path.display(),
                identities,
                tokens,
                trigger = if signalled { "SIGHUP" } else { "file changed" },
                "identities and tokens reloaded"
            ),
            Err(e) => tracing::error!(
                file = %path.display(),
                error = %e,
                "configuration not reloaded: the identities and tokens in force stay"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    fn grants(c: &NodeConfig) -> (&[GrantConfig], &[GrantConfig]) {
        (&c.identities, &c.tokens)
    }

    fn token_entry(name: &str, token: &str) -> String {
        let hash: String = super::super::policy::sha256(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("[[tokens]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nrole = \"viewer\"\n")
    }

    #[test]
    fn a_valid_file_replaces_the_policy_and_an_invalid_one_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, token_entry("old", "old-secret")).expect("write");
        let policy = SharedPolicy::new(Policy::local_only(), 0);
        reload(&path, &policy, grants).expect("first load");
        assert!(policy.current().by_token("old-secret").is_some());

        std::fs::write(&path, token_entry("new", "new-secret")).expect("write");
        assert_eq!(reload(&path, &policy, grants).expect("reload"), (0, 1));
        assert!(policy.current().by_token("old-secret").is_none(), "revoked");
        assert!(policy.current().by_token("new-secret").is_some());

        // The old form of an identity: refused, naming the file; nothing changes.
        std::fs::write(
            &path,
            "[[identities]]\nname = \"ops.example\"\nrole = \"operator\"\n",
        )
        .expect("write");
        let err = reload(&path, &policy, grants).expect_err("untyped identity");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("dns = \"ops.example\""), "{err}");
        std::fs::write(&path, "tokens = 3").expect("write");
        assert!(reload(&path, &policy, grants).is_err());
        assert!(policy.current().by_token("new-secret").is_some(), "kept");
    }
}
