//! A real guest (`tests/guest/`) that keeps appending numbered records to its disk `vda`
//! and acknowledges each on its serial console once durable. Records and acks together
//! tell whether a migration lost anything: see `tests/guest/README.md` and `records/`.
//!
//! The domain is persistent (volmig's subject), `<domain type='qemu'>` (TCG: QEMU runs as
//! libvirt-qemu, which cannot open /dev/kvm here), boots the test kernel directly and logs
//! its console to a file with `append='on'`, so acks of earlier boots survive a restart.

mod builder;
mod disk_source;
mod prewrite;
mod verify;

pub use builder::{GuestBuilder, GUEST_CACHE, RECORD_SPACE_MIN};
pub use disk_source::{disk_in_domain_xml, DiskSource};

use super::pattern::Region;
use super::pools::Pool;
use super::records;
use super::{remove_dir_noisy, tail, try_wait_until, virsh, virsh_ok};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines of console shown when something fails.
const CONSOLE_TAIL: usize = 40;

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
