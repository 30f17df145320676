//! The lazily (re)connected libvirt handle. Every libvirt call goes through
//! `LibvirtHost::call`, which reconnects once when libvirtd went away,
//! observes the call, and turns its failure into an `HvError` (classified by
//! error number in `error.rs`).

use std::sync::Arc;

use virt::connect::Connect;
use virt::error::Error;
use volmig_engine::hypervisor::HvError;

use crate::error;
use crate::LibvirtHost;

/// A failed call on the connection, before it becomes an `HvError`.
#[derive(Debug)]
pub(crate) enum CallError {
    /// An argument held a NUL byte and cannot become a C string.
    Nul(String),
    /// libvirt refused the call.
    Libvirt(Error),
    /// libvirt returned XML that could not be parsed.
    BadXml(String),
}

impl From<Error> for CallError {
    fn from(err: Error) -> Self {
        CallError::Libvirt(err)
    }
}

impl LibvirtHost {
    fn connection(&self) -> Result<Arc<Connect>, HvError> {
        let mut slot = self
            .conn
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = Connect::open(Some(&self.uri)).map_err(|e| HvError::Unreachable {
            uri: self.uri.clone(),
            message: e.message().to_string(),
        })?;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn forget_connection(&self) {
        let mut slot = self
            .conn
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *slot = None;
    }

    /// Runs `f` on the connection, reconnecting once if libvirtd went away;
    /// every libvirt call goes through here, so this is where they are observed.
    pub(crate) fn call<T>(
        &self,
        op: &'static str,
        subject: &str,
        f: impl Fn(&Connect) -> Result<T, CallError>,
    ) -> Result<T, HvError> {
        // A child of the caller's span (a migration's phase): the call's
        // duration, and its error as the span's status.
        let span = tracing::info_span!(
            "libvirt",
            otel.name = %format!("libvirt {op}"),
            call = op,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let result = self.call_once_reconnecting(op, subject, f);
        if let Err(e) = &result {
            tracing::debug!(error = %e, "libvirt call failed");
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", e.to_string().as_str());
        }
        self.observer.call(op, started.elapsed(), result.is_err());
        result
    }

    fn call_once_reconnecting<T>(
        &self,
        op: &'static str,
        subject: &str,
        f: impl Fn(&Connect) -> Result<T, CallError>,
    ) -> Result<T, HvError> {
        let mut retried = false;
        loop {
            let conn = self.connection()?;
            match f(&conn) {
                Ok(v) => return Ok(v),
                Err(CallError::Libvirt(e))
                    if !retried
                        && (error::is_connection_lost(&e) || !conn.is_alive().unwrap_or(false)) =>
                {
                    tracing::warn!(uri = %self.uri, op, "libvirt connection lost, reconnecting");
                    self.forget_connection();
                    retried = true;
                }
                Err(CallError::Libvirt(e)) => {
                    if error::is_connection_lost(&e) {
                        // Still lost after a fresh connection: libvirtd is down or restarting.
                        self.forget_connection();
                        return Err(HvError::Unreachable {
                            uri: self.uri.clone(),
                            message: e.message().to_string(),
                        });
                    }
                    return Err(error::classify(op, subject, &self.uri, e));
                }
                Err(CallError::BadXml(e)) => return Err(HvError::BadXml(e)),
                Err(CallError::Nul(s)) => {
                    return Err(HvError::InvalidArgument(format!(
                        "'{s}' contains a NUL byte"
                    )))
                }
            }
        }
    }
}

pub(crate) fn bad_xml(e: String) -> CallError {
    CallError::BadXml(e)
}

/// Skips an object that vanished while it was being looked at (another
/// client undefined the domain or removed the pool or volume): what no longer
/// exists uses nothing. Every other error is passed on.
pub(crate) fn unless_vanished<T>(r: Result<T, virt::error::Error>) -> Result<Option<T>, CallError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if error::is_vanished(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
