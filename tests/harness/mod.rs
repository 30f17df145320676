//! Shared harness for volmig's integration tests: real libvirt pools and a real guest that
//! keeps writing numbered records, so a test can move the guest's disk and then prove that
//! nothing the guest was told was written got lost.
//!
//! Everything goes through the `virsh`, `qemu-img`, `losetup` and ceph CLIs, never through
//! the volmig crate: the harness is the independent witness of what libvirt really did.
//!
//! Invariants that make the tests safe to run in parallel (several threads and several test
//! binaries at once) and after a crash:
//! - every object a test creates (domain, pool, secret, RBD image, temp dir, loop device
//!   backing file, mount point) is named by [`unique_name`]: `volmig-t<PID>-<id>-<purpose>`;
//! - the first constructor in a process calls [`sweep_stale`], which removes such objects
//!   whose PID is no longer a live process;
//! - each object's owner removes it in `Drop`, printing (not panicking on) failures, and
//!   declared-later-dropped-first order does the rest: create pools before guests.
//!
//! Use from a test file with `mod harness;`. Not every binary uses every item, hence the
//! `allow`s below.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod checks;
pub mod controller;
pub mod defined;
pub mod drain;
pub mod etcd;
pub mod fleet;
pub mod fs_pool;
pub mod guest;
pub mod ha_bed;
pub mod hosts;
pub mod node;
pub mod pattern;
pub mod pools;
pub mod power;
pub mod prometheus;
pub mod records;
pub mod scratch;
pub mod service;
pub mod shared_pool;
mod sweep;
pub mod unit;
pub mod xml;

pub use defined::DefinedDomain;
pub use fs_pool::FsPool;
pub use guest::{writing_guest_with_data, DiskSource, Guest, GuestBuilder};
pub use pools::{ceph_down, CephEnv, DirPool, DiskPool, Pool, PoolKind, RbdPool, CEPH_DIR};
pub use sweep::sweep_stale;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The connection every test uses.
pub const LIBVIRT_URI: &str = "qemu:///system";

/// Where tests put their temp dirs. QEMU (user libvirt-qemu) must be able to search every
/// directory above a disk image or kernel, and /var/tmp is 1777 (a 0700 `mktemp -d` dir
/// under it is not enough, hence [`make_dir`] sets 0755).
pub const WORK_BASE: &str = "/var/tmp";

/// Common prefix of all names; [`sweep_stale`] only ever touches names that start with it
/// followed by a PID.
pub const NAME_PREFIX: &str = "volmig-t";

/// Default bound on one CLI call, so a hung libvirtd or ceph fails a test instead of
/// blocking it forever.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(180);

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A random 16-bit tag, fixed for the process: names stay unique even when a PID of a
/// crashed run (whose objects were not swept yet) is reused.
fn process_tag() -> u16 {
    static TAG: OnceLock<u16> = OnceLock::new();
    *TAG.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        // RandomState is seeded randomly per process; the clock only adds to it.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        h.write_u128(now.map(|d| d.as_nanos()).unwrap_or_default());
        (h.finish() & 0xffff) as u16
    })
}

/// `volmig-t<PID>-<4 hex tag><counter>-<purpose>`, unique among all processes on the host.
/// `purpose` is reduced to `[a-z0-9-]` and 24 characters, so the name is valid for every
/// kind of object (libvirt names, RBD images, file names).
pub fn unique_name(purpose: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let purpose: String = purpose
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(24)
        .collect();
    format!(
        "{NAME_PREFIX}{}-{:04x}{n}-{purpose}",
        std::process::id(),
        process_tag()
    )
}

/// The PID in a name made by [`unique_name`] (the name may be a path's last component).
pub fn name_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits = rest.split('-').next()?;
    if digits.is_empty() || !rest[digits.len()..].starts_with('-') {
        return None;
    }
    digits.parse().ok()
}

/// Whether `pid` is a live process here. A zombie counts as dead: daemons re-parented to
/// PID 1 may stay zombies for a while, and `kill -0` succeeds on them.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself hold ") ".
    match stat.rfind(") ").and_then(|i| stat[i + 2..].chars().next()) {
        Some(state) => state != 'Z' && state != 'X',
        None => false,
    }
}

/// Creates `WORK_BASE/<name>` with mode 0755 (searchable by QEMU) and returns it.
pub fn make_dir(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(WORK_BASE).join(name);
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod 0755 {}: {e}", dir.display()));
    dir
}

/// Removes a directory tree, printing (not panicking on) a failure: for `Drop`.
pub fn remove_dir_noisy(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("harness: cannot remove {}: {e}", dir.display());
        }
    }
}

/// Runs `program args` bounded by `timeout` (via coreutils `timeout`, which kills it and
/// its process group leader). Ok(stdout) on exit status 0, else Err with the command line,
/// status and both outputs.
pub fn run_with_timeout(program: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let secs = timeout.as_secs().max(1).to_string();
    let output: Output = Command::new("timeout")
        .args(["--kill-after=10", &secs, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let why = match output.status.code() {
        Some(124) | Some(137) => format!("timed out after {secs} s"),
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_string(),
    };
    Err(format!(
        "`{program} {}` failed ({why}): {}{}",
        args.join(" "),
        stderr.trim(),
        if stdout.trim().is_empty() {
            String::new()
        } else {
            format!(" [stdout: {}]", stdout.trim())
        }
    ))
}

/// Runs a command with the default timeout; see [`run_with_timeout`].
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    run_with_timeout(program, args, CMD_TIMEOUT)
}

/// Runs a command that must succeed; panics with its output otherwise.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the `volmig` binary under test with `args` and extra environment
/// variables (logging at `warn`); returns its exit code, stdout and stderr.
pub fn volmig(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_volmig"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run volmig");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `virsh -c qemu:///system ARGS`: Ok(stdout) or Err(command, status, stderr).
pub fn virsh(args: &[&str]) -> Result<String, String> {
    virsh_with_timeout(args, CMD_TIMEOUT)
}

/// [`virsh`] with an explicit bound, for long calls such as `blockcopy --wait`.
pub fn virsh_with_timeout(args: &[&str], timeout: Duration) -> Result<String, String> {
    // A test on simulated hosts (`hosts::SimHost::libvirt_scope`) sends these to a host.
    let uri = hosts::libvirt_uri_override().unwrap_or_else(|| LIBVIRT_URI.to_string());
    let mut full = vec!["-c", uri.as_str()];
    full.extend_from_slice(args);
    run_with_timeout("virsh", &full, timeout)
}

/// [`virsh`] that must succeed.
pub fn virsh_ok(args: &[&str]) -> String {
    virsh(args).unwrap_or_else(|e| panic!("{e}"))
}

/// [`virsh`] for `Drop` and clean-up: failures are printed, not raised.
pub fn virsh_noisy(args: &[&str]) {
    if let Err(e) = virsh(args) {
        eprintln!("harness: clean-up: {e}");
    }
}

/// Polls `done` every 100 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    if !try_wait_until(timeout, &mut done) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// [`wait_until`] that reports the timeout as `false` instead of panicking.
pub fn try_wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `deploy/setup-host.sh` and then `deploy/setup-tests.sh` once per process:
/// installs and starts libvirt, QEMU and the guest's ingredients, then what only the
/// tests need (etcd, Prometheus, Ceph, the packaging tools, …). Panics with the
/// scripts' output if one fails: a host without libvirtd is a failed test, never a
/// skipped one.
///
/// `deploy/test.sh` runs both scripts once before the tests and sets
/// `VOLMIG_HOST_READY`, so that each test process (nextest runs one per test) does not
/// repeat them.
pub fn ensure_host() {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let result = SETUP.get_or_init(|| {
        if std::env::var_os("VOLMIG_HOST_READY").is_some() {
            return Ok(());
        }
        for script in ["deploy/setup-host.sh", "deploy/setup-tests.sh"] {
            let script = repo_root().join(script);
            let script = script.to_string_lossy();
            run_with_timeout("bash", &[&script], Duration::from_secs(1800))?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("host set-up failed: {e}");
    }
}

/// What every constructor calls first: host set-up, then the stale-object sweep (each
/// once per process).
pub fn prepare() {
    ensure_host();
    sweep_stale();
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn names_carry_the_pid() {
        let name = unique_name("Dir Pool/1");
        assert_eq!(name_pid(&name), Some(std::process::id()));
        assert!(name.ends_with("-dir-pool-1"), "{name}");
        assert_ne!(unique_name("x"), unique_name("x"));
        assert_eq!(name_pid("volmig-guest"), None);
        assert_eq!(name_pid("volmig-t-1-x"), None);
        assert_eq!(name_pid("volmig-t12x-1"), None);
        assert_eq!(name_pid("volmig-t12-ab1-x"), Some(12));
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }
}
