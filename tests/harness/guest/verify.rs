//! The proof that a guest lost nothing: its records and pre-written regions, read from
//! the disks its *persistent* definition names.

use super::super::pattern::Region;
use super::super::pools::CephEnv;
use super::super::records::{self, RecordReport};
use super::super::run_with_timeout;
use super::{DiskSource, Guest};
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Guest {
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
    /// ([`GuestBuilder::prewritten`](super::GuestBuilder::prewritten),
    /// [`GuestBuilder::data_disk_prewritten`](super::GuestBuilder::data_disk_prewritten)) is
    /// intact on the disk's *persistent* source, i.e. where a cold start would read it.
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
