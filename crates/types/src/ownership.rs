//! What volmig records about a volume it created (or validated as a source)
//! so that it later deletes exactly that volume: the ownership rule of the
//! design ("volmig deletes only what it created, identified by what libvirt
//! returned for it").

/// Device, inode and birth time of a file. Path and libvirt key stay the same
/// when a file is deleted and another is created under its name; the inode
/// number may too (file systems reuse a freed inode at once), the birth time
/// does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// Birth time (statx `btime`), ns since the Unix epoch; `None` where the
    /// file system does not record it.
    #[serde(default)]
    pub born_ns: Option<u64>,
}

impl FileId {
    /// Whether two observations are of one file.
    pub fn same_file(&self, other: &FileId) -> bool {
        let born = match (self.born_ns, other.born_ns) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.dev == other.dev && self.ino == other.ino && born
    }
}

/// One volume as it was when volmig looked at it: what volmig records about a
/// volume it created (or validated as a source) so that it later deletes that
/// volume and never another one that took its name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeIdentity {
    /// Pool name.
    pub pool: String,
    /// Volume name.
    pub name: String,
    /// libvirt's key.
    pub key: String,
    /// Path (file/block) or `pool/image` (rbd).
    pub path: String,
    /// Device and inode for file volumes; `None` for devices and rbd images,
    /// where libvirt's key is all that identifies them.
    pub file_id: Option<FileId>,
}

impl VolumeIdentity {
    /// `pool/name`, as operators name a volume.
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.pool, self.name)
    }

    /// Why `found` is not this volume, or `None` when it is.
    pub fn differs_from(&self, found: &VolumeIdentity) -> Option<String> {
        if found.key != self.key {
            return Some(format!(
                "its key is now '{}', was '{}'",
                found.key, self.key
            ));
        }
        if found.path != self.path {
            return Some(format!(
                "its path is now '{}', was '{}'",
                found.path, self.path
            ));
        }
        match (self.file_id, found.file_id) {
            (Some(a), Some(b)) if !a.same_file(&b) => Some(format!(
                "it is another file now (device/inode/birth {}/{}/{:?}, was {}/{}/{:?})",
                b.dev, b.ino, b.born_ns, a.dev, a.ino, a.born_ns
            )),
            (Some(_), None) => Some("it is no longer a file".to_string()),
            _ => None,
        }
    }
}

/// What the hypervisor port's `delete_volume_if_same` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// The volume was the expected one and is deleted.
    Deleted,
    /// No volume of that name exists (any more).
    Gone,
    /// A volume of that name exists but is not the expected one; it was kept.
    Replaced(String),
}
