//! The block-job calls the `virt` crate does not wrap, over `virt::sys`.
//!
//! With `checkpoint.rs`, the only place in volmig with `unsafe`. Every pointer handed to
//! libvirt comes from a live `virt::domain::Domain` or a `CString` that outlives
//! the call, and typed parameters are freed exactly once by [`TypedParams`].

use std::ffi::CString;
use std::os::raw::c_int;

use virt::domain::Domain;
use virt::error::Error;
use virt::sys;

use volmig_engine::hypervisor::{BlockJob, CopyOptions};

use crate::connection::CallError;

pub(crate) fn cstring(s: &str) -> Result<CString, CallError> {
    // A NUL would silently truncate the C string, so it is refused instead.
    CString::new(s).map_err(|_| CallError::Nul(s.replace('\0', "\\0")))
}

/// Owned libvirt typed parameters, freed on drop.
struct TypedParams {
    ptr: sys::virTypedParameterPtr,
    len: c_int,
    cap: c_int,
}

impl TypedParams {
    fn new() -> Self {
        TypedParams {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }

    fn add_ullong(&mut self, name: &std::ffi::CStr, value: u64) -> Result<(), CallError> {
        // SAFETY: ptr/len/cap describe an array libvirt allocated (or null/0/0),
        // and `name` is a NUL-terminated constant that outlives the call.
        let rc = unsafe {
            sys::virTypedParamsAddULLong(
                &mut self.ptr,
                &mut self.len,
                &mut self.cap,
                name.as_ptr(),
                value,
            )
        };
        if rc < 0 {
            return Err(Error::last_error().into());
        }
        Ok(())
    }

    fn add_uint(&mut self, name: &std::ffi::CStr, value: u32) -> Result<(), CallError> {
        // SAFETY: as in add_ullong.
        let rc = unsafe {
            sys::virTypedParamsAddUInt(
                &mut self.ptr,
                &mut self.len,
                &mut self.cap,
                name.as_ptr(),
                value,
            )
        };
        if rc < 0 {
            return Err(Error::last_error().into());
        }
        Ok(())
    }
}

impl Drop for TypedParams {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the array was allocated by virTypedParamsAdd* and is freed once.
            unsafe { sys::virTypedParamsFree(self.ptr, self.len) };
        }
    }
}

/// virDomainBlockCopy with REUSE_EXT | TRANSIENT_JOB: the destination must exist.
pub fn block_copy(
    dom: &Domain,
    disk: &str,
    dest_xml: &str,
    options: CopyOptions,
) -> Result<(), CallError> {
    let disk = cstring(disk)?;
    let dest_xml = cstring(dest_xml)?;
    let mut params = TypedParams::new();
    if options.bandwidth > 0 {
        params.add_ullong(sys::VIR_DOMAIN_BLOCK_COPY_BANDWIDTH, options.bandwidth)?;
    }
    if options.buf_size > 0 {
        params.add_ullong(sys::VIR_DOMAIN_BLOCK_COPY_BUF_SIZE, options.buf_size)?;
    }
    if options.granularity > 0 {
        params.add_uint(sys::VIR_DOMAIN_BLOCK_COPY_GRANULARITY, options.granularity)?;
    }
    let mut flags = sys::VIR_DOMAIN_BLOCK_COPY_REUSE_EXT | sys::VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB;
    if options.synchronous_writes {
        flags |= sys::VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES;
    }
    if options.shallow {
        flags |= sys::VIR_DOMAIN_BLOCK_COPY_SHALLOW;
    }

    // SAFETY: dom is a live domain handle; disk and dest_xml are NUL-terminated and
    // live until the call returns; params is a valid (possibly empty) array.
    let rc = unsafe {
        sys::virDomainBlockCopy(
            dom.as_ptr(),
            disk.as_ptr(),
            dest_xml.as_ptr(),
            params.ptr,
            params.len,
            flags,
        )
    };
    if rc < 0 {
        return Err(Error::last_error().into());
    }
    Ok(())
}

/// virDomainGetBlockJobInfo with bandwidth in bytes; `None` when no job runs.
pub fn block_job_info(dom: &Domain, disk: &str) -> Result<Option<BlockJob>, CallError> {
    let disk = cstring(disk)?;
    let mut info = sys::virDomainBlockJobInfo {
        type_: 0,
        bandwidth: 0,
        cur: 0,
        end: 0,
    };
    // SAFETY: dom is live, disk is NUL-terminated, info is a valid out-pointer.
    let rc = unsafe {
        sys::virDomainGetBlockJobInfo(
            dom.as_ptr(),
            disk.as_ptr(),
            &mut info,
            sys::VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES,
        )
    };
    match rc {
        0 => Ok(None),
        rc if rc > 0 => Ok(Some(BlockJob {
            cur: info.cur,
            end: info.end,
            bandwidth: info.bandwidth,
            is_copy: info.type_ == sys::VIR_DOMAIN_BLOCK_JOB_TYPE_COPY as c_int,
        })),
        _ => Err(Error::last_error().into()),
    }
}

/// virDomainBlockJobAbort, with PIVOT when `pivot` (synchronous: returns once
/// libvirt has switched or dropped the job).
pub fn block_job_abort(dom: &Domain, disk: &str, pivot: bool) -> Result<(), CallError> {
    let disk = cstring(disk)?;
    let flags = if pivot {
        sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT
    } else {
        0
    };
    // SAFETY: dom is live and disk is NUL-terminated for the duration of the call.
    let rc = unsafe { sys::virDomainBlockJobAbort(dom.as_ptr(), disk.as_ptr(), flags) };
    if rc < 0 {
        return Err(Error::last_error().into());
    }
    Ok(())
}

/// virDomainBlockJobSetSpeed in bytes per second (0 = unlimited).
pub fn block_job_set_speed(dom: &Domain, disk: &str, bandwidth: u64) -> Result<(), CallError> {
    let disk = cstring(disk)?;
    // SAFETY: dom is live and disk is NUL-terminated for the duration of the call.
    let rc = unsafe {
        sys::virDomainBlockJobSetSpeed(
            dom.as_ptr(),
            disk.as_ptr(),
            bandwidth as std::os::raw::c_ulong,
            sys::VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES,
        )
    };
    if rc < 0 {
        return Err(Error::last_error().into());
    }
    Ok(())
}
