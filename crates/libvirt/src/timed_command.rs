//! Runs a command that may hang (`qemu-img` against a Ceph cluster whose
//! monitors do not answer) with a deadline. Its stdout and stderr are drained
//! while it runs: a child whose output outgrows the pipe buffer (64 KiB; the
//! extent map of a large image does) would otherwise block on the write and
//! look like a hang.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the child is checked for having exited. A poll, not a retry:
/// nothing is attempted again, `std::process::Child` only has no wait with a
/// timeout.
const POLL: Duration = Duration::from_millis(20);

/// Runs `cmd` with `stdin` on its standard input (then closed); `None` if it
/// has not exited within `timeout`, in which case it is killed.
pub fn run(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<Option<Output>> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    if let Some(mut pipe) = child.stdin.take() {
        // A failed write shows up as the command's own error; dropping the
        // pipe closes it, so the command reads to its end.
        let _ = pipe.write_all(stdin.unwrap_or_default());
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The drains end when the pipes close; not waited for, in case
            // something the command started still holds them.
            return Ok(None);
        }
        std::thread::sleep(POLL);
    };
    Ok(Some(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }))
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error ends the output where it happened; the exit
            // status still tells whether the command succeeded.
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

fn collect(drain: JoinHandle<Vec<u8>>) -> Vec<u8> {
    // A drain that panicked (it only reads into a Vec) leaves the output
    // empty rather than taking the caller down with it.
    drain.join().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn output_larger_than_a_pipe_buffer_is_not_taken_for_a_hang() {
        let output = run(
            sh("head -c 1000000 /dev/zero"),
            None,
            Duration::from_secs(20),
        )
        .expect("runs")
        .expect("exits well within the deadline");
        assert!(output.status.success());
        assert_eq!(output.stdout.len(), 1_000_000);
    }

    #[test]
    fn a_command_past_its_deadline_is_killed() {
        let started = Instant::now();
        let outcome = run(sh("exec sleep 30"), None, Duration::from_millis(100)).expect("runs");
        assert!(outcome.is_none());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stdin_reaches_the_command_and_stderr_comes_back() {
        let output = run(
            sh("cat; echo oops >&2; exit 3"),
            Some(b"key"),
            Duration::from_secs(20),
        )
        .expect("runs")
        .expect("exits");
        assert_eq!(output.stdout, b"key");
        assert_eq!(output.stderr, b"oops\n");
        assert_eq!(output.status.code(), Some(3));
    }
}
