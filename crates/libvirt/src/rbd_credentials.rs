//! Credentials for an rbd disk source: its cephx key from the libvirt
//! secret, or from the user's keyring where libvirt keeps the secret private.

use volmig_engine::hypervisor::{DiskSource, HvError};

use crate::rbd;
use crate::LibvirtHost;

impl LibvirtHost {
    /// Opens an rbd disk source with its credentials: the key from the libvirt
    /// secret, or, where libvirt keeps it private, from the user's keyring.
    pub(crate) fn with_rbd_image<T>(
        &self,
        source: &DiskSource,
        f: impl Fn(&rbd::RbdImage<'_>) -> Result<T, HvError>,
    ) -> Result<Option<T>, HvError> {
        let DiskSource::Rbd {
            pool,
            image,
            hosts,
            auth,
        } = source
        else {
            return Ok(None);
        };
        let auth = match auth {
            None => None,
            Some(a) => {
                let from_libvirt = self
                    .call("virSecretGetValue", &a.secret_uuid, |c| {
                        Ok(c.lookup_secret_by_uuid_string(&a.secret_uuid)?.value(0)?)
                    })
                    .ok()
                    .map(|v| rbd::base64(&v));
                let key = from_libvirt
                    .or_else(|| rbd::keyring_key(&self.ceph_keyring_dir, &a.username))
                    .ok_or_else(|| {
                        HvError::Unsupported(format!(
                            "no cephx key for client.{}: libvirt keeps secret {} private and {}/ceph.client.{}.keyring does not hold it (set ceph_keyring_dir)",
                            a.username,
                            a.secret_uuid,
                            self.ceph_keyring_dir.display(),
                            a.username
                        ))
                    })?;
                Some((a.username.as_str(), key))
            }
        };
        f(&rbd::RbdImage {
            pool,
            image,
            hosts,
            auth,
        })
        .map(Some)
    }
}
