//! Everything [`Guest::builder`] can put together before the first boot: volumes and
//! backing chains in the pool, extra disks, kernel parameters, the domain XML.

use super::super::pools::{Pool, PoolKind};
use super::super::xml::escape;
use super::super::{make_dir, prepare, repo_root, run_with_timeout, unique_name, virsh_ok};
use super::Guest;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Shared cache of the guest kernel and initrd; `build-guest.sh` locks it and rebuilds only
/// when its inputs change, so parallel test processes share one build.
pub const GUEST_CACHE: &str = "/var/tmp/volmig-guest";

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
    /// [`super::super::pattern`]) before the first boot; check it with
    /// [`Guest::verify_prewritten`].
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

    /// Writes `bytes` of vda's own pattern (see [`super::super::pattern`]) into the top of vda,
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
}
