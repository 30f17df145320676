//! The unix socket, created and given its mode and group without following
//! a link someone else could put in its place.
//!
//! The socket's directory is opened once (`O_DIRECTORY | O_NOFOLLOW`) and
//! checked: owned by root or by this process's user, and not writable by
//! group or others unless sticky (in a sticky directory such as /tmp, others
//! cannot remove or rename our socket). Everything after goes through that
//! descriptor, never through the path again: the stale-socket check and
//! removal (`fstatat`, `unlinkat`), the bind (through `/proc/self/fd/N`, as
//! Linux has no `bindat`), the group and the mode (`fchownat`, `fchmodat`
//! with `AT_SYMLINK_NOFOLLOW`). Since nobody else can change the
//! directory's entries, the socket found there after bind is the one bound.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::api::server::ServeError;

/// Binds a unix socket safely: an existing path is removed only when it is a
/// socket nobody serves (a previous run that was killed); anything else there,
/// or a live server, refuses the start. The socket gets `mode` and the group
/// (`None`: `volmig` when that group exists).
pub fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> Result<tokio::net::UnixListener, ServeError> {
    let err = |source| ServeError::Listen {
        what: path.display().to_string(),
        source,
    };
    let (Some(dir_path), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a socket path names a file in a directory",
        )));
    };
    let name = CString::new(name.as_bytes())
        .map_err(|_| err(io::Error::new(io::ErrorKind::InvalidInput, "NUL in path")))?;
    std::fs::create_dir_all(dir_path).map_err(err)?;
    let dir = SocketDir::open(dir_path)?;
    dir.remove_stale(&name, path)?;
    let gid = match group {
        Some(group) => Some(
            group_id(group)
                .map_err(err)?
                .ok_or_else(|| ServeError::NoSuchGroup(group.to_string()))?,
        ),
        None => group_id("volmig").map_err(err)?,
    };
    let listener = dir.bind(&name).map_err(err)?;
    dir.set_group_and_mode(&name, gid, mode).map_err(err)?;
    Ok(listener)
}

/// The socket's directory, opened without following a link and checked.
pub(crate) struct SocketDir {
    fd: File,
    path: String,
}

impl SocketDir {
    /// Opens `path` (not a symbolic link) and checks who can change it.
    pub(crate) fn open(path: &Path) -> Result<SocketDir, ServeError> {
        let shown = path.display().to_string();
        let unsafe_dir = |reason: String| ServeError::UnsafeSocketDir {
            dir: shown.clone(),
            reason,
        };
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
                    unsafe_dir("it is a symbolic link or not a directory".into())
                }
                _ => ServeError::Listen {
                    what: shown.clone(),
                    source: e,
                },
            })?;
        let meta = fd.metadata().map_err(|source| ServeError::Listen {
            what: shown.clone(),
            source,
        })?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != 0 && meta.uid() != me {
            return Err(unsafe_dir(format!(
                "it is owned by uid {}, neither root nor this process's user (uid {me}), who could replace the socket",
                meta.uid()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(unsafe_dir(format!(
                "its mode {mode:04o} lets group or others replace the socket; remove their write permission (chmod go-w) or use a directory only volmig's user can write"
            )));
        }
        Ok(SocketDir { fd, path: shown })
    }

    /// Removes a socket left by a previous run; refuses anything else.
    fn remove_stale(&self, name: &CStr, path: &Path) -> Result<(), ServeError> {
        let in_use = |reason: String| ServeError::SocketInUse {
            path: path.display().to_string(),
            reason,
        };
        let err = |source| ServeError::Listen {
            what: path.display().to_string(),
            source,
        };
        let Some(stat) = self.stat(name).map_err(err)? else {
            return Ok(());
        };
        if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(in_use(
                "the path exists and is not a socket; not removing it".into(),
            ));
        }
        match std::os::unix::net::UnixStream::connect(self.via(name)) {
            Ok(_) => Err(in_use("another process is serving it".into())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "removing the stale socket of a previous run");
                // SAFETY: the descriptor is open for the call and `name` is
                // NUL-terminated.
                let rc = unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), 0) };
                if rc != 0 {
                    return Err(err(io::Error::last_os_error()));
                }
                Ok(())
            }
            Err(e) => Err(in_use(format!("it exists and cannot be probed: {e}"))),
        }
    }

    /// The path of `name` through this directory's descriptor, whatever
    /// became of the directory's own path.
    fn via(&self, name: &CStr) -> String {
        format!(
            "/proc/self/fd/{}/{}",
            self.fd.as_raw_fd(),
            name.to_string_lossy()
        )
    }

    /// Binds the socket `name` in this directory.
    pub(crate) fn bind(&self, name: &CStr) -> io::Result<tokio::net::UnixListener> {
        let listener = std::os::unix::net::UnixListener::bind(self.via(name))?;
        listener.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(listener)
    }

    /// Gives the socket `name` its group (when it differs) and mode; refuses
    /// anything but a socket there, and follows no link.
    pub(crate) fn set_group_and_mode(
        &self,
        name: &CStr,
        gid: Option<u32>,
        mode: u32,
    ) -> io::Result<()> {
        let stat = self.stat(name)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the socket vanished after bind")
        })?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(io::Error::other(format!(
                "the socket was replaced after bind in {}; not changing what is there",
                self.path
            )));
        }
        // chown only when the group differs: a service whose own group is the
        // socket's (the packaged units) then needs no chown at all, so its
        // system-call filter can refuse the @chown calls.
        if let Some(gid) = gid.filter(|gid| *gid != stat.st_gid) {
            // SAFETY: the descriptor is open for the call and `name` is
            // NUL-terminated; uid -1 leaves the owner as it is.
            let rc = unsafe {
                libc::fchownat(
                    self.fd.as_raw_fd(),
                    name.as_ptr(),
                    libc::uid_t::MAX,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: as above. glibc refuses AT_SYMLINK_NOFOLLOW on a link
        // (EOPNOTSUPP) instead of following it.
        let rc = unsafe {
            libc::fchmodat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                (mode & 0o777) as libc::mode_t,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// What `name` is in this directory (not following a link), if anything.
    fn stat(&self, name: &CStr) -> io::Result<Option<libc::stat>> {
        // SAFETY: an all-zero `stat` is a valid value for this plain C
        // struct; it is only read after fstatat filled it.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open for the call, `name` is
        // NUL-terminated and `stat` is a live local.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                &mut stat,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 {
            return Ok(Some(stat));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

/// The group id of `name`, if the group exists.
fn group_id(name: &str) -> Result<Option<u32>, io::Error> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in group name"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid value for this plain C struct; it
    // is only read after getgrnam_r filled it.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `cname` is NUL-terminated,
    // `group` and `result` are live locals, `buf` is writable for its length.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!result.is_null()).then_some(group.gr_gid))
}

#[cfg(test)]
mod tests;
