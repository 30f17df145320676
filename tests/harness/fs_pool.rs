//! A `dir` pool on a small filesystem of its own, which a test can fill behind libvirt's
//! back: the destination that runs out of space in the middle of a copy.

use super::pools::{remove_pool, Pool, PoolKind};
use super::xml::escape;
use super::{make_dir, prepare, remove_dir_noisy, run_ok, run_with_timeout, unique_name, virsh_ok};
use std::path::PathBuf;
use std::time::Duration;

/// A `dir` pool on a small ext4 filesystem of its own (a sparse image file on a loop
/// device, mounted in the pool's temp dir), so a test can fill the pool's filesystem
/// behind libvirt's back with [`FsPool::fill_leaving`]. The pool's target is a
/// subdirectory of the mount, so filler files and `lost+found` are not volumes.
pub struct FsPool {
    name: String,
    dir: PathBuf,
    mount: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
}

impl FsPool {
    /// Creates a sparse `size_bytes` image, `mkfs.ext4 -q -m 0` (no blocks reserved for
    /// root: libvirt's "available" is what the copy can use), attaches and mounts it, and
    /// defines and starts a `dir` pool on `<mount>/pool`.
    pub fn new(purpose: &str, size_bytes: u64) -> FsPool {
        prepare();
        let name = unique_name(purpose);
        let dir = make_dir(&name);
        let mut pool = FsPool {
            mount: dir.join("mnt"),
            name,
            dir,
            loop_dev: None,
            mounted: false,
        };
        let image = pool.dir.join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size_bytes))
            .unwrap_or_else(|e| panic!("creating {}: {e}", image.display()));
        let image = image.to_string_lossy().into_owned();
        run_ok("mkfs.ext4", &["-q", "-F", "-m", "0", &image]);
        let dev = run_ok("losetup", &["-f", "--show", &image])
            .trim()
            .to_string();
        pool.loop_dev = Some(dev.clone());
        std::fs::create_dir(&pool.mount)
            .unwrap_or_else(|e| panic!("creating {}: {e}", pool.mount.display()));
        let mount = pool.mount.to_string_lossy().into_owned();
        run_ok("mount", &["-t", "ext4", &dev, &mount]);
        pool.mounted = true;
        let target = pool.target();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir(&target)
                .and_then(|_| {
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                })
                .unwrap_or_else(|e| panic!("creating {}: {e}", target.display()));
        }
        virsh_ok(&[
            "pool-define-as",
            &pool.name,
            "dir",
            "--target",
            &target.to_string_lossy(),
        ]);
        virsh_ok(&["pool-start", &pool.name]);
        pool
    }

    /// The pool's directory (on the small filesystem).
    pub fn target(&self) -> PathBuf {
        self.mount.join("pool")
    }

    /// Bytes the filesystem has available now (`df`), what a writer can still use.
    pub fn available(&self) -> u64 {
        let out = run_ok(
            "df",
            &["-B1", "--output=avail", &self.mount.to_string_lossy()],
        );
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no avail in df output: {out}"))
    }

    /// Allocates a filler file outside the pool's directory so that only `left` bytes stay
    /// available (or nothing, if less than that was left). Returns the filler's size.
    pub fn fill_leaving(&self, left: u64) -> u64 {
        let filler = self.available().saturating_sub(left);
        if filler > 0 {
            let file = self
                .mount
                .join(format!("filler-{}", unique_name("f")))
                .to_string_lossy()
                .into_owned();
            run_ok("fallocate", &["-l", &filler.to_string(), &file]);
        }
        filler
    }
}

/// Unmounts, printing failures; a busy mount is detached lazily so the loop device and
/// the directory can still go. For `Drop` and the sweep.
pub(crate) fn unmount_noisy(mount: &str) {
    if let Err(e) = run_with_timeout("umount", &[mount], Duration::from_secs(30)) {
        eprintln!("harness: clean-up: {e}; unmounting lazily");
        if let Err(e) = run_with_timeout("umount", &["-l", mount], Duration::from_secs(30)) {
            eprintln!("harness: clean-up: {e}");
        }
    }
}

impl Pool for FsPool {
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
        let path = self.target().join(volume);
        (
            "file",
            format!("<source file='{}'/>", escape(&path.to_string_lossy())),
        )
    }
}

impl Drop for FsPool {
    fn drop(&mut self) {
        remove_pool(&self.name, false);
        if self.mounted {
            unmount_noisy(&self.mount.to_string_lossy());
        }
        if let Some(dev) = &self.loop_dev {
            if let Err(e) = run_with_timeout("losetup", &["-d", dev], Duration::from_secs(30)) {
                eprintln!("harness: clean-up: {e}");
            }
        }
        remove_dir_noisy(&self.dir);
    }
}
