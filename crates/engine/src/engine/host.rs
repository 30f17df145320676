//! What the engine tells of the host: identity, pools, users of an image.

use super::{unavailable_or, Engine};
use crate::error::Error;
use crate::hypervisor::{HostInfo, PoolSpec, VolumeUser};
use crate::validate;

impl Engine {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// The concurrency limit.
    pub fn max_concurrent(&self) -> usize {
        self.inner.config.max_concurrent
    }

    /// Host versions.
    pub async fn host_info(&self) -> Result<HostInfo, Error> {
        self.inner
            .hv(|hv| hv.host_info())
            .await
            .map_err(unavailable_or("reading host information"))
    }

    /// Storage pools.
    pub async fn pools(&self) -> Result<Vec<PoolSpec>, Error> {
        self.inner
            .hv(|hv| hv.pools())
            .await
            .map_err(unavailable_or("listing storage pools"))
    }

    /// What on this host uses the image `source` (a path or `pool/image`), one
    /// line each, leaving out the disks of `exclude` (a domain name or UUID).
    pub async fn volume_users(
        &self,
        source: &str,
        exclude: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        validate::disk(source)?;
        if let Some(domain) = exclude {
            validate::object_name("exclude_domain", domain)?;
        }
        if !source.contains('/') {
            return Err(Error::InvalidArgument {
                field: "source",
                reason: format!("'{source}' is neither a path nor pool/image"),
            });
        }
        let path = source.to_string();
        let users = self
            .inner
            .hv(move |hv| hv.volume_users(&path))
            .await
            .map_err(unavailable_or("looking for users of a volume"))?;
        Ok(users
            .iter()
            .filter(|u| match (u, exclude) {
                (VolumeUser::Domain { domain, uuid, .. }, Some(x)) => domain != x && uuid != x,
                _ => true,
            })
            .map(ToString::to_string)
            .collect())
    }

    /// Whether libvirtd answers.
    pub async fn probe(&self) -> Result<(), Error> {
        self.host_info().await.map(|_| ())
    }
}
