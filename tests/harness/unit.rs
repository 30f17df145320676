//! Running a volmig service the way its installed systemd unit would run it,
//! on a machine whose PID 1 is not systemd: the unit's `ExecStart`, user,
//! group, umask, state and runtime directories, and those of its hardening
//! settings that can be reproduced without systemd (`ProtectSystem=strict`
//! as read-only mounts in a private mount namespace, the capability bounding
//! set and no-new-privileges through `setpriv`, the system-call filter
//! through libseccomp). The rest of a unit's settings need systemd itself.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `[Service]` (and other sections') settings of a unit file, by key, in order.
pub fn unit_settings(path: &str) -> HashMap<String, Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut settings: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            settings
                .entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    settings
}

/// The last value a unit gives `key` (a later line overrides an earlier one).
pub fn one<'a>(settings: &'a HashMap<String, Vec<String>>, key: &str) -> &'a str {
    settings
        .get(key)
        .and_then(|v| v.last())
        .map(String::as_str)
        .unwrap_or_else(|| panic!("the unit sets no {key}"))
}

/// The id of group `group`.
pub fn gid_of(group: &str) -> u32 {
    let line = super::run_ok("getent", &["group", group]);
    line.split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gid in {line:?}"))
}

/// The system calls a unit's `SystemCallFilter=` lines allow: the groups and
/// names of the allow lines, expanded by `systemd-analyze syscall-filter`,
/// less those of the `~` lines.
fn allowed_syscalls(filters: &[String]) -> Vec<String> {
    fn expand(item: &str, out: &mut std::collections::BTreeSet<String>) {
        if let Some(group) = item.strip_prefix('@') {
            let text = super::run_ok("systemd-analyze", &["syscall-filter", &format!("@{group}")]);
            for line in text.lines().skip(1).map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                expand(line, out);
            }
        } else {
            out.insert(item.to_string());
        }
    }
    let mut allow = std::collections::BTreeSet::new();
    let mut deny = std::collections::BTreeSet::new();
    for line in filters {
        match line.strip_prefix('~') {
            Some(denied) => denied.split_whitespace().for_each(|i| expand(i, &mut deny)),
            None => line.split_whitespace().for_each(|i| expand(i, &mut allow)),
        }
    }
    allow.difference(&deny).cloned().collect()
}

/// A `volmig` service started as its installed unit starts it; SIGTERM, then
/// SIGKILL, when dropped.
pub struct UnitService {
    child: Child,
    log: PathBuf,
}

impl UnitService {
    /// Prepares what systemd prepares (state and runtime directories, owner,
    /// mode) and runs the unit's ExecStart under its user, group, umask,
    /// capability bounding set, no-new-privileges, system-call filter and a
    /// read-only file system but for those directories; waits until `ready`
    /// holds for its log.
    pub fn start(unit_path: &str, log: PathBuf, ready: impl Fn(&str) -> bool) -> UnitService {
        let unit = unit_settings(unit_path);
        let exec = one(&unit, "ExecStart");
        let user = one(&unit, "User");
        let group = one(&unit, "Group");
        assert_eq!(one(&unit, "ProtectSystem"), "strict");
        assert_eq!(one(&unit, "NoNewPrivileges"), "yes");
        assert_eq!(one(&unit, "SystemCallErrorNumber"), "EPERM");
        let uid: u32 = super::run_ok("id", &["-u", user])
            .trim()
            .parse()
            .expect("uid");
        let gid = gid_of(group);
        let mut writable = Vec::new();
        for (dir_key, mode_key, base) in [
            ("StateDirectory", "StateDirectoryMode", "/var/lib"),
            ("RuntimeDirectory", "RuntimeDirectoryMode", "/run"),
        ] {
            let dir = Path::new(base).join(one(&unit, dir_key));
            let mode = u32::from_str_radix(one(&unit, mode_key), 8).expect("mode");
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
            writable.push(dir.to_string_lossy().into_owned());
        }
        let caps: Vec<String> = one(&unit, "CapabilityBoundingSet")
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let bounding = std::iter::once("-all".to_string())
            .chain(caps)
            .collect::<Vec<_>>()
            .join(",");
        let syscalls = allowed_syscalls(unit.get("SystemCallFilter").expect("a filter")).join(",");
        let seccomp = super::repo_root().join("tests/python/seccomp_exec.py");
        // ProtectSystem=strict (+ ProtectHome=read-only): every mount read-only
        // except the API file systems and the service's own directories. The
        // namespace is private, so the host's mounts are untouched. The filter
        // is loaded last, after setpriv's own privileged calls, as systemd does.
        let script = format!(
            r#"set -eu
umask {umask}
for d in {writable}; do mount --bind "$d" "$d"; done
awk '{{print $5}}' /proc/self/mountinfo | sort -u | while read -r m; do
    case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
    mount -o remount,bind,ro "$m"
done
for d in {writable}; do mount -o remount,bind,rw "$d"; done
exec setpriv --reuid={uid} --regid={gid} --init-groups --bounding-set={bounding} --inh-caps=-all --no-new-privs -- /usr/bin/python3 {seccomp} {syscalls} -- {exec}
"#,
            umask = one(&unit, "UMask"),
            writable = writable.join(" "),
            seccomp = seccomp.display(),
        );
        let log_file = std::fs::File::create(&log).expect("log");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {unit_path} as its unit would: {e}"));
        let mut service = UnitService { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(&service.log()) {
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!("{unit_path} exited with {status}:\n{}", service.log());
            }
            assert!(
                Instant::now() < deadline,
                "{unit_path} not ready within 30 s:\n{}",
                service.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        // SAFETY: kill(2) with a PID this process started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for UnitService {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- service log ---\n{}", super::tail(&self.log(), 40));
        }
        self.stop();
    }
}
