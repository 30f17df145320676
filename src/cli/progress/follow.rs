//! Following a migration's event stream until it ends, the operator
//! detaches with Ctrl-C, or the stream breaks.

use std::io;
use std::time::Instant;

use tonic::codec::Streaming;

use super::display::Display;
use super::{exit_code, is_terminal, Detach, Style, EXIT_INTERRUPTED};
use crate::proto::MigrationEvent;

/// Streams attached again after a break, at most, before the break is
/// reported: each follows the death of the controller serving the one
/// before, and with two or three controllers more would go round in circles.
const REATTACH_AT_MOST: usize = 3;

/// Follows `stream` until its terminal event, Ctrl-C or a broken stream, and
/// returns the exit code: 0 on COMPLETED, 1 on FAILED, CANCELLED or a broken
/// stream, [`EXIT_INTERRUPTED`] on Ctrl-C.
///
/// A stream that breaks (the controller serving it died or went away) is
/// replaced by `reattach`, given the migration id if an event named it:
/// the caller watches that migration through another controller, or, before
/// the first event, repeats its request with the same request id. `None`
/// from it reports the break.
pub async fn follow<R, Fut>(
    mut stream: Streaming<MigrationEvent>,
    style: Style,
    detach: &Detach,
    mut reattach: R,
) -> io::Result<i32>
where
    R: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Option<Streaming<MigrationEvent>>>,
{
    let mut reattached = 0;
    let mut display = Display::new(style, io::stdout(), io::stderr());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // If the handler cannot be installed, Ctrl-C keeps its default effect of
    // ending the process, which also only detaches.
    let mut ctrl_c_armed = true;
    loop {
        tokio::select! {
            signal = &mut ctrl_c, if ctrl_c_armed => match signal {
                Ok(()) => {
                    display.interrupted(detach)?;
                    return Ok(EXIT_INTERRUPTED);
                }
                Err(_) => ctrl_c_armed = false,
            },
            message = stream.message() => match message {
                Ok(Some(ev)) => {
                    display.event(&ev, Instant::now())?;
                    if is_terminal(ev.phase()) {
                        return Ok(exit_code(ev.phase()));
                    }
                }
                Ok(None) | Err(_) if reattached < REATTACH_AT_MOST && broken(&message) => {
                    reattached += 1;
                    let id = display
                        .migration_id()
                        .map(str::to_string)
                        .or_else(|| detach.migration_id.clone());
                    match reattach(id).await {
                        Some(again) => {
                            let problem = match &message {
                                Err(status) => status.message().to_string(),
                                Ok(_) => "it ended early".to_string(),
                            };
                            display.reattached(&problem)?;
                            stream = again;
                        }
                        None => {
                            display.stream_lost(message.as_ref().err(), detach)?;
                            return Ok(1);
                        }
                    }
                }
                Ok(None) => {
                    display.stream_lost(None, detach)?;
                    return Ok(1);
                }
                Err(status) => {
                    display.stream_lost(Some(&status), detach)?;
                    return Ok(1);
                }
            },
        }
    }
}

/// Whether the stream ended by a fault of the connection or the serving
/// controller, rather than by the service's word on the migration: only
/// then may another controller carry on.
fn broken(message: &Result<Option<MigrationEvent>, tonic::Status>) -> bool {
    match message {
        Ok(Some(_)) => false,
        Ok(None) => true,
        Err(status) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        ),
    }
}
