//! Power-cycling a simulated host (issue #21): [`power_off`] SIGKILLs every process in the
//! host's network namespace at once — libvirtd, virtlogd, every guest's QEMU, a `volmig
//! node` running there — as a power cut would, and [`power_on`] "boots" it: `/run/libvirt`
//! starts empty again (it is a tmpfs, like a real host's `/run`), then virtlogd and
//! libvirtd start as `deploy/hosts.sh up` starts them. What lives on disk (the host's
//! `/var/lib/libvirt`, `/etc/libvirt`, disk images, a node's state dir) stays as it was.
//!
//! The keeper process (`sleep infinity`, whose PID is [`SimHost::pid`]) is spared: it holds
//! the host's mount namespace, so the host keeps its namespaces, address and PID, and every
//! `SimHost` clone stays valid across the cycle. Nothing is restarted here but the two
//! daemons: the node is [`super::fleet::Fleet::restart_node`], guests are started by the
//! test (`virsh start`), pools come back if they are marked autostart.

use super::hosts::SimHost;
use super::{run_with_timeout, try_wait_until};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long killed processes may take to be gone, and libvirtd to answer after a boot.
pub const POWER_TIMEOUT: Duration = Duration::from_secs(120);

/// PIDs of every process in `host`'s network namespace except its keeper.
pub fn processes(host: &SimHost) -> Vec<u32> {
    let out = run_with_timeout(
        "ip",
        &["netns", "pids", host.name()],
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    out.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != host.pid())
        .collect()
}

/// The command line of `pid`, for messages.
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Cuts `host`'s power: SIGKILL to every process of the host (but its keeper) in one
/// `kill` call, repeated for any process that appeared meanwhile, until none is left.
/// Returns what was killed (`PID command line`), first round first.
pub fn power_off(host: &SimHost) -> Vec<String> {
    let mut killed = Vec::new();
    let gone = try_wait_until(POWER_TIMEOUT, || {
        let pids = processes(host);
        if pids.is_empty() {
            return true;
        }
        let fresh: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| {
                !killed
                    .iter()
                    .any(|k: &String| k.starts_with(&format!("{p} ")))
            })
            .collect();
        let names: Vec<String> = fresh
            .iter()
            .map(|&p| format!("{p} {}", cmdline(p)))
            .collect();
        let args: Vec<String> = pids.iter().map(u32::to_string).collect();
        // Processes that exit between the listing and the kill make `kill` fail: fine.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        killed.extend(names);
        false
    });
    assert!(
        gone,
        "{}: processes survive SIGKILL for {POWER_TIMEOUT:?}: {:?}",
        host.name(),
        processes(host)
            .into_iter()
            .map(|p| format!("{p} {}", cmdline(p)))
            .collect::<Vec<_>>()
    );
    killed
}

/// Boots `host` again after [`power_off`]: an empty `/run/libvirt`, then virtlogd and
/// libvirtd (daemons of the host's namespaces, their start-up output appended to `log`);
/// returns once libvirtd answers.
pub fn power_on(host: &SimHost, log: &Path) {
    let leftovers = processes(host);
    assert!(
        leftovers.is_empty(),
        "{} is not off: {leftovers:?}",
        host.name()
    );
    let status = host
        .command("sh")
        .args([
            "-c",
            r#"set -e
            exec >>"$1" 2>&1 </dev/null
            umount -l /run/libvirt
            mount -t tmpfs -o mode=0755 tmpfs /run/libvirt
            virtlogd -d -p /run/libvirt/virtlogd.pid
            libvirtd -d -p /run/libvirt/libvirtd.pid"#,
            "power-on",
            &log.to_string_lossy(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("nsenter: {e}"));
    let output = || std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        status.success(),
        "{}: power-on failed ({status}): {}",
        host.name(),
        output()
    );
    let answers = try_wait_until(POWER_TIMEOUT, || host.virsh(&["uri"]).is_ok());
    assert!(
        answers,
        "{}: libvirtd does not answer {POWER_TIMEOUT:?} after power-on: {}",
        host.name(),
        output()
    );
}
