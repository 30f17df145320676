//! Shared storage on a [`SimBed`] (issue #21): one directory that several simulated hosts
//! define as a libvirt `dir` pool of the same name and target — what an NFS mount looks
//! like to libvirt. The directory is on the machine's local file system and each
//! simulated host has its own host name, so a node reports it as local
//! (`local:<host name>:<target>`) unless its `[shared_pools]` setting names the pool:
//! give the fleet's nodes that setting (`Fleet::up_with`) for the controller to merge
//! the hosts' pools into one.
//!
//! [`OnHost`] keeps a harness object (pool, guest) together with the host whose libvirtd
//! it lives in, so that its calls and its `Drop` go to that host even when objects of
//! several hosts are alive at once.

use super::hosts::SimHost;
use super::pools::{DirPool, Pool};
use std::path::Path;

/// A dir pool of one name on one directory, defined and started on each of `hosts`: a
/// [`DirPool`] made on the first host, the same name and target defined on the others.
/// Volume calls through [`SharedDirPool::pool`] go to the libvirtd of the current
/// [`SimHost::libvirt_scope`]; [`SharedDirPool::refresh_all`] makes every host see them.
pub struct SharedDirPool {
    first: Option<OnHost<DirPool>>,
    others: Vec<SimHost>,
}

impl SharedDirPool {
    pub fn new(purpose: &str, hosts: &[&SimHost]) -> SharedDirPool {
        let (first, others) = hosts.split_first().expect("at least one host");
        let mut shared = SharedDirPool {
            first: Some(OnHost::new(first, || DirPool::new(purpose))),
            others: Vec::new(),
        };
        let name = shared.name().to_string();
        let target = shared.path().to_string_lossy().into_owned();
        for host in others {
            // Kept first: a failure half-way still undefines it in Drop.
            shared.others.push((*host).clone());
            for args in [
                &["pool-define-as", &name, "dir", "--target", &target][..],
                &["pool-start", &name][..],
            ] {
                host.virsh(args)
                    .unwrap_or_else(|e| panic!("{}: {e}", host.name()));
            }
        }
        shared
    }

    /// The pool, for the harness's `Guest` and volume calls.
    pub fn pool(&self) -> &DirPool {
        self.first.as_ref().expect("present until drop").get()
    }

    /// The pool's name, the same on every host.
    pub fn name(&self) -> &str {
        self.pool().name()
    }

    /// The shared directory.
    pub fn path(&self) -> &Path {
        self.pool().path()
    }

    /// `virsh pool-refresh` on every host.
    pub fn refresh_all(&self) {
        let first = self.first.as_ref().expect("present until drop").host();
        for host in std::iter::once(first).chain(&self.others) {
            host.virsh(&["pool-refresh", self.name()])
                .unwrap_or_else(|e| panic!("{}: {e}", host.name()));
        }
    }
}

impl Drop for SharedDirPool {
    fn drop(&mut self) {
        let name = self.name().to_string();
        for host in &self.others {
            for args in [["pool-destroy", &name], ["pool-undefine", &name]] {
                if let Err(e) = host.virsh(&args) {
                    eprintln!("harness: clean-up: {}: {e}", host.name());
                }
            }
        }
        // Undefined on the first host, its directory removed.
        drop(self.first.take());
    }
}

/// A harness object living in `host`'s libvirtd: made, used and dropped under that
/// host's [`SimHost::libvirt_scope`].
pub struct OnHost<T> {
    host: SimHost,
    inner: Option<T>,
}

impl<T> OnHost<T> {
    /// `make()` under `host`'s scope.
    pub fn new(host: &SimHost, make: impl FnOnce() -> T) -> OnHost<T> {
        let _scope = host.libvirt_scope();
        OnHost {
            host: host.clone(),
            inner: Some(make()),
        }
    }

    /// `f(object)` under the host's scope.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        let _scope = self.host.libvirt_scope();
        f(self.inner.as_ref().expect("present until drop"))
    }

    /// The object, for calls that do not reach libvirt (names, paths).
    pub fn get(&self) -> &T {
        self.inner.as_ref().expect("present until drop")
    }

    pub fn host(&self) -> &SimHost {
        &self.host
    }
}

impl<T> Drop for OnHost<T> {
    fn drop(&mut self) {
        let _scope = self.host.libvirt_scope();
        drop(self.inner.take());
    }
}
