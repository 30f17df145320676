//! A directory for certificates and config files, uniquely named and removed
//! on drop (a crashed run's is swept by the next, like every harness name).

use std::path::{Path, PathBuf};

/// A scratch directory for one test.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new directory named after `purpose`.
    pub fn new(purpose: &str) -> Scratch {
        super::ensure_host();
        Scratch(super::make_dir(&super::unique_name(purpose)))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` in it and returns the file's path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// [`Scratch::file`], the path as a string (for config files and flags).
    pub fn write(&self, name: &str, text: &str) -> String {
        self.file(name, text).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        super::remove_dir_noisy(&self.0);
    }
}
