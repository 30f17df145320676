//! Simulated KVM hosts on this machine (issue #21), for multi-host tests: a [`SimBed`] is
//! `deploy/hosts.sh up N --ctl` run with a prefix, interface names, a /24 and a directory
//! unique to this test process; each [`SimHost`] is a network namespace on the bed's bridge
//! plus a mount namespace with its own libvirtd, domains and pools. The script is the one
//! implementation; this module only chooses the names and calls it.
//!
//! Names: the prefix is a [`unique_name`] (`volmig-t<PID>-…-bed`), so [`sweep_stale_beds`]
//! (called by the harness sweep) removes beds of dead processes; the bed's settings are
//! written to `/var/tmp/<prefix>/bed.env` before anything is created, so a stale bed's
//! bridge and interfaces can be found again.

use super::{name_pid, pid_alive};
use super::{prepare, repo_root, run_with_timeout, unique_name, WORK_BASE};
use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SCRIPT: &str = "deploy/hosts.sh";
/// Subnets of test beds: 10.214.Y.0/24, Y chosen free per bed.
const TEST_NET: &str = "10.214";

/// A simulated host: its namespaces are those of its keeper process.
#[derive(Debug, Clone)]
pub struct SimHost {
    name: String,
    pid: u32,
    addr: String,
}

impl SimHost {
    /// The network namespace's name (also the host directory's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address on the bed's bridge.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The keeper's PID (the namespaces to enter).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `nsenter -t PID -m -n -u -- program`: a command that runs inside this host (its
    /// libvirtd is `qemu:///system` there, and the host name is the host's own).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-m", "-n", "-u", "--", program]);
        cmd
    }

    /// A libvirt URI reaching this host's libvirtd from the root namespaces: its socket
    /// seen through `/proc/PID/root` (the keeper's mount namespace).
    pub fn libvirt_uri(&self) -> String {
        format!(
            "qemu:///system?socket=/proc/{}/root/run/libvirt/libvirt-sock",
            self.pid
        )
    }

    /// `virsh ARGS` against this host's libvirtd.
    pub fn virsh(&self, args: &[&str]) -> Result<String, String> {
        let pid = self.pid.to_string();
        let mut full = vec![
            "-t",
            &pid,
            "-m",
            "-n",
            "--",
            "virsh",
            "-c",
            "qemu:///system",
        ];
        full.extend_from_slice(args);
        run_with_timeout("nsenter", &full, Duration::from_secs(120))
    }

    /// Domain names known to this host's libvirtd (running or not).
    pub fn domains(&self) -> Vec<String> {
        self.virsh(&["list", "--all", "--name"])
            .unwrap_or_else(|e| panic!("{e}"))
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Until the returned guard drops, the harness's `virsh` calls on this thread (and so
    /// `Guest`, `DirPool`, …) go to this host's libvirtd. Declare the guard before the
    /// pools and guests it is for, so that their `Drop` still runs under it.
    pub fn libvirt_scope(&self) -> LibvirtScope {
        let previous = URI_OVERRIDE.with(|u| u.replace(Some(self.libvirt_uri())));
        LibvirtScope { previous }
    }
}

thread_local! {
    static URI_OVERRIDE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The URI the harness's `virsh` uses on this thread, if a [`LibvirtScope`] is active.
pub fn libvirt_uri_override() -> Option<String> {
    URI_OVERRIDE.with(|u| u.borrow().clone())
}

/// See [`SimHost::libvirt_scope`].
pub struct LibvirtScope {
    previous: Option<String>,
}

impl Drop for LibvirtScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        URI_OVERRIDE.with(|u| *u.borrow_mut() = previous);
    }
}

/// Hosts `h1..hN` and a controller namespace on one bridge; `Drop` runs `hosts.sh down`.
pub struct SimBed {
    env: Vec<(String, String)>,
    base: PathBuf,
    hosts: Vec<SimHost>,
    ctl: String,
    ctl_addr: String,
}

fn script_env(prefix: &str, ifp: &str, subnet: &str, base: &Path) -> Vec<(String, String)> {
    vec![
        ("VOLMIG_HOSTS_PREFIX".into(), prefix.into()),
        ("VOLMIG_HOSTS_IF".into(), ifp.into()),
        ("VOLMIG_HOSTS_SUBNET".into(), subnet.into()),
        (
            "VOLMIG_HOSTS_BASE".into(),
            base.to_string_lossy().into_owned(),
        ),
    ]
}

fn hosts_sh(env: &[(String, String)], args: &[&str]) -> Result<String, String> {
    let script = repo_root().join(SCRIPT);
    let out = Command::new("timeout")
        .args(["--kill-after=10", "300", "bash"])
        .arg(&script)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .map_err(|e| format!("cannot run {SCRIPT}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{SCRIPT} {}` failed ({}): {}{stdout}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Third octets of 10.214.Y.0/24 already on some interface of the root namespace.
fn subnets_in_use() -> HashSet<u8> {
    let out =
        run_with_timeout("ip", &["-4", "-o", "addr"], Duration::from_secs(10)).unwrap_or_default();
    out.split_whitespace()
        .filter_map(|w| w.strip_prefix(&format!("{TEST_NET}.")))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect()
}

impl SimBed {
    /// `n` hosts and a controller namespace, each on a fresh bed of this process.
    pub fn up(n: usize) -> SimBed {
        SimBed::up_with(n, &["--ctl"])
    }

    /// `n` hosts and what `extra` asks `hosts.sh up` for (`--ctl`, `--ctls K`, `--etcd`).
    pub fn up_with(n: usize, extra: &[&str]) -> SimBed {
        prepare();
        let prefix = unique_name("bed");
        let base = Path::new(WORK_BASE).join(&prefix);
        // Interface names are at most 15 bytes: `v` + 7 hex digits of a per-bed hash.
        let hash = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write(prefix.as_bytes());
            h.finish()
        };
        let ifp = format!("v{:07x}", hash & 0xfff_ffff);
        let used = subnets_in_use();
        let start = (std::process::id() % 250) as u8;
        let third = (0..250u16)
            .map(|k| ((start as u16 + k) % 250) as u8 + 1)
            .find(|y| !used.contains(y))
            .expect("a free 10.214.Y.0/24");
        let subnet = format!("{TEST_NET}.{third}");
        std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
        let env = script_env(&prefix, &ifp, &subnet, &base);
        let env_file: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(base.join("bed.env"), env_file).expect("bed.env");
        let mut bed = SimBed {
            env,
            base,
            hosts: Vec::new(),
            ctl: format!("{prefix}-ctl"),
            ctl_addr: format!("{subnet}.2"),
        };
        let count = n.to_string();
        let mut args = vec!["up", &count];
        args.extend_from_slice(extra);
        hosts_sh(&bed.env, &args).unwrap_or_else(|e| panic!("{e}"));
        for i in 1..=n {
            let name = format!("{prefix}-h{i}");
            let pid = hosts_sh(&bed.env, &["pid", &name])
                .unwrap_or_else(|e| panic!("{e}"))
                .trim()
                .parse()
                .expect("keeper pid");
            bed.hosts.push(SimHost {
                name,
                pid,
                addr: format!("{subnet}.{}", 10 + i),
            });
        }
        bed
    }

    /// Host `i` (1-based).
    pub fn host(&self, i: usize) -> &SimHost {
        &self.hosts[i - 1]
    }

    /// The controller namespace's address.
    pub fn ctl_addr(&self) -> &str {
        &self.ctl_addr
    }

    /// `ip netns exec CTL program`: a command in the controller namespace (network only).
    pub fn ctl_command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ctl, program]);
        cmd
    }

    fn setting(&self, key: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{key} not set"))
    }

    /// The bed's name prefix: its namespaces are `<prefix>-h<i>`, `<prefix>-ctl`, ….
    pub fn prefix(&self) -> &str {
        self.setting("VOLMIG_HOSTS_PREFIX")
    }

    /// The first three octets of the bed's /24.
    pub fn subnet(&self) -> &str {
        self.setting("VOLMIG_HOSTS_SUBNET")
    }

    /// `ip netns exec <prefix>-<suffix> program`: a command in a network-only namespace
    /// of the bed (`ctl`, `ctl2`, `etcd`).
    pub fn netns_command(&self, suffix: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &format!("{}-{suffix}", self.prefix()),
            program,
        ]);
        cmd
    }

    /// The bridge-side end of host `i`'s veth pair, in the root namespace
    /// (`${VOLMIG_HOSTS_IF}-h<i>`, as `deploy/hosts.sh` names it).
    pub fn host_veth(&self, i: usize) -> String {
        format!("{}-h{i}", self.setting("VOLMIG_HOSTS_IF"))
    }

    /// Cuts (`up == false`) or restores host `i`'s link to the bridge: `ip link set
    /// <veth> down|up` on its bridge-side end. Nothing inside the host changes.
    pub fn set_host_link(&self, i: usize, up: bool) {
        self.set_link(&format!("h{i}"), up);
    }

    /// [`SimBed::set_host_link`] for the namespace `<prefix>-<suffix>` (`ctl2`, `etcd`, …).
    pub fn set_link(&self, suffix: &str, up: bool) {
        let veth = format!("{}-{suffix}", self.setting("VOLMIG_HOSTS_IF"));
        let state = if up { "up" } else { "down" };
        run_with_timeout(
            "ip",
            &["link", "set", &veth, state],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("ip link set {veth} {state}: {e}"));
    }

    /// The bed's own directory (`/var/tmp/<prefix>`), for scratch files of the test.
    pub fn dir(&self) -> &Path {
        &self.base
    }
}

impl Drop for SimBed {
    fn drop(&mut self) {
        if let Err(e) = hosts_sh(&self.env, &["down"]) {
            eprintln!("harness: clean-up: {e}");
        }
        super::remove_dir_noisy(&self.base);
    }
}

/// Removes beds of dead test processes: `/var/tmp/volmig-t<PID>-…-bed` directories (their
/// `bed.env` names the bridge and subnet) and named network namespaces with such names.
pub(crate) fn sweep_stale_beds() {
    let stale = |name: &str| name_pid(name).is_some_and(|pid| !pid_alive(pid));
    if let Ok(entries) = std::fs::read_dir(WORK_BASE) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let env_file = entry.path().join("bed.env");
            if !stale(&name) || !env_file.exists() {
                continue;
            }
            eprintln!("harness: sweep: removing stale host bed {name}");
            let env: Vec<(String, String)> = std::fs::read_to_string(&env_file)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if let Err(e) = hosts_sh(&env, &["down"]) {
                eprintln!("harness: sweep: {e}");
            }
        }
    }
    // Namespaces whose directory is gone (a crash between the two).
    let list =
        run_with_timeout("ip", &["netns", "list"], Duration::from_secs(10)).unwrap_or_default();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if !stale(ns) {
            continue;
        }
        // `<prefix>-h<i>`, `<prefix>-ctl[<k>]`, `<prefix>-etcd` (deploy/hosts.sh's names).
        let Some(prefix) = ns
            .strip_suffix("-etcd")
            .or_else(|| ns.rsplit_once("-ctl").map(|(p, _)| p))
            .or_else(|| ns.rsplit_once("-h").map(|(p, _)| p))
        else {
            continue;
        };
        eprintln!("harness: sweep: removing stale namespace {ns}");
        let base = Path::new(WORK_BASE).join(prefix);
        let env = script_env(prefix, "vstale", "10.214.0", &base);
        if let Err(e) = hosts_sh(&env, &["down"]) {
            eprintln!("harness: sweep: {e}");
        }
    }
}
