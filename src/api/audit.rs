//! The audit trail: one structured log line (target `audit`) per mutating
//! call — MigrateVolume, CancelMigration, SetBandwidth, RegisterNode — with
//! who called (and, through the controller, for whom), which RPC, what it
//! targeted and how it ended. Values come from callers, so each is escaped
//! and cut to [`MAX_VALUE`] characters; tokens never appear (a caller is
//! named by its token's configured name).
//!
//! Filter it out of or into a separate sink with `RUST_LOG=audit=info,…`.

use tonic::{Code, Request, Status};

use crate::api::auth::Caller;
use crate::api::client::code_name;

/// Longest value logged, in characters.
pub const MAX_VALUE: usize = 256;

fn clean(value: &str) -> String {
    let cut: String = value.chars().take(MAX_VALUE).collect();
    let mut out = cut.escape_debug().to_string();
    if value.chars().count() > MAX_VALUE {
        out.push('…');
    }
    out
}

/// One mutating call being audited.
pub struct Audit {
    identity: String,
    rpc: &'static str,
    migration_id: String,
    target: String,
}

impl Audit {
    /// Starts the audit of `rpc` (`Node/CancelMigration`) for `req`'s caller.
    pub fn start<T>(req: &Request<T>, rpc: &'static str) -> Audit {
        Audit {
            identity: Caller::of(req)
                .map(Caller::audit_name)
                .unwrap_or_else(|| "(unauthenticated)".into()),
            rpc,
            migration_id: String::new(),
            target: String::new(),
        }
    }

    /// The migration the call is about.
    pub fn migration(mut self, id: &str) -> Audit {
        self.migration_id = clean(id);
        self
    }

    /// What else the call targets, e.g. `domain=web01 disk=vda`.
    pub fn target(mut self, pairs: &[(&str, &str)]) -> Audit {
        self.target = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", clean(v)))
            .collect::<Vec<_>>()
            .join(" ");
        self
    }

    /// Sets the migration id once it is known (a new migration's).
    pub fn set_migration(&mut self, id: &str) {
        self.migration_id = clean(id);
    }

    /// Logs the outcome and passes `result` on.
    pub fn finish<T>(self, result: Result<T, Status>) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        tracing::info!(
            target: "audit",
            identity = %self.identity,
            rpc = self.rpc,
            migration_id = %self.migration_id,
            target = %self.target,
            code = code_name(code),
            "audit"
        );
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_bounded() {
        assert_eq!(clean("a\nb\u{1b}"), "a\\nb\\u{1b}");
        let long = clean(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), MAX_VALUE + 1);
    }
}
