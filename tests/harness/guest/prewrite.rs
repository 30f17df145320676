//! Data written into a guest's volumes before its first boot, for the checks in
//! `verify.rs` to find again after a migration.

use super::super::pattern::{self, Region};
use super::super::pools::{CephEnv, Pool, PoolKind};
use super::super::records;
use super::super::run_with_timeout;
use super::Guest;
use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

impl Guest {
    /// Writes the pattern of `target` into `[offset, offset + len)` of a new volume (the
    /// guest is not running yet), through qemu-io so that qcow2 and rbd work too.
    pub(super) fn prewrite(
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
    pub(super) fn prewrite_path(
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
    pub(super) fn prefill_template(&self, template_path: &str, bytes: u64, prefill: u64) {
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
}
