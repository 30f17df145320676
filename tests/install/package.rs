//! The installed Debian package as an operator meets it: dpkg, the files and units it
//! ships, and what a purge leaves.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness;
use crate::harness::unit::{gid_of, one, unit_settings};
use volmig::config::{ControllerConfig, NodeConfig};

pub const NODE_UNIT: &str = "/usr/lib/systemd/system/volmig-node.service";
pub const CONTROLLER_UNIT: &str = "/usr/lib/systemd/system/volmig-controller.service";
/// Exposure scores (`systemd-analyze security`) the units must stay at or
/// below: what they measured when written (node 2.x: root, host network and
/// pools; controller 1.x), with a little room.
const NODE_MAX_EXPOSURE: f64 = 3.0;
const CONTROLLER_MAX_EXPOSURE: f64 = 1.5;

/// `dpkg ARGS`, waiting up to 5 minutes while another package manager holds
/// dpkg's lock (dpkg itself gives up at once).
pub fn dpkg(args: &[&str]) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match harness::run("dpkg", args) {
            Err(e) if e.contains("lock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_secs(2));
            }
            done => return done,
        }
    }
}

/// Appends `line` to a configuration file, as an operator editing it would.
pub fn append_line(path: &str, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    writeln!(file, "{line}").unwrap_or_else(|e| panic!("{path}: {e}"));
}

/// The package installed for the test; purged when dropped, whatever happened.
pub struct Installed {
    /// `/var/lib/volmig` did not exist before: the test removes what the node left there.
    remove_state: bool,
}

impl Installed {
    pub fn install(deb: &Path) -> Installed {
        // A run that crashed before its purge left the package behind.
        let _ = dpkg(&["--purge", "volmig"]);
        let remove_state = !Path::new("/var/lib/volmig").exists();
        let installed = Installed { remove_state };
        dpkg(&["-i", &deb.to_string_lossy()]).unwrap_or_else(|e| panic!("{e}"));
        installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Err(e) = dpkg(&["--purge", "volmig"]) {
            eprintln!("package test: purge failed: {e}");
        }
        let _ = std::fs::remove_dir_all("/run/volmig");
        let _ = std::fs::remove_dir_all("/run/volmig-controller");
        if self.remove_state {
            let _ = std::fs::remove_dir_all("/var/lib/volmig");
        }
    }
}

/// The overall exposure `systemd-analyze security --offline=true` gives a unit.
fn exposure(unit: &str) -> f64 {
    let out = harness::run_ok("systemd-analyze", &["security", "--offline=true", unit]);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    let score = line
        .rsplit(':')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    eprintln!("{line}");
    score
}

pub fn check_installed_files(deb: &Path) {
    let fields = harness::run_ok("dpkg-deb", &["-f", &deb.to_string_lossy(), "Depends"]);
    for dep in ["libvirt0", "qemu-utils", "adduser"] {
        assert!(fields.contains(dep), "Depends lacks {dep}: {fields}");
    }
    for path in [
        "/usr/bin/volmig",
        NODE_UNIT,
        CONTROLLER_UNIT,
        "/etc/volmig/node.toml",
        "/etc/volmig/controller.toml",
        "/usr/share/bash-completion/completions/volmig",
        "/usr/share/zsh/vendor-completions/_volmig",
        "/usr/share/fish/vendor_completions.d/volmig.fish",
        "/usr/share/man/man1/volmig.1.gz",
        "/usr/share/man/man1/volmig-node.1.gz",
        "/usr/share/man/man1/volmig-controller.1.gz",
    ] {
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(meta.len() > 0, "{path} is empty");
    }
    let man = harness::run_ok("zcat", &["/usr/share/man/man1/volmig-node.1.gz"]);
    assert!(
        man.contains(".TH") && man.contains("print\\-config"),
        "{man}"
    );
    let complete = harness::run_ok(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/volmig && complete -p volmig",
        ],
    );
    assert!(complete.contains("volmig"), "{complete}");

    let conffiles = harness::run_ok("dpkg-query", &["-W", "-f=${Conffiles}", "volmig"]);
    for f in ["/etc/volmig/node.toml", "/etc/volmig/controller.toml"] {
        assert!(conffiles.contains(f), "{f} is not a conffile: {conffiles}");
    }
    // The conffiles name every key and set none.
    let node = std::fs::read_to_string("/etc/volmig/node.toml").expect("node.toml");
    assert!(node.lines().all(|l| l.is_empty() || l.starts_with('#')));
    assert!(
        node.contains("# listen = \"unix:///run/volmig/node.sock\""),
        "{node}"
    );
    let parsed: NodeConfig = toml::from_str(&node).expect("node.toml parses");
    assert_eq!(parsed, NodeConfig::default());
    let controller = std::fs::read_to_string("/etc/volmig/controller.toml").expect("controller");
    let parsed: ControllerConfig = toml::from_str(&controller).expect("controller.toml parses");
    assert_eq!(parsed, ControllerConfig::default());

    let user = harness::run_ok("getent", &["passwd", "volmig"]);
    let fields: Vec<&str> = user.trim().split(':').collect();
    assert_eq!(
        fields.get(3).copied(),
        Some(gid_of("volmig").to_string().as_str())
    );
    assert_eq!(fields.get(6).copied(), Some("/usr/sbin/nologin"), "{user}");
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "a system user: {user}");
}

pub fn check_units() {
    for unit in [NODE_UNIT, CONTROLLER_UNIT] {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", unit])
            .output()
            .expect("systemd-analyze verify");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{unit}: {stderr}");
        assert!(
            !stderr.contains("volmig"),
            "systemd-analyze verify complains about {unit}: {stderr}"
        );
    }
    let node = exposure(NODE_UNIT);
    let controller = exposure(CONTROLLER_UNIT);
    assert!(node <= NODE_MAX_EXPOSURE, "node exposure {node}");
    assert!(
        controller <= CONTROLLER_MAX_EXPOSURE,
        "controller exposure {controller}"
    );
    let unit = unit_settings(CONTROLLER_UNIT);
    assert_eq!(one(&unit, "User"), "volmig");
    assert_eq!(one(&unit, "CapabilityBoundingSet"), "");
    let unit = unit_settings(NODE_UNIT);
    assert_eq!(
        one(&unit, "ExecStart"),
        "/usr/bin/volmig node --config /etc/volmig/node.toml"
    );
    assert!(one(&unit, "Requires").contains("libvirtd.service"));
    assert!(one(&unit, "After").contains("libvirtd.service"));
    assert_eq!(one(&unit, "Restart"), "on-failure");
}

/// Every file the package installed is gone, and so are the unit's enablement
/// links; the documented state (`/var/lib/volmig`), the user and the group stay.
pub fn check_purged(files: &[String]) {
    dpkg(&["--purge", "volmig"]).unwrap_or_else(|e| panic!("{e}"));
    let status = harness::run("dpkg-query", &["-W", "-f=${db:Status-Status}", "volmig"]);
    assert!(
        status
            .as_deref()
            .map_or(true, |s| s.trim() == "not-installed"),
        "{status:?}"
    );
    for f in files {
        let p = Path::new(f);
        if p.is_file() || (p.is_dir() && f.contains("volmig")) {
            panic!("{f} is still there after purge");
        }
    }
    assert!(!Path::new("/etc/volmig").exists());
    let leftovers = harness::run_ok(
        "find",
        &[
            "/etc/systemd",
            "/var/lib/systemd/deb-systemd-helper-enabled",
            "-name",
            "*volmig*",
        ],
    );
    assert!(leftovers.trim().is_empty(), "left after purge: {leftovers}");
    assert!(
        Path::new("/var/lib/volmig/node").is_dir(),
        "the journal stays"
    );
    harness::run_ok("getent", &["passwd", "volmig"]);
    harness::run_ok("getent", &["group", "volmig"]);
}
