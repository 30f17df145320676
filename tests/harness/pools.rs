//! libvirt storage pools for tests: `dir` on a temp dir, `disk` on a loop device, `rbd` on
//! the shared single-node Ceph cluster. Each pool is created started and is destroyed,
//! undefined and wiped in `Drop`.

use super::xml::escape;
use super::{
    make_dir, name_pid, pid_alive, prepare, remove_dir_noisy, repo_root, run_ok, run_with_timeout,
    unique_name, virsh, virsh_noisy, virsh_ok, wait_until,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The storage backend of a pool, which decides how a guest's `<disk>` names a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// Volumes are files: `<disk type='file'>`.
    Dir,
    /// Volumes are partitions of a block device: `<disk type='block'>`.
    Disk,
    /// Volumes are RBD images: `<disk type='network'>` with protocol rbd.
    Rbd,
}

/// What the tests need from any pool.
pub trait Pool: Send + Sync {
    /// The libvirt pool name.
    fn name(&self) -> &str;

    /// Its backend.
    fn kind(&self) -> PoolKind;

    /// A volume name that is valid in this pool and used by no one else: dir and RBD
    /// volumes get a [`unique_name`] (RBD pools on one RADOS pool share images, and the
    /// sweep finds stale images by it); disk-pool volumes must be named after the next
    /// partition.
    fn new_volume_name(&self, purpose: &str) -> String;

    /// `virsh vol-create-as POOL NAME BYTES --format FORMAT`; returns the volume's path
    /// (a file, a device, or `radospool/image`).
    fn create_volume(&self, name: &str, bytes: u64, format: &str) -> String {
        let bytes = bytes.to_string();
        virsh_ok(&[
            "vol-create-as",
            self.name(),
            name,
            &bytes,
            "--format",
            format,
        ]);
        self.volume_path(name)
    }

    /// `virsh vol-path`.
    fn volume_path(&self, name: &str) -> String {
        virsh_ok(&["vol-path", "--pool", self.name(), name])
            .trim()
            .to_string()
    }

    /// The capacity libvirt reports for a volume (`vol-info --bytes`), in bytes.
    fn volume_capacity(&self, name: &str) -> u64 {
        let info = virsh_ok(&["vol-info", "--bytes", "--pool", self.name(), name]);
        info.lines()
            .find_map(|l| l.strip_prefix("Capacity:"))
            .and_then(|v| v.trim().trim_end_matches("bytes").trim().parse().ok())
            .unwrap_or_else(|| panic!("no capacity in vol-info of {name}: {info}"))
    }

    /// `virsh pool-refresh`, e.g. after creating a file in the pool behind libvirt's back.
    fn refresh(&self) {
        virsh_ok(&["pool-refresh", self.name()]);
    }

    /// The `type` attribute and `<source>` element of a guest `<disk>` on `volume`.
    fn disk_source_xml(&self, volume: &str) -> (&'static str, String);
}

/// Writes `xml` to a temp file and runs `virsh COMMAND FILE` (define-like commands).
pub(crate) fn virsh_with_xml_file(command: &str, xml: &str) -> Result<String, String> {
    let mut file = tempfile::Builder::new()
        .prefix("volmig-harness-")
        .suffix(".xml")
        .tempfile()
        .map_err(|e| format!("temp file: {e}"))?;
    file.write_all(xml.as_bytes())
        .map_err(|e| format!("writing temp file: {e}"))?;
    let path = file.path().to_string_lossy().into_owned();
    virsh(&[command, &path]).map_err(|e| format!("{e}\n--- {command} input ---\n{xml}"))
}

/// The volume names in a pool (`virsh vol-list` of libvirt 9.0 has no `--name`: the
/// first column of the table).
pub fn volume_names(pool: &str) -> Result<Vec<String>, String> {
    let table = virsh(&["vol-list", "--pool", pool])?;
    Ok(table
        .lines()
        .skip_while(|l| !l.starts_with("---"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// Destroys (if active) and undefines a pool, printing failures; for `Drop` and the sweep.
pub(crate) fn remove_pool(name: &str, delete: bool) {
    if let Err(e) = virsh(&["pool-destroy", name]) {
        // Destroying an inactive pool fails; that is the normal case after a crash.
        if !e.contains("is not active") {
            eprintln!("harness: clean-up: {e}");
        }
    }
    if delete {
        virsh_noisy(&["pool-delete", name]);
    }
    virsh_noisy(&["pool-undefine", name]);
}

// ---------------------------------------------------------------------------------------

/// A `dir` pool on its own temp dir (mode 0755, under [`super::WORK_BASE`]).
pub struct DirPool {
    name: String,
    dir: PathBuf,
}

impl DirPool {
    /// Creates the directory and a started libvirt `dir` pool on it.
    pub fn new(purpose: &str) -> DirPool {
        prepare();
        let name = unique_name(purpose);
        let dir = make_dir(&name);
        let pool = DirPool { name, dir };
        let target = pool.dir.to_string_lossy().into_owned();
        virsh_ok(&["pool-define-as", &pool.name, "dir", "--target", &target]);
        virsh_ok(&["pool-start", &pool.name]);
        pool
    }

    /// The pool's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Pool for DirPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> PoolKind {
        PoolKind::Dir
    }

    fn new_volume_name(&self, purpose: &str) -> String {
        unique_name(purpose)
    }

    fn disk_source_xml(&self, volume: &str) -> (&'static str, String) {
        let path = self.dir.join(volume);
        (
            "file",
            format!("<source file='{}'/>", escape(&path.to_string_lossy())),
        )
    }
}

impl Drop for DirPool {
    fn drop(&mut self) {
        remove_pool(&self.name, false);
        remove_dir_noisy(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------

/// A `disk` pool (GPT) on a loop device over a sparse file in its own temp dir. Volumes are
/// partitions `loopNp1`, `loopNp2`, …; with GPT a size that is a multiple of 1 MiB gives a
/// partition of exactly that size (an msdos label rounds it up).
pub struct DiskPool {
    name: String,
    dir: PathBuf,
    image: PathBuf,
    loop_dev: Option<String>,
    next_partition: AtomicU32,
}

impl DiskPool {
    /// Creates a sparse `size_bytes` image, attaches it with `losetup -f --show -P`, and
    /// defines, builds (`--overwrite`, i.e. a fresh GPT label) and starts a `disk` pool.
    pub fn new(purpose: &str, size_bytes: u64) -> DiskPool {
        DiskPool::with_label(purpose, size_bytes, "gpt")
    }

    /// [`DiskPool::new`] with another partition table: `dos` rounds partition sizes up
    /// (64 MiB becomes 64 MiB + 256 KiB), which is what a storage `<slice>` must hide.
    pub fn with_label(purpose: &str, size_bytes: u64, label: &str) -> DiskPool {
        prepare();
        let name = unique_name(purpose);
        let dir = make_dir(&name);
        let image = dir.join("disk.img");
        let mut pool = DiskPool {
            name,
            dir,
            image,
            loop_dev: None,
            next_partition: AtomicU32::new(1),
        };
        std::fs::File::create(&pool.image)
            .and_then(|f| f.set_len(size_bytes))
            .unwrap_or_else(|e| panic!("creating {}: {e}", pool.image.display()));
        let image = pool.image.to_string_lossy().into_owned();
        let dev = run_ok("losetup", &["-f", "--show", "-P", &image])
            .trim()
            .to_string();
        pool.loop_dev = Some(dev.clone());
        virsh_ok(&[
            "pool-define-as",
            &pool.name,
            "disk",
            "--source-dev",
            &dev,
            "--source-format",
            label,
            "--target",
            "/dev",
        ]);
        virsh_ok(&["pool-build", &pool.name, "--overwrite"]);
        virsh_ok(&["pool-start", &pool.name]);
        // Volume creation picks a free extent from the pool's last refresh: make sure the
        // new label has been read.
        wait_until(
            Duration::from_secs(10),
            "the disk pool to show its capacity",
            || {
                pool.refresh();
                let info = virsh_ok(&["pool-info", "--bytes", &pool.name]);
                info.lines()
                    .find_map(|l| l.strip_prefix("Capacity:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .is_some_and(|c| c > 0)
            },
        );
        pool
    }

    /// The loop device, e.g. `/dev/loop3`.
    pub fn loop_device(&self) -> &str {
        self.loop_dev.as_deref().unwrap_or("")
    }

    /// The sparse file behind the loop device.
    pub fn image(&self) -> &Path {
        &self.image
    }
}

impl Pool for DiskPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> PoolKind {
        PoolKind::Disk
    }

    /// libvirt insists that a disk-pool volume is named after the partition it will become
    /// ("invalid partition name 'foo', expected 'loop0p1'", and the partition is created
    /// anyway). Partitions are numbered in creation order; `vol-delete` does not work on
    /// loop devices here, so no number is ever freed. Not safe against two threads
    /// creating volumes in the same pool at once.
    fn new_volume_name(&self, _purpose: &str) -> String {
        let n = self.next_partition.fetch_add(1, Ordering::SeqCst);
        let base = self.loop_device().trim_start_matches("/dev/");
        format!("{base}p{n}")
    }

    /// Only `raw` exists on a partition (`--format` of a disk pool is the partition type).
    fn create_volume(&self, name: &str, bytes: u64, format: &str) -> String {
        assert_eq!(format, "raw", "a disk pool volume is a partition, i.e. raw");
        let bytes = bytes.to_string();
        virsh_ok(&["vol-create-as", &self.name, name, &bytes]);
        self.volume_path(name)
    }

    fn disk_source_xml(&self, volume: &str) -> (&'static str, String) {
        ("block", format!("<source dev='/dev/{}'/>", escape(volume)))
    }
}

impl Drop for DiskPool {
    fn drop(&mut self) {
        remove_pool(&self.name, false);
        if let Some(dev) = &self.loop_dev {
            if let Err(e) = run_with_timeout("losetup", &["-d", dev], Duration::from_secs(30)) {
                eprintln!("harness: clean-up: {e}");
            }
        }
        remove_dir_noisy(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------

/// The shared test cluster's directory: `deploy/ceph/ceph-up.sh` locks it, so all test
/// processes share one cluster. Stop it with [`ceph_down`] when the whole run is over.
pub const CEPH_DIR: &str = "/var/tmp/volmig-ceph";

/// `CEPH_DIR/env`, written by `ceph-up.sh`.
#[derive(Debug, Clone)]
pub struct CephEnv {
    pub conf: String,
    pub mon_host: String,
    pub mon_port: String,
    /// The RADOS pool all rbd test pools use.
    pub pool: String,
    /// The cephx user libvirt uses (without `client.`).
    pub client: String,
    pub client_keyring: String,
    pub admin_keyring: String,
}

impl CephEnv {
    /// Reads `CEPH_DIR/env` of a cluster that `ceph-up.sh` started.
    pub fn load() -> Result<CephEnv, String> {
        let env = std::fs::read_to_string(format!("{CEPH_DIR}/env"))
            .map_err(|e| format!("reading {CEPH_DIR}/env: {e}"))?;
        CephEnv::parse(&env)
    }

    fn parse(env: &str) -> Result<CephEnv, String> {
        let get = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| format!("no {key} in {CEPH_DIR}/env"))
        };
        Ok(CephEnv {
            conf: get("CEPH_CONF")?,
            mon_host: get("CEPH_MON_HOST")?,
            mon_port: get("CEPH_MON_PORT")?,
            pool: get("CEPH_POOL")?,
            client: get("CEPH_CLIENT")?,
            client_keyring: get("CEPH_CLIENT_KEYRING")?,
            admin_keyring: get("CEPH_ADMIN_KEYRING")?,
        })
    }

    /// The file holding the bare client key, for `virsh secret-set-value --file`.
    pub fn client_key_file(&self) -> String {
        format!("{CEPH_DIR}/client.{}.key", self.client)
    }

    /// A `qemu-img` filename for an image, read as the libvirt client (the user the guest
    /// uses, so a permission problem shows up here too).
    pub fn qemu_img_spec(&self, pool_and_image: &str) -> String {
        format!(
            "rbd:{pool_and_image}:id={}:keyring={}:conf={}",
            self.client, self.client_keyring, self.conf
        )
    }

    /// `rbd ARGS` as admin, bounded (a dead cluster otherwise hangs it).
    pub fn rbd(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec![
            "-c",
            &self.conf,
            "--client-mount-timeout",
            "15",
            "--rados-osd-op-timeout",
            "15",
            "--rados-mon-op-timeout",
            "15",
        ];
        full.extend_from_slice(args);
        run_with_timeout("rbd", &full, Duration::from_secs(30))
    }
}

/// Starts the shared cluster if it is not up (idempotent, ~0.2 s when it is) and returns
/// its environment. Panics with the script's output on failure.
pub fn ceph_up() -> CephEnv {
    let script = repo_root().join("deploy/ceph/ceph-up.sh");
    run_with_timeout(
        "bash",
        &[&script.to_string_lossy(), CEPH_DIR],
        Duration::from_secs(1200),
    )
    .unwrap_or_else(|e| panic!("starting the test Ceph cluster failed: {e}"));
    CephEnv::load().unwrap_or_else(|e| panic!("{e}"))
}

/// Stops the shared cluster and removes [`CEPH_DIR`]: for the end of a CI run, after every
/// test process has finished (a guest with an open RBD disk makes `virsh destroy` hang
/// ~12 s once the cluster is gone).
pub fn ceph_down() -> Result<(), String> {
    let script = repo_root().join("deploy/ceph/ceph-down.sh");
    run_with_timeout(
        "bash",
        &[&script.to_string_lossy(), CEPH_DIR],
        Duration::from_secs(120),
    )
    .map(|_| ())
}

/// An `rbd` pool over the shared RADOS pool, with its own libvirt ceph secret.
pub struct RbdPool {
    name: String,
    secret_uuid: Option<String>,
    env: CephEnv,
    /// Every volume name handed out by [`Pool::new_volume_name`]: deleted in `Drop` if it
    /// exists, since images outlive the libvirt pool.
    volumes: Mutex<Vec<String>>,
}

impl RbdPool {
    /// Brings the shared cluster up if needed, defines a ceph secret holding the client key
    /// and a started rbd pool using it, and deletes images left by dead test processes.
    pub fn new(purpose: &str) -> RbdPool {
        prepare();
        let env = ceph_up();
        let name = unique_name(purpose);
        let mut pool = RbdPool {
            name,
            secret_uuid: None,
            env,
            volumes: Mutex::new(Vec::new()),
        };

        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .unwrap_or_else(|e| panic!("reading a random uuid: {e}"))
            .trim()
            .to_string();
        let secret = format!(
            "<secret ephemeral='no' private='yes'><uuid>{uuid}</uuid>\
             <usage type='ceph'><name>{}</name></usage></secret>",
            escape(&pool.name)
        );
        virsh_with_xml_file("secret-define", &secret).unwrap_or_else(|e| panic!("{e}"));
        pool.secret_uuid = Some(uuid.clone());
        virsh_ok(&[
            "secret-set-value",
            &uuid,
            "--file",
            &pool.env.client_key_file(),
        ]);

        let xml = format!(
            "<pool type='rbd'><name>{name}</name><source><name>{rados}</name>\
             <host name='{host}' port='{port}'/>\
             <auth type='ceph' username='{user}'><secret uuid='{uuid}'/></auth>\
             </source></pool>",
            name = escape(&pool.name),
            rados = escape(&pool.env.pool),
            host = escape(&pool.env.mon_host),
            port = escape(&pool.env.mon_port),
            user = escape(&pool.env.client),
        );
        virsh_with_xml_file("pool-define", &xml).unwrap_or_else(|e| panic!("{e}"));
        virsh_ok(&["pool-start", &pool.name]);
        pool.delete_stale_images();
        pool
    }

    /// Images of dead test processes (they are not tied to any libvirt pool, so the
    /// host-wide sweep cannot see them without a pool on the cluster).
    fn delete_stale_images(&self) {
        let list = volume_names(&self.name).unwrap_or_else(|e| panic!("{e}"));
        for vol in &list {
            if name_pid(vol).is_some_and(|pid| !pid_alive(pid)) {
                eprintln!("harness: sweep: deleting stale rbd image {vol}");
                virsh_noisy(&["vol-delete", "--pool", &self.name, vol]);
            }
        }
    }

    /// The cluster's environment (conf, keyrings, RADOS pool).
    pub fn env(&self) -> &CephEnv {
        &self.env
    }

    /// The libvirt secret holding the client key.
    pub fn secret_uuid(&self) -> &str {
        self.secret_uuid.as_deref().unwrap_or("")
    }

    /// The RADOS pool (shared by all rbd test pools).
    pub fn rados_pool(&self) -> &str {
        &self.env.pool
    }
}

impl Pool for RbdPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> PoolKind {
        PoolKind::Rbd
    }

    fn new_volume_name(&self, purpose: &str) -> String {
        let name = unique_name(purpose);
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        name
    }

    /// RBD images are always raw.
    fn create_volume(&self, name: &str, bytes: u64, format: &str) -> String {
        assert_eq!(format, "raw", "an RBD volume is raw");
        {
            // Also remember names the caller made up, so Drop deletes them too.
            let mut vols = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
            if !vols.iter().any(|v| v == name) {
                vols.push(name.to_string());
            }
        }
        let bytes = bytes.to_string();
        virsh_ok(&["vol-create-as", &self.name, name, &bytes]);
        self.volume_path(name)
    }

    fn disk_source_xml(&self, volume: &str) -> (&'static str, String) {
        (
            "network",
            format!(
                "<source protocol='rbd' name='{}/{}'><host name='{}' port='{}'/>\
                 <auth username='{}'><secret type='ceph' uuid='{}'/></auth></source>",
                escape(&self.env.pool),
                escape(volume),
                escape(&self.env.mon_host),
                escape(&self.env.mon_port),
                escape(&self.env.client),
                escape(self.secret_uuid()),
            ),
        )
    }
}

impl Drop for RbdPool {
    fn drop(&mut self) {
        let vols = std::mem::take(&mut *self.volumes.lock().unwrap_or_else(|e| e.into_inner()));
        if !vols.is_empty() {
            if let Err(e) = virsh(&["pool-refresh", &self.name]) {
                eprintln!("harness: clean-up: {e}");
            }
            let existing = volume_names(&self.name).unwrap_or_else(|e| {
                eprintln!("harness: clean-up: {e}");
                Vec::new()
            });
            for vol in vols.iter().filter(|v| existing.contains(v)) {
                virsh_noisy(&["vol-delete", "--pool", &self.name, vol]);
            }
        }
        remove_pool(&self.name, false);
        if let Some(uuid) = &self.secret_uuid {
            virsh_noisy(&["secret-undefine", uuid]);
        }
    }
}
