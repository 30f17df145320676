//! Following a migration's event stream until it ends, the operator
//! detaches with Ctrl-C, or the stream breaks.

use std::io;
use std::time::Instant;

use tonic::codec::Streaming;

use super::display::Display;
use super::{exit_code, is_terminal, Detach, Style, EXIT_INTERRUPTED};
use crate::proto::MigrationEvent;

/// Follows `stream` until its terminal event, Ctrl-C or a broken stream, and
/// returns the exit code: 0 on COMPLETED, 1 on FAILED, CANCELLED or a broken
/// stream, [`EXIT_INTERRUPTED`] on Ctrl-C.
pub async fn follow(
    mut stream: Streaming<MigrationEvent>,
    style: Style,
    detach: &Detach,
) -> io::Result<i32> {
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
