//! Snapshot and checkpoint calls the `virt` crate does not wrap, over `virt::sys`.
//!
//! Every checkpoint reference libvirt hands out is owned by a [`CheckpointRef`]
//! and freed exactly once on drop; strings libvirt allocates are copied and
//! freed right away.

use std::os::raw::c_char;

use virt::domain::Domain;
use virt::error::Error;
use virt::sys;

use crate::blockjob::cstring;
use crate::connection::CallError;

/// An owned `virDomainCheckpointPtr`.
struct CheckpointRef(sys::virDomainCheckpointPtr);

impl Drop for CheckpointRef {
    fn drop(&mut self) {
        // SAFETY: the pointer came from libvirt as a new reference and is freed
        // only here, once.
        unsafe { sys::virDomainCheckpointFree(self.0) };
    }
}

impl CheckpointRef {
    /// The checkpoint's XML description with `flags`.
    fn xml(&self, flags: u32) -> Result<String, CallError> {
        // SAFETY: self.0 is a live checkpoint reference.
        let raw = unsafe { sys::virDomainCheckpointGetXMLDesc(self.0, flags) };
        owned_string(raw)
    }
}

/// Copies and frees a string libvirt allocated; null means the call failed.
fn owned_string(raw: *mut c_char) -> Result<String, CallError> {
    if raw.is_null() {
        return Err(Error::last_error().into());
    }
    // SAFETY: libvirt returned a NUL-terminated string it allocated with malloc;
    // it is read once here and then freed once.
    let s = unsafe { std::ffi::CStr::from_ptr(raw) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as above; nothing else holds the pointer.
    unsafe { libc::free(raw.cast()) };
    Ok(s)
}

/// Number of libvirt snapshots of the domain.
pub fn snapshot_count(dom: &Domain) -> Result<u32, CallError> {
    // SAFETY: dom is live; flags 0 counts all snapshots.
    let snapshots = unsafe { sys::virDomainSnapshotNum(dom.as_ptr(), 0) };
    if snapshots < 0 {
        return Err(Error::last_error().into());
    }
    Ok(snapshots as u32)
}

/// Every checkpoint of the domain, parents before children.
fn list(dom: &Domain) -> Result<Vec<CheckpointRef>, CallError> {
    let mut list: *mut sys::virDomainCheckpointPtr = std::ptr::null_mut();
    // SAFETY: dom is live; list is an out-pointer libvirt fills with an array we free below.
    let n = unsafe {
        sys::virDomainListAllCheckpoints(
            dom.as_ptr(),
            &mut list,
            sys::VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL,
        )
    };
    if n < 0 {
        return Err(Error::last_error().into());
    }
    let mut out = Vec::with_capacity(n as usize);
    if !list.is_null() {
        for i in 0..n as usize {
            // SAFETY: libvirt returned `n` valid new references in `list`; each is
            // owned (and later freed) by exactly one CheckpointRef.
            out.push(CheckpointRef(unsafe { *list.add(i) }));
        }
        // SAFETY: the array itself was allocated by libvirt with malloc.
        unsafe { libc::free(list.cast()) };
    }
    Ok(out)
}

/// Number of checkpoints of the domain.
pub fn checkpoint_count(dom: &Domain) -> Result<u32, CallError> {
    Ok(list(dom)?.len() as u32)
}

/// The XML of every checkpoint without the embedded domain, with the dirty
/// size of each covered disk (parents first).
pub fn sized_descriptions(dom: &Domain) -> Result<Vec<String>, CallError> {
    list(dom)?
        .iter()
        .map(|c| {
            c.xml(sys::VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN | sys::VIR_DOMAIN_CHECKPOINT_XML_SIZE)
        })
        .collect()
}

/// The full XML of checkpoint `name`, embedded domain and its secure parts
/// included, so a redefinition loses nothing.
pub fn full_description(dom: &Domain, name: &str) -> Result<String, CallError> {
    let cname = cstring(name)?;
    // SAFETY: dom is live and cname outlives the call.
    let raw = unsafe { sys::virDomainCheckpointLookupByName(dom.as_ptr(), cname.as_ptr(), 0) };
    if raw.is_null() {
        return Err(Error::last_error().into());
    }
    CheckpointRef(raw).xml(sys::VIR_DOMAIN_CHECKPOINT_XML_SECURE)
}

/// Redefines a checkpoint from `xml`; libvirt checks that its bitmaps exist
/// and are usable on the domain's current disks and refuses otherwise.
pub fn redefine_validated(dom: &Domain, xml: &str) -> Result<(), CallError> {
    let cxml = cstring(xml)?;
    // SAFETY: dom is live and cxml outlives the call.
    let raw = unsafe {
        sys::virDomainCheckpointCreateXML(
            dom.as_ptr(),
            cxml.as_ptr(),
            sys::VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
                | sys::VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE,
        )
    };
    if raw.is_null() {
        return Err(Error::last_error().into());
    }
    drop(CheckpointRef(raw));
    Ok(())
}
