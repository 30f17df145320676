//! Removes what crashed or killed test processes left behind: every object named
//! `volmig-t<PID>-…` (see [`super::unique_name`]) whose PID is not a live process.
//! Objects of live processes, including parallel test binaries, are never touched.

use super::fs_pool::unmount_noisy;
use super::pools::{remove_pool, volume_names};
use super::{ensure_host, name_pid, pid_alive, run, virsh, WORK_BASE};
use std::path::Path;
use std::sync::OnceLock;

fn is_stale(name: &str) -> bool {
    name_pid(name).is_some_and(|pid| !pid_alive(pid))
}

/// Whether any component of `path` is a stale name (loop devices are found by the path
/// of their backing file, which lives in a test's temp dir).
fn path_is_stale(path: &str) -> bool {
    Path::new(path.trim_end_matches(" (deleted)"))
        .components()
        .any(|c| is_stale(&c.as_os_str().to_string_lossy()))
}

fn names(out: Result<String, String>) -> Vec<String> {
    match out {
        Ok(out) => out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        Err(e) => {
            eprintln!("harness: sweep: {e}");
            Vec::new()
        }
    }
}

/// Runs the sweep once per process (later calls return at once). Order matters: domains
/// hold volumes, pools hold mounts, mounts hold loop devices, loop devices hold files in
/// the temp dirs.
/// Failures are printed, not raised: another process may be sweeping the same objects.
pub fn sweep_stale() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        ensure_host();
        sweep_now();
    });
}

fn sweep_now() {
    // Simulated hosts first: their guests and daemons hold files in the temp dirs.
    super::hosts::sweep_stale_beds();

    for dom in names(virsh(&["list", "--all", "--name"]))
        .iter()
        .filter(|d| is_stale(d))
    {
        eprintln!("harness: sweep: removing stale domain {dom}");
        // Fails for a domain that is not running: fine.
        let _ = virsh(&["destroy", dom]);
        if let Err(e) = virsh(&["undefine", dom, "--checkpoints-metadata"]) {
            // A transient domain is gone after destroy.
            if !e.contains("not found") {
                eprintln!("harness: sweep: {e}");
            }
        }
    }

    for pool in names(virsh(&["pool-list", "--all", "--name"]))
        .iter()
        .filter(|p| is_stale(p))
    {
        eprintln!("harness: sweep: removing stale pool {pool}");
        let xml = virsh(&["pool-dumpxml", pool]).unwrap_or_default();
        if xml.contains("type='rbd'") {
            // Images outlive the libvirt pool; delete the stale ones while we can see them.
            for vol in volume_names(pool).unwrap_or_default() {
                if is_stale(&vol) {
                    eprintln!("harness: sweep: deleting stale rbd image {vol}");
                    let _ = virsh(&["vol-delete", "--pool", pool, &vol]);
                }
            }
        }
        remove_pool(pool, false);
    }

    // `secret-list` prints "UUID  ceph <usage name>" rows under a header.
    if let Ok(list) = virsh(&["secret-list"]) {
        for line in list.lines() {
            let mut words = line.split_whitespace();
            let (Some(uuid), Some(_usage_type), Some(usage)) =
                (words.next(), words.next(), words.next())
            else {
                continue;
            };
            if is_stale(usage) {
                eprintln!("harness: sweep: removing stale secret {usage} ({uuid})");
                if let Err(e) = virsh(&["secret-undefine", uuid]) {
                    eprintln!("harness: sweep: {e}");
                }
            }
        }
    }

    // Filesystem pools (`FsPool`) mount a loop device inside their temp dir: unmount it
    // before the loop device is detached and the dir removed (removing the dir first would
    // walk into the mounted filesystem).
    match std::fs::read_to_string("/proc/self/mounts") {
        Ok(mounts) => {
            for mount in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
                if mount.starts_with(WORK_BASE) && path_is_stale(mount) {
                    eprintln!("harness: sweep: unmounting stale {mount}");
                    unmount_noisy(mount);
                }
            }
        }
        Err(e) => eprintln!("harness: sweep: reading /proc/self/mounts: {e}"),
    }

    match run("losetup", &["-l", "-n", "-O", "NAME,BACK-FILE"]) {
        Ok(list) => {
            for line in list.lines() {
                let Some((dev, file)) = line.trim().split_once(char::is_whitespace) else {
                    continue;
                };
                if path_is_stale(file.trim()) {
                    eprintln!(
                        "harness: sweep: detaching stale loop device {dev} ({})",
                        file.trim()
                    );
                    if let Err(e) = run("losetup", &["-d", dev]) {
                        eprintln!("harness: sweep: {e}");
                    }
                }
            }
        }
        Err(e) => eprintln!("harness: sweep: {e}"),
    }

    match std::fs::read_dir(WORK_BASE) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_stale(&name) {
                    eprintln!("harness: sweep: removing stale {WORK_BASE}/{name}");
                    let path = entry.path();
                    let removed = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    if let Err(e) = removed {
                        eprintln!("harness: sweep: removing {}: {e}", path.display());
                    }
                }
            }
        }
        Err(e) => eprintln!("harness: sweep: reading {WORK_BASE}: {e}"),
    }
}
