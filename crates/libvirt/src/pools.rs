//! Storage pools: their state, numbers and storage id as a `PoolSpec`, and refreshes.

use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::sys;
use volmig_engine::hypervisor::{PoolRunState, PoolSpec};

use crate::connection::{bad_xml, CallError};
use crate::pool_xml;
use crate::storage_id::{self, HostFacts};

fn pool_state(raw: u32) -> PoolRunState {
    match raw {
        sys::VIR_STORAGE_POOL_BUILDING => PoolRunState::Building,
        sys::VIR_STORAGE_POOL_RUNNING => PoolRunState::Running,
        sys::VIR_STORAGE_POOL_DEGRADED => PoolRunState::Degraded,
        sys::VIR_STORAGE_POOL_INACCESSIBLE => PoolRunState::Inaccessible,
        _ => PoolRunState::Inactive,
    }
}

pub(crate) fn pool_spec(pool: &StoragePool, host: HostFacts<'_>) -> Result<PoolSpec, CallError> {
    let info = pool.info()?;
    let provisioned = if pool.is_active()? {
        pool.list_all_volumes(0)?
            .iter()
            .filter_map(|v| v.info().ok())
            .map(|i| i.capacity)
            .sum()
    } else {
        0
    };
    let xml = pool_xml::parse_pool(&pool.xml_desc(0)?).map_err(bad_xml)?;
    let name = pool.name()?;
    let identity = storage_id::identify(&name, &xml, host);
    Ok(PoolSpec {
        name,
        uuid: pool.uuid_string()?,
        pool_type: xml.pool_type,
        state: pool_state(info.state),
        capacity: info.capacity,
        allocation: info.allocation,
        available: info.available,
        provisioned,
        target_path: xml.target_path,
        source_hosts: xml.hosts,
        source_dir: xml.source_dir,
        source_devices: xml.devices,
        source_name: xml.source_name,
        auth: xml.auth,
        storage_id: identity.id,
        shared: identity.shared,
    })
}

pub(crate) fn refresh_active_pools(conn: &Connect) -> Result<(), CallError> {
    for pool in conn.list_all_storage_pools(sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)? {
        // A pool that fails to refresh (e.g. an unreachable NFS server) must not
        // hide volumes of the others.
        let _ = pool.refresh(0);
    }
    Ok(())
}
