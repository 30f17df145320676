//! A real guest (`tests/guest/`) that keeps appending numbered records to its disk `vda`
//! and acknowledges each on its serial console once durable. Records and acks together
//! tell whether a migration lost anything: see `tests/guest/README.md` and `records.rs`.
//!
//! The domain is persistent (volmig's subject), `<domain type='qemu'>` (TCG: QEMU runs as
//! libvirt-qemu, which cannot open /dev/kvm here), boots the test kernel directly and logs
//! its console to a file with `append='on'`, so acks of earlier boots survive a restart.

use super::pattern::{self, Region};
use super::pools::{CephEnv, Pool, PoolKind};
use super::records::{self, RecordReport};
use super::xml::{self, escape, Element};
use super::{
    make_dir, prepare, remove_dir_noisy, repo_root, run_with_timeout, tail, try_wait_until,
    unique_name, virsh, virsh_ok,
};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Shared cache of the guest kernel and initrd; `build-guest.sh` locks it and rebuilds only
/// when its inputs change, so parallel test processes share one build.
pub const GUEST_CACHE: &str = "/var/tmp/volmig-guest";

/// Lines of console shown when something fails.
const CONSOLE_TAIL: usize = 40;

/// Builds (or finds up to date) the guest kernel + initrd, once per process.
fn guest_images() -> (PathBuf, PathBuf) {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script = repo_root().join("tests/guest/build-guest.sh");
        run_with_timeout(
            "bash",
            &[&script.to_string_lossy(), GUEST_CACHE],
            Duration::from_secs(300),
        )
        .map(|_| ())
    });
    if let Err(e) = built {
        panic!("building the test guest failed: {e}");
    }
    let cache = Path::new(GUEST_CACHE);
    (cache.join("vmlinuz"), cache.join("initrd.img"))
}

/// A disk as a domain XML describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskSource {
    /// `<disk type=…>`: `file`, `block` or `network`.
    pub disk_type: String,
    /// `<disk device=…>`: `disk`, `cdrom`, …
    pub device: String,
    /// The file, the device, or for network disks the `name` (`radospool/image` for rbd).
    pub path: String,
    /// For network disks: `rbd`, …
    pub protocol: Option<String>,
    /// `<driver type=…>`: `raw`, `qcow2`.
    pub format: Option<String>,
    /// `<slices><slice type='storage' size=…>` if the source presents only a prefix.
    pub slice_size: Option<u64>,
    /// The backing chain libvirt shows (nearest first): usually only in the live XML.
    pub backing: Vec<String>,
    /// `<readonly/>`.
    pub readonly: bool,
    /// Whether the live XML shows a `<mirror>` (a block copy in progress).
    pub mirror: bool,
    /// Whether that mirror has caught up with its source (`<mirror ready=…>`,
    /// set once QEMU reports the copy ready and kept through pivot or abort).
    pub mirror_ready: bool,
}

fn source_path(source: &Element) -> String {
    ["file", "dev", "name", "volume"]
        .iter()
        .find_map(|a| source.attr(a))
        .unwrap_or_default()
        .to_string()
}

impl DiskSource {
    fn from_disk(disk: &Element) -> DiskSource {
        let source = disk.child("source");
        let mut backing = Vec::new();
        let mut node = disk.child("backingStore");
        while let Some(bs) = node {
            match bs.child("source") {
                Some(src) => backing.push(source_path(src)),
                None => break,
            }
            node = bs.child("backingStore");
        }
        DiskSource {
            disk_type: disk.attr("type").unwrap_or_default().to_string(),
            device: disk.attr("device").unwrap_or("disk").to_string(),
            path: source.map(source_path).unwrap_or_default(),
            protocol: source.and_then(|s| s.attr("protocol")).map(String::from),
            format: disk
                .child("driver")
                .and_then(|d| d.attr("type"))
                .map(String::from),
            slice_size: source
                .and_then(|s| s.find(&["slices", "slice"]))
                .and_then(|s| s.attr("size"))
                .and_then(|s| s.parse().ok()),
            backing,
            readonly: disk.child("readonly").is_some(),
            mirror: disk.child("mirror").is_some(),
            mirror_ready: disk
                .child("mirror")
                .is_some_and(|m| m.attr("ready").is_some()),
        }
    }
}

/// The disk with target `target` in a domain XML document.
pub fn disk_in_domain_xml(domain_xml: &str, target: &str) -> Result<DiskSource, String> {
    let root = xml::parse(domain_xml)?;
    let devices = root.child("devices").ok_or("no <devices>")?;
    let disk = devices
        .children_named("disk")
        .find(|d| d.child("target").and_then(|t| t.attr("dev")) == Some(target))
        .map(DiskSource::from_disk);
    disk.ok_or_else(|| format!("no disk with target {target}"))
}

/// Options for [`Guest`]; start with [`Guest::builder`].
pub struct GuestBuilder<'a> {
    purpose: String,
    pool: &'a dyn Pool,
    format: String,
    disk_bytes: u64,
    backing_prefill: Option<u64>,
    deltas: usize,
    shared_template: Option<(String, u64)>,
    cdrom: bool,
    readonly_disk: bool,
    data_disk: Option<(u64, String)>,
    data_disk_prewritten: bool,
    ide_disk: Option<(u64, String)>,
    empty_cdrom: bool,
    prewritten: Option<u64>,
    pause_ms: Option<u32>,
    flood_mib: Option<u32>,
    error_policy: Option<String>,
    qcow2_v3: bool,
}

/// Space below a pre-written region that the guest's records may use: at ~100 records
/// of 512 bytes a second (unthrottled), 32 MiB last more than ten minutes.
pub const RECORD_SPACE_MIN: u64 = 32 << 20;

impl<'a> GuestBuilder<'a> {
    /// With [`GuestBuilder::backing_file`] or [`GuestBuilder::shared_template`]:
    /// `n` qcow2 layers between the template and vda (template ← d1 ← … ← dn ← vda),
    /// each holding its own pre-written pattern region (checked by
    /// [`Guest::verify_data`]), so every layer has distinct data.
    pub fn deltas(mut self, n: usize) -> Self {
        self.deltas = n;
        self
    }

    /// vda over the existing qcow2 template `volume` of the pool (another guest's),
    /// which holds `prefilled` records. Implies format qcow2.
    pub fn shared_template(mut self, volume: &str, prefilled: u64) -> Self {
        self.shared_template = Some((volume.to_string(), prefilled));
        self.format = "qcow2".to_string();
        self
    }

    /// `raw` (default) or `qcow2`; must be `raw` on disk and rbd pools.
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.to_string();
        self
    }

    /// Virtual size of vda (default 64 MiB: ~20 minutes of unthrottled writing).
    pub fn disk_bytes(mut self, bytes: u64) -> Self {
        self.disk_bytes = bytes;
        self
    }

    /// Makes vda a qcow2 overlay (`qemu-img create -b TEMPLATE -F qcow2`) on a qcow2
    /// template volume in the same (dir) pool; records 1..=`prefill` are written into the
    /// template first, so the guest resumes at `prefill + 1` and the data that only the
    /// backing file holds is checked too. Implies format qcow2.
    pub fn backing_file(mut self, prefill: u64) -> Self {
        self.backing_prefill = Some(prefill);
        self.format = "qcow2".to_string();
        self
    }

    /// Adds an IDE cdrom `hdc` (1 MiB raw volume in the pool, read-only).
    pub fn cdrom(mut self) -> Self {
        self.cdrom = true;
        self
    }

    /// Adds a read-only virtio disk `vdc` (1 MiB raw volume in the pool).
    pub fn readonly_disk(mut self) -> Self {
        self.readonly_disk = true;
        self
    }

    /// Adds a second, writable data disk `vdb` that the guest does not touch.
    pub fn data_disk(mut self, bytes: u64, format: &str) -> Self {
        self.data_disk = Some((bytes, format.to_string()));
        self
    }

    /// [`GuestBuilder::data_disk`] filled completely with its own pattern (see
    /// [`super::pattern`]) before the first boot; check it with [`Guest::verify_prewritten`].
    pub fn data_disk_prewritten(mut self, bytes: u64, format: &str) -> Self {
        self.data_disk = Some((bytes, format.to_string()));
        self.data_disk_prewritten = true;
        self
    }

    /// Adds an IDE disk `hda` filled completely with its own pattern before the first
    /// boot (the guest does not touch it); check it with [`Guest::verify_prewritten`].
    pub fn ide_disk_prewritten(mut self, bytes: u64, format: &str) -> Self {
        self.ide_disk = Some((bytes, format.to_string()));
        self
    }

    /// Adds an empty IDE cdrom drive `hdc` (no medium, no source).
    pub fn empty_cdrom(mut self) -> Self {
        self.empty_cdrom = true;
        self
    }

    /// Writes `bytes` of vda's own pattern (see [`super::pattern`]) into the top of vda,
    /// `[disk_bytes - bytes, disk_bytes)`, before the first boot, so a migration of vda
    /// has real data to copy (a bandwidth limit then makes it last) and the test can prove
    /// the data arrived with [`Guest::verify_prewritten`]. The records grow from sector 1
    /// and must not reach it: at least [`RECORD_SPACE_MIN`] stays below it.
    pub fn prewritten(mut self, bytes: u64) -> Self {
        self.prewritten = Some(bytes);
        self
    }

    /// Kernel parameter `volmig.pause_ms=N`: sleep N ms after each ack (unthrottled, a
    /// guest keeps one host core busy under TCG; 50 gives ~16 acks/s).
    pub fn pause_ms(mut self, ms: u32) -> Self {
        self.pause_ms = Some(ms);
        self
    }

    /// Kernel parameter `volmig.flood_mib=N`: the guest also rewrites the `mib` MiB that
    /// start at the middle of vda over and over, as fast as it can (see
    /// `tests/guest/README.md`), so a copy under a low bandwidth limit cannot converge.
    /// The records stay checkable; the flood must fit between them and any pre-written
    /// region at the top.
    pub fn flood_mib(mut self, mib: u32) -> Self {
        self.flood_mib = Some(mib);
        self
    }

    /// Makes vda a qcow2 version 3 image (`compat=1.1`): libvirt's `vol-create-as`
    /// makes version 2, which cannot store persistent dirty bitmaps (checkpoints).
    pub fn qcow2_v3(mut self) -> Self {
        self.qcow2_v3 = true;
        self
    }

    /// `<driver error_policy=…>` of vda, e.g. `report` so ENOSPC reaches the guest instead
    /// of pausing it.
    pub fn error_policy(mut self, policy: &str) -> Self {
        self.error_policy = Some(policy.to_string());
        self
    }

    /// Creates the volumes, defines the persistent domain and starts it.
    pub fn start(self) -> Guest {
        prepare();
        let (kernel, initrd) = guest_images();
        let name = unique_name(&self.purpose);
        let dir = make_dir(&name);
        let pool = self.pool;
        let mut guest = Guest {
            console: dir.join("console.log"),
            dir,
            name,
            pool_name: pool.name().to_string(),
            disk_volume: String::new(),
            template_volume: None,
            delta_volumes: Vec::new(),
            data_volume: None,
            prefilled: 0,
            prewritten: Vec::new(),
            boots_before_start: AtomicUsize::new(0),
            started_at: Mutex::new(Instant::now()),
            last_verified: AtomicU64::new(0),
        };

        let mut disks = String::new();
        let vda = pool.new_volume_name(&format!("{}-vda", self.purpose));
        if self.backing_prefill.is_some() || self.shared_template.is_some() {
            assert_eq!(
                pool.kind(),
                PoolKind::Dir,
                "backing files are only supported in dir pools"
            );
            let (template, template_path) = match &self.shared_template {
                Some((template, prefilled)) => {
                    guest.prefilled = *prefilled;
                    (template.clone(), pool.volume_path(template))
                }
                None => {
                    let template = pool.new_volume_name(&format!("{}-tmpl", self.purpose));
                    let template_path = pool.create_volume(&template, self.disk_bytes, "qcow2");
                    let prefill = self.backing_prefill.unwrap_or(0);
                    if prefill > 0 {
                        guest.prefill_template(&template_path, self.disk_bytes, prefill);
                        guest.prefilled = prefill;
                    }
                    (template, template_path)
                }
            };
            guest.template_volume = Some(template);
            let dir = Path::new(&template_path)
                .parent()
                .unwrap_or_else(|| panic!("{template_path} has no directory"))
                .to_path_buf();
            let mut lower = template_path.clone();
            for i in 1..=self.deltas {
                let delta = pool.new_volume_name(&format!("{}-d{i}", self.purpose));
                let path = dir.join(&delta).to_string_lossy().into_owned();
                overlay(&lower, &path);
                // Distinct data per layer, above the records and below each other.
                let len = DELTA_REGION;
                let offset = self.disk_bytes - (i as u64) * 2 * len;
                guest.prewrite_path(&path, "qcow2", &format!("vda-d{i}"), "vda", offset, len);
                guest.delta_volumes.push(delta);
                lower = path;
            }
            overlay(&lower, &dir.join(&vda).to_string_lossy());
            pool.refresh();
        } else {
            let path = pool.create_volume(&vda, self.disk_bytes, &self.format);
            if self.qcow2_v3 {
                assert_eq!(self.format, "qcow2", "qcow2_v3 needs format qcow2");
                run_with_timeout(
                    "qemu-img",
                    &["amend", "-q", "-f", "qcow2", "-o", "compat=1.1", &path],
                    Duration::from_secs(60),
                )
                .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        guest.disk_volume = vda.clone();
        if let Some(bytes) = self.prewritten {
            assert!(
                bytes > 0 && bytes + RECORD_SPACE_MIN <= self.disk_bytes,
                "prewritten({bytes}) must leave {RECORD_SPACE_MIN} bytes of vda's {} for records",
                self.disk_bytes
            );
            guest.prewrite(
                pool,
                &vda,
                &self.format,
                "vda",
                self.disk_bytes - bytes,
                bytes,
            );
        }
        disks.push_str(&disk_xml(
            pool,
            &vda,
            &self.format,
            "vda",
            "virtio",
            "disk",
            false,
            self.error_policy.as_deref(),
        ));
        if let Some((bytes, format)) = &self.data_disk {
            let vol = pool.new_volume_name(&format!("{}-vdb", self.purpose));
            pool.create_volume(&vol, *bytes, format);
            if self.data_disk_prewritten {
                guest.prewrite(pool, &vol, format, "vdb", 0, *bytes);
            }
            disks.push_str(&disk_xml(
                pool, &vol, format, "vdb", "virtio", "disk", false, None,
            ));
            guest.data_volume = Some(vol);
        }
        if let Some((bytes, format)) = &self.ide_disk {
            let vol = pool.new_volume_name(&format!("{}-hda", self.purpose));
            pool.create_volume(&vol, *bytes, format);
            guest.prewrite(pool, &vol, format, "hda", 0, *bytes);
            disks.push_str(&disk_xml(
                pool, &vol, format, "hda", "ide", "disk", false, None,
            ));
        }
        if self.empty_cdrom {
            disks.push_str(
                "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>\
                 <target dev='hdc' bus='ide'/><readonly/></disk>",
            );
        }
        if self.readonly_disk {
            let vol = pool.new_volume_name(&format!("{}-vdc", self.purpose));
            pool.create_volume(&vol, 1 << 20, "raw");
            disks.push_str(&disk_xml(
                pool, &vol, "raw", "vdc", "virtio", "disk", true, None,
            ));
        }
        if self.cdrom {
            let vol = pool.new_volume_name(&format!("{}-cd", self.purpose));
            pool.create_volume(&vol, 1 << 20, "raw");
            disks.push_str(&disk_xml(
                pool, &vol, "raw", "hdc", "ide", "cdrom", true, None,
            ));
        }

        let mut cmdline = "console=ttyS0 panic=-1 loglevel=4".to_string();
        if let Some(ms) = self.pause_ms {
            cmdline.push_str(&format!(" volmig.pause_ms={ms}"));
        }
        if let Some(mib) = self.flood_mib {
            let (start, end) = (
                self.disk_bytes / 2,
                self.disk_bytes / 2 + (u64::from(mib) << 20),
            );
            let top = self.disk_bytes - self.prewritten.unwrap_or(0);
            assert!(
                mib > 0 && start >= RECORD_SPACE_MIN && end <= top,
                "flood_mib({mib}) must fit in [{start}, {top}) of vda and leave {RECORD_SPACE_MIN} bytes for records"
            );
            cmdline.push_str(&format!(" volmig.flood_mib={mib}"));
        }
        // on_reboot=destroy: the guest never reboots on purpose, so a kernel panic
        // (panic=-1 reboots) shows up as a stopped domain instead of a silent restart.
        let domain = format!(
            "<domain type='qemu'>\
             <name>{name}</name>\
             <memory unit='MiB'>256</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>\
             <cmdline>{cmdline}</cmdline></os>\
             <features><acpi/><apic/></features>\
             <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
             <devices>{disks}\
             <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>\
             <memballoon model='none'/>\
             </devices></domain>",
            name = escape(&guest.name),
            kernel = escape(&kernel.to_string_lossy()),
            initrd = escape(&initrd.to_string_lossy()),
            cmdline = escape(&cmdline),
            console = escape(&guest.console.to_string_lossy()),
        );
        std::fs::write(guest.dir.join("domain.xml"), &domain)
            .unwrap_or_else(|e| panic!("writing domain.xml: {e}"));
        virsh_ok(&["define", &guest.dir.join("domain.xml").to_string_lossy()]);
        guest.boot();
        guest
    }
}

/// One `<disk>` element.
#[allow(clippy::too_many_arguments)]
fn disk_xml(
    pool: &dyn Pool,
    volume: &str,
    format: &str,
    target: &str,
    bus: &str,
    device: &str,
    readonly: bool,
    error_policy: Option<&str>,
) -> String {
    let (disk_type, source) = pool.disk_source_xml(volume);
    let policy = error_policy
        .map(|p| format!(" error_policy='{}'", escape(p)))
        .unwrap_or_default();
    format!(
        "<disk type='{disk_type}' device='{device}'>\
         <driver name='qemu' type='{format}'{policy}/>{source}\
         <target dev='{target}' bus='{bus}'/>{ro}</disk>",
        format = escape(format),
        ro = if readonly { "<readonly/>" } else { "" },
    )
}

/// Bytes of pattern each layer of [`GuestBuilder::deltas`] holds.
const DELTA_REGION: u64 = 2 << 20;

/// `qemu-img create` of a qcow2 overlay `path` over the qcow2 image `backing`.
fn overlay(backing: &str, path: &str) {
    run_with_timeout(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", path,
        ],
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// A persistent test domain. Dropping it destroys and undefines the domain (its volumes
/// belong to the pool and go with it); if the thread is panicking, the console tail is
/// printed and the guest's temp dir kept.
pub struct Guest {
    name: String,
    dir: PathBuf,
    console: PathBuf,
    pool_name: String,
    disk_volume: String,
    template_volume: Option<String>,
    delta_volumes: Vec<String>,
    data_volume: Option<String>,
    prefilled: u64,
    /// Pattern regions written before the first boot, by disk target.
    prewritten: Vec<(String, Region)>,
    /// Number of `VOLMIG-START`s in the console before the current boot.
    boots_before_start: AtomicUsize,
    started_at: Mutex<Instant>,
    last_verified: AtomicU64,
}

impl Guest {
    /// A guest on a fresh `disk_format` volume of `disk_bytes` in `pool`, started.
    pub fn start(purpose: &str, pool: &dyn Pool, disk_format: &str, disk_bytes: u64) -> Guest {
        Guest::builder(purpose, pool)
            .format(disk_format)
            .disk_bytes(disk_bytes)
            .start()
    }

    /// Options beyond [`Guest::start`]: backing chain, extra disks, throttle.
    pub fn builder<'a>(purpose: &str, pool: &'a dyn Pool) -> GuestBuilder<'a> {
        GuestBuilder {
            purpose: purpose.to_string(),
            pool,
            format: "raw".to_string(),
            disk_bytes: 64 << 20,
            backing_prefill: None,
            deltas: 0,
            shared_template: None,
            cdrom: false,
            readonly_disk: false,
            data_disk: None,
            data_disk_prewritten: false,
            ide_disk: None,
            empty_cdrom: false,
            prewritten: None,
            pause_ms: None,
            flood_mib: None,
            error_policy: None,
            qcow2_v3: false,
        }
    }

    /// Writes the pattern of `target` into `[offset, offset + len)` of a new volume (the
    /// guest is not running yet), through qemu-io so that qcow2 and rbd work too.
    fn prewrite(
        &mut self,
        pool: &dyn Pool,
        volume: &str,
        format: &str,
        target: &str,
        offset: u64,
        len: u64,
    ) {
        let path = pool.volume_path(volume);
        let filename = match pool.kind() {
            PoolKind::Rbd => CephEnv::load()
                .unwrap_or_else(|e| panic!("{e}"))
                .qemu_img_spec(&path),
            PoolKind::Dir | PoolKind::Disk => path,
        };
        self.prewrite_path(&filename, format, target, target, offset, len);
    }

    /// Writes a pattern (seeded by `label`) into `[offset, offset + len)` of the image
    /// file `path`, checked later as part of disk `target`.
    fn prewrite_path(
        &mut self,
        path: &str,
        format: &str,
        label: &str,
        target: &str,
        offset: u64,
        len: u64,
    ) {
        let region = Region {
            seed: pattern::seed_of(&format!("{}/{label}", self.name)),
            offset,
            len,
        };
        let file = self.dir.join(format!("prewrite-{label}.bin"));
        std::fs::write(&file, region.bytes())
            .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        run_with_timeout(
            "qemu-io",
            &[
                "-f",
                format,
                "-c",
                &format!("write -q -s {} {offset} {len}", file.display()),
                path,
            ],
            Duration::from_secs(300),
        )
        .unwrap_or_else(|e| panic!("pre-writing {label}: {e}"));
        let _ = std::fs::remove_file(&file);
        self.prewritten.push((target.to_string(), region));
    }

    /// Writes records 1..=`prefill` (as a boot that started at 1) into the template.
    fn prefill_template(&self, template_path: &str, bytes: u64, prefill: u64) {
        let raw = self.dir.join("prefill.raw");
        {
            let mut file = std::fs::File::create(&raw)
                .unwrap_or_else(|e| panic!("creating {}: {e}", raw.display()));
            file.set_len(bytes)
                .unwrap_or_else(|e| panic!("sizing {}: {e}", raw.display()));
            file.seek(SeekFrom::Start(records::RECORD_SIZE as u64))
                .unwrap_or_else(|e| panic!("seek: {e}"));
            for seq in 1..=prefill {
                file.write_all(&records::encode_record(seq, 1))
                    .unwrap_or_else(|e| panic!("writing {}: {e}", raw.display()));
            }
        }
        let raw_s = raw.to_string_lossy().into_owned();
        // -n: write into the existing qcow2 the pool created instead of replacing it.
        run_with_timeout(
            "qemu-img",
            &[
                "convert",
                "-n",
                "-f",
                "raw",
                "-O",
                "qcow2",
                &raw_s,
                template_path,
            ],
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_file(&raw);
    }

    /// The domain name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool the guest's volumes were created in.
    pub fn pool_name(&self) -> &str {
        &self.pool_name
    }

    /// The volume vda was created on (the overlay, for a backing chain).
    pub fn disk_volume(&self) -> &str {
        &self.disk_volume
    }

    /// The backing template volume, if built with [`GuestBuilder::backing_file`].
    pub fn template_volume(&self) -> Option<&str> {
        self.template_volume.as_deref()
    }

    /// The layers between the template and vda, template side first
    /// ([`GuestBuilder::deltas`]).
    pub fn delta_volumes(&self) -> &[String] {
        &self.delta_volumes
    }

    /// The vdb volume, if built with [`GuestBuilder::data_disk`].
    pub fn data_volume(&self) -> Option<&str> {
        self.data_volume.as_deref()
    }

    /// The guest's own temp dir (console log, domain.xml).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The whole console log (all boots).
    pub fn console(&self) -> String {
        match std::fs::read(&self.console) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("reading {}: {e}", self.console.display()),
        }
    }

    /// The last lines of the console, for failure messages.
    pub fn console_tail(&self) -> String {
        tail(&self.console(), CONSOLE_TAIL)
    }

    /// The highest acknowledged record over all boots (records prefilled into a backing
    /// template count as acknowledged); 0 if none.
    pub fn last_ack(&self) -> u64 {
        records::last_ack(&self.console())
            .unwrap_or(0)
            .max(self.prefilled)
    }

    /// Records prefilled into the backing template.
    pub fn prefilled(&self) -> u64 {
        self.prefilled
    }

    /// The boots seen on the console.
    pub fn boots(&self) -> Vec<records::Boot> {
        records::boots(&self.console())
    }

    /// `virsh domstate`, e.g. `running`, `shut off`, `paused`.
    pub fn state(&self) -> String {
        virsh(&["domstate", &self.name])
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| e)
    }

    /// Time since the current boot was started.
    pub fn since_start(&self) -> Duration {
        self.started_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// The current boot as seen on the console, if it has printed `VOLMIG-START` yet.
    fn this_boot(&self) -> Option<records::Boot> {
        let mut boots = self.boots();
        if boots.len() > self.boots_before_start.load(Ordering::SeqCst) {
            boots.pop()
        } else {
            None
        }
    }

    /// Waits until the current boot has acknowledged at least `min_acks` records and
    /// returns its last ack. Panics with the console tail on timeout or if the domain
    /// stops running.
    pub fn wait_writing(&self, min_acks: u64, timeout: Duration) -> u64 {
        self.wait_acks(
            &format!("{min_acks} acks in this boot"),
            timeout,
            |boot, ack| ack + 1 >= boot.start + min_acks,
        )
    }

    /// Waits until the current boot has acknowledged record `seq` (or a later one) and
    /// returns its last ack; e.g. "still writing after the pivot":
    /// `wait_for_ack(before + 50, …)`. Panics like [`Guest::wait_writing`].
    pub fn wait_for_ack(&self, seq: u64, timeout: Duration) -> u64 {
        self.wait_acks(&format!("ack {seq}"), timeout, |_, ack| ack >= seq)
    }

    /// Polls the console until `done(current boot, its last ack)`; checks every second
    /// that the domain still runs, so a crashed or paused guest fails fast.
    fn wait_acks(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&records::Boot, u64) -> bool,
    ) -> u64 {
        let mut last = 0;
        let mut checks = 0u32;
        let mut stopped = None;
        let ok = try_wait_until(timeout, || {
            if let Some(boot) = self.this_boot() {
                if let Some(ack) = boot.last_ack {
                    last = ack;
                    if done(&boot, ack) {
                        return true;
                    }
                }
            }
            checks += 1;
            if checks.is_multiple_of(10) {
                let state = self.state();
                if state != "running" {
                    stopped = Some(state);
                    return true;
                }
            }
            false
        });
        if let Some(state) = stopped {
            panic!(
                "guest {} is {state} while waiting for {what} (last ack {last}); console tail:\n{}",
                self.name,
                self.console_tail()
            );
        }
        if !ok {
            panic!(
                "guest {} did not reach {what} within {timeout:?} (state {}, last ack {last}); \
                 console tail:\n{}",
                self.name,
                self.state(),
                self.console_tail()
            );
        }
        last
    }

    /// `virsh dumpxml` (live definition).
    pub fn live_xml(&self) -> String {
        virsh_ok(&["dumpxml", &self.name])
    }

    /// `virsh dumpxml --inactive` (persistent definition).
    pub fn persistent_xml(&self) -> String {
        virsh_ok(&["dumpxml", "--inactive", &self.name])
    }

    /// The disk `target` (e.g. `vda`) in the live definition.
    pub fn live_disk_source(&self, target: &str) -> DiskSource {
        let xml = self.live_xml();
        disk_in_domain_xml(&xml, target)
            .unwrap_or_else(|e| panic!("live XML of {}: {e}\n{xml}", self.name))
    }

    /// The disk `target` in the persistent definition.
    pub fn persistent_disk_source(&self, target: &str) -> DiskSource {
        let xml = self.persistent_xml();
        disk_in_domain_xml(&xml, target)
            .unwrap_or_else(|e| panic!("persistent XML of {}: {e}\n{xml}", self.name))
    }

    /// `virsh destroy` (hard power-off).
    pub fn destroy(&self) {
        virsh_ok(&["destroy", &self.name]);
    }

    /// `virsh start` from the persistent definition (the domain must be shut off).
    pub fn boot(&self) {
        self.boots_before_start
            .store(self.boots().len(), Ordering::SeqCst);
        virsh(&["start", &self.name]).unwrap_or_else(|e| {
            panic!("{e}\nconsole tail:\n{}", self.console_tail());
        });
        *self.started_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Destroy, then start again from the persistent definition: what a host crash and
    /// restart would do, and the proof that the persistent XML names a disk with the data.
    pub fn cold_restart(&self) {
        self.destroy();
        self.boot();
    }

    /// `qemu-img` arguments (format, filename) that read `source`.
    fn qemu_img_source(source: &DiskSource) -> Result<(String, String), String> {
        let format = source.format.clone().unwrap_or_else(|| "raw".to_string());
        match (source.disk_type.as_str(), source.protocol.as_deref()) {
            ("file", _) | ("block", _) => Ok((format, source.path.clone())),
            ("network", Some("rbd")) => {
                let env = CephEnv::load()?;
                Ok((format, env.qemu_img_spec(&source.path)))
            }
            (t, p) => Err(format!("cannot read a disk of type {t} protocol {p:?}")),
        }
    }

    /// Converts the disk `target`'s *persistent* source to a raw temp file in the guest's
    /// dir (`qemu-img convert -U`, so it works on a running guest too) and hands it to
    /// `check`; the file is removed afterwards.
    fn with_persistent_image<T>(
        &self,
        target: &str,
        check: impl FnOnce(&DiskSource, &Path) -> Result<T, String>,
    ) -> Result<T, String> {
        let source = self.persistent_disk_source(target);
        let (format, filename) = Self::qemu_img_source(&source)?;
        let n = self.last_verified.fetch_add(1, Ordering::SeqCst);
        let raw = self.dir.join(format!("verify-{n}.raw"));
        let raw_s = raw.to_string_lossy().into_owned();
        let converted = run_with_timeout(
            "qemu-img",
            &[
                "convert", "-U", "-f", &format, "-O", "raw", &filename, &raw_s,
            ],
            Duration::from_secs(600),
        );
        let result = converted.and_then(|_| check(&source, &raw));
        let _ = std::fs::remove_file(&raw);
        result
    }

    /// Checks the guest lost nothing: reads the disk `target`'s *persistent* source, checks
    /// every record up to the last ack, and checks from the console that no boot resumed at
    /// or below an earlier ack (a hole the guest may have refilled). Read the ack before the
    /// disk: a record is durable before it is acked.
    pub fn try_verify_records(&self, target: &str) -> Result<RecordReport, String> {
        let console = self.console();
        let last_ack = records::last_ack(&console).unwrap_or(0).max(self.prefilled);
        let report = self.with_persistent_image(target, |source, raw| {
            let file =
                std::fs::File::open(raw).map_err(|e| format!("opening {}: {e}", raw.display()))?;
            records::verify(file, last_ack)
                .map_err(|e| format!("disk {target} ({}) of {}: {e}", source.path, self.name))
        })?;
        records::check_resumes(&console).map_err(|e| format!("console of {}: {e}", self.name))?;
        Ok(report)
    }

    /// Checks that the pattern written into disk `target` before the first boot
    /// ([`GuestBuilder::prewritten`], [`GuestBuilder::data_disk_prewritten`]) is intact on
    /// the disk's *persistent* source, i.e. where a cold start would read it.
    ///
    /// # Errors
    /// The first byte offset that differs, with how many do; or that the guest's records
    /// grew into the region (then the test ran too long for its disk).
    pub fn try_verify_prewritten(&self, target: &str) -> Result<(), String> {
        let regions: Vec<Region> = self
            .prewritten
            .iter()
            .filter(|(t, _)| t == target)
            .map(|(_, r)| *r)
            .collect();
        if regions.is_empty() {
            return Err(format!(
                "nothing was pre-written into {target} of {}",
                self.name
            ));
        }
        for region in regions {
            self.verify_region(target, region)?;
        }
        Ok(())
    }

    fn verify_region(&self, target: &str, region: Region) -> Result<(), String> {
        if target == "vda" {
            let end_of_records = (self.last_ack() + 2) * records::RECORD_SIZE as u64;
            if end_of_records > region.offset {
                return Err(format!(
                    "the guest's records (last ack {}) reached the pre-written region at byte {}: give vda more room",
                    self.last_ack(),
                    region.offset
                ));
            }
        }
        self.with_persistent_image(target, |source, raw| {
            use std::io::Read;
            let mut file =
                std::fs::File::open(raw).map_err(|e| format!("opening {}: {e}", raw.display()))?;
            file.seek(SeekFrom::Start(region.offset))
                .map_err(|e| format!("seeking {}: {e}", raw.display()))?;
            let mut found = Vec::with_capacity(region.len as usize);
            file.take(region.len)
                .read_to_end(&mut found)
                .map_err(|e| format!("reading {}: {e}", raw.display()))?;
            region
                .check(&found)
                .map_err(|e| format!("disk {target} ({}) of {}: {e}", source.path, self.name))
        })
    }

    /// [`Guest::try_verify_prewritten`] that panics on a mismatch.
    pub fn verify_prewritten(&self, target: &str) {
        if let Err(e) = self.try_verify_prewritten(target) {
            panic!("{e}");
        }
    }

    /// Everything the guest's disks must still hold, read from the persistent sources:
    /// vda's records and every pre-written region.
    pub fn verify_data(&self) {
        self.verify_records("vda");
        let mut targets: Vec<&str> = self.prewritten.iter().map(|(t, _)| t.as_str()).collect();
        targets.dedup();
        for target in targets {
            self.verify_prewritten(target);
        }
    }

    /// Destroy, start from the persistent definition, wait until the guest writes again,
    /// and check all its data ([`Guest::verify_data`]): the proof that the persistent
    /// definition names disks that hold everything.
    pub fn verify_data_after_cold_restart(&self) {
        self.cold_restart();
        self.wait_writing(10, Duration::from_secs(120));
        self.verify_data();
    }

    /// [`Guest::try_verify_records`] that panics (with the console tail) on any loss.
    pub fn verify_records(&self, target: &str) -> RecordReport {
        self.try_verify_records(target)
            .unwrap_or_else(|e| panic!("{e}\nconsole tail:\n{}", self.console_tail()))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "harness: guest {} (state {}), console {} — last lines:\n{}",
                self.name,
                self.state(),
                self.console.display(),
                self.console_tail()
            );
        }
        if let Err(e) = virsh(&["destroy", &self.name]) {
            if !e.contains("not running") && !e.contains("not found") {
                eprintln!("harness: clean-up: {e}");
            }
        }
        // Snapshot (tests/chains.rs) and checkpoint (tests/checkpoints.rs) metadata
        // would otherwise block the undefine.
        if let Err(e) = virsh(&[
            "undefine",
            &self.name,
            "--snapshots-metadata",
            "--checkpoints-metadata",
        ]) {
            if !e.contains("not found") {
                eprintln!("harness: clean-up: {e}");
            }
        }
        if !std::thread::panicking() {
            remove_dir_noisy(&self.dir);
        }
    }
}

/// Virtual size of vda of [`writing_guest_with_data`].
pub const DATA_GUEST_DISK: u64 = 128 << 20;
/// Pattern bytes at the top of vda of [`writing_guest_with_data`].
pub const DATA_GUEST_PREWRITTEN: u64 = 64 << 20;

/// A guest whose vda (`format`, 128 MiB) holds 64 MiB of its pattern in its upper half
/// and whose records grow in the lower half: migrating vda copies real data (so a
/// bandwidth limit of 8-16 MiB/s makes the copy last seconds and a fault lands mid-copy)
/// while the guest writes. Throttled (`pause_ms(20)`) so that several such guests fit on
/// two cores. It is writing when this returns.
pub fn writing_guest_with_data(purpose: &str, pool: &dyn Pool, format: &str) -> Guest {
    let guest = Guest::builder(purpose, pool)
        .format(format)
        .disk_bytes(DATA_GUEST_DISK)
        .prewritten(DATA_GUEST_PREWRITTEN)
        .pause_ms(20)
        .start();
    guest.wait_writing(10, Duration::from_secs(120));
    guest
}
