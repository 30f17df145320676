//! The audit trail: one structured log line (target `audit`) per mutating
//! call — MigrateVolume, CancelMigration, SetBandwidth, RegisterNode — with
//! who called (and, through the controller, for whom), which RPC, what it
//! targeted and how it ended, and the peer address it came from. Values
//! come from callers, so each is escaped and cut to [`MAX_VALUE`]
//! characters, lists to [`MAX_ITEMS`] items, and every value is logged as a
//! string, which the text format quotes: a space in a name cannot forge a
//! `key=value` field. Tokens never appear (a caller is named by its token's
//! configured name). Refused calls are logged by [`crate::api::auth`].
//!
//! Filter it out of or into a separate sink with `RUST_LOG=audit=info,…`.

use tonic::{Code, Request, Status};

use crate::api::auth::Caller;
use crate::api::client::code_name;

/// Longest value logged, in characters.
pub const MAX_VALUE: usize = 256;
/// Most items of a list logged; the rest are counted.
pub const MAX_ITEMS: usize = 16;

/// `items` joined by `,`, at most [`MAX_ITEMS`] of them, then `…(+N more)`.
pub fn bounded_list(items: &[&str]) -> String {
    let mut out = items
        .iter()
        .take(MAX_ITEMS)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    if items.len() > MAX_ITEMS {
        out.push_str(&format!("…(+{} more)", items.len() - MAX_ITEMS));
    }
    out
}

/// How a request's peer is named in logs: its address, or `unix`.
pub fn peer_of<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unix".into())
}

pub(crate) fn clean(value: &str) -> String {
    let cut: String = value.chars().take(MAX_VALUE).collect();
    let mut out = cut.escape_debug().to_string();
    if value.chars().count() > MAX_VALUE {
        out.push('…');
    }
    out
}

/// One mutating call being audited.
pub struct Audit {
    peer: String,
    identity: String,
    rpc: &'static str,
    migration_id: String,
    target: String,
}

impl Audit {
    /// Starts the audit of `rpc` (`Node/CancelMigration`) for `req`'s caller.
    pub fn start<T>(req: &Request<T>, rpc: &'static str) -> Audit {
        Audit {
            peer: peer_of(req),
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
            peer = self.peer.as_str(),
            identity = self.identity.as_str(),
            rpc = self.rpc,
            migration_id = self.migration_id.as_str(),
            target = self.target.as_str(),
            code = code_name(code),
            "audit"
        );
        result
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What a text-format subscriber writes while `f` runs.
    pub(crate) fn text_log(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf8")
    }

    #[test]
    fn audit_values_are_quoted_so_a_name_cannot_forge_a_field() {
        let mut req = Request::new(());
        req.extensions_mut().insert(Caller {
            on_behalf_of: Some("bob code=OK identity=admin".into()),
            ..Caller::local("cert:ops")
        });
        let disks: Vec<String> = (0..12_000).map(|i| format!("vd{i}")).collect();
        let disks: Vec<&str> = disks.iter().map(String::as_str).collect();
        let line = text_log(|| {
            let audit = Audit::start(&req, "Node/MigrateVolume")
                .target(&[("domain", "web01 code=OK"), ("disk", &bounded_list(&disks))]);
            let _ = audit.finish::<()>(Err(Status::permission_denied("no")));
        });
        assert!(
            line.contains(r#"identity="cert:ops for bob code=OK identity=admin""#),
            "{line}"
        );
        assert!(
            line.contains(r#"target="domain=web01 code=OK disk=vd0,vd1,"#),
            "{line}"
        );
        assert!(line.contains("…(+11984 more)"), "{line}");
        assert!(line.contains(r#"peer="unix""#), "{line}");
        assert!(line.contains(r#"code="PERMISSION_DENIED""#), "{line}");
        assert!(line.len() < 1024, "{} bytes: {line}", line.len());
    }

    #[test]
    fn values_are_escaped_and_bounded() {
        assert_eq!(clean("a\nb\u{1b}"), "a\\nb\\u{1b}");
        let long = clean(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), MAX_VALUE + 1);
    }
}
