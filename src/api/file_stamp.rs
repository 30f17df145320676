//! What tells that a file changed, for everything volmig re-reads while it
//! runs (TLS material, token files, the config file's identities and tokens).
//!
//! Its modification time, and its inode, size and mode: a file replaced by a
//! rename, or with an older copy, or only chmod'ed (to fix a mode volmig
//! refused), is looked at again too.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

/// One version of a file.
pub type FileStamp = (SystemTime, u64, u64, u32);

/// The stamp of `path`; `None` when it cannot be stat'ed (then the next
/// successful stat counts as a change).
pub fn of(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.ino(), meta.len(), meta.mode()))
}
