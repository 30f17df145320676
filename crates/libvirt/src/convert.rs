//! The offline copy of a stopped guest's disk: `qemu-img convert` of the
//! image (its backing chain flattened into the copy) into the volume volmig
//! created, sparse, watched so it can report progress and be stopped.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use volmig_engine::hypervisor::{HvError, ImageCopy};

/// How often the copy is checked for its end, its progress and a stop.
const POLL: Duration = Duration::from_millis(100);

/// Copies the guest-visible contents of `copy.source` into the existing
/// image of `copy.dest`. `-U` reads the source without taking its lock, so an operator who
/// starts the guest meanwhile is not refused (the engine notices the start and
/// abandons the copy); `-n` writes into the volume volmig created instead of
/// replacing it, keeping its identity. Zeroes are skipped (`-S`, the default)
/// and, on a fresh file, not written at all (`--target-is-zero`): a block
/// device may hold old data, so there they are written.
pub fn convert(
    copy: &ImageCopy<'_>,
    progress: &dyn Fn(u64),
    stop: &AtomicBool,
) -> Result<(), HvError> {
    let (source, dest, bandwidth) = (copy.source, copy.dest.path.as_str(), copy.bandwidth);
    let dest_is_file = std::fs::metadata(dest).is_ok_and(|m| m.is_file());
    let mut args = vec![
        "convert",
        "-U",
        "-p",
        "-n",
        "-f",
        copy.source_format.as_str(),
        "-O",
        copy.dest_format.as_str(),
    ];
    if dest_is_file {
        args.push("--target-is-zero");
    }
    // The request's bandwidth holds offline too (bytes/s).
    let rate = bandwidth.to_string();
    if bandwidth > 0 {
        args.extend(["-r", rate.as_str()]);
    }
    args.extend(["--", source, dest]);
    let mut command = Command::new("qemu-img");
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe and touches no memory of
    // the parent.
    unsafe {
        command.pre_exec(|| {
            // A node killed mid-copy must not leave qemu-img writing into a
            // destination that its successor deletes.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HvError::Unsupported(format!("cannot run qemu-img: {e}")))?;
    // Hundredths of a percent, as `-p` prints it ("(12.34/100%)").
    let percent = Arc::new(AtomicU64::new(0));
    let stdout = child.stdout.take().map(|out| {
        let percent = percent.clone();
        std::thread::spawn(move || read_progress(out, &percent))
    });
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut text = String::new();
            // What qemu-img said is only for the error message.
            let _ = err.read_to_string(&mut text);
            text
        })
    });
    let status = loop {
        if stop.load(Ordering::Relaxed) {
            // Killed, not asked: the engine deletes the destination next.
            let _ = child.kill();
            let _ = child.wait();
            return Err(HvError::InvalidState(
                "the offline copy was stopped".to_string(),
            ));
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                return Err(HvError::Unsupported(format!(
                    "cannot wait for qemu-img: {e}"
                )))
            }
        }
        progress(percent.load(Ordering::Relaxed));
        std::thread::sleep(POLL);
    };
    if let Some(t) = stdout {
        let _ = t.join();
    }
    let message = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        return Err(HvError::Tool {
            command: "qemu-img convert",
            status: match status.code() {
                Some(code) => format!("exit status {code}"),
                None => status.to_string(),
            },
            message: message.trim().to_string(),
        });
    }
    progress(10_000);
    Ok(())
}

/// Follows `-p`'s progress lines, separated by carriage returns.
fn read_progress(mut out: impl Read, percent: &AtomicU64) {
    let mut buf = [0u8; 256];
    let mut line = Vec::new();
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\r' || b == b'\n' {
                if let Some(p) = parse_percent(&String::from_utf8_lossy(&line)) {
                    percent.store(p, Ordering::Relaxed);
                }
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
}

/// "    (12.34/100%)" → 1234.
fn parse_percent(line: &str) -> Option<u64> {
    let inner = line.trim().strip_prefix('(')?.split('/').next()?;
    let value: f64 = inner.trim().parse().ok()?;
    (0.0..=100.0)
        .contains(&value)
        .then(|| (value * 100.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_percent;

    #[test]
    fn progress_lines_are_read_as_hundredths_of_a_percent() {
        assert_eq!(parse_percent("    (12.34/100%)"), Some(1234));
        assert_eq!(parse_percent("(100.00/100%)"), Some(10_000));
        assert_eq!(parse_percent("garbage"), None);
        assert_eq!(parse_percent("(250.00/100%)"), None);
    }
}
