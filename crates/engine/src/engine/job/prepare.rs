//! PREPARING_DESTINATION: the backing layers and the destination volume.

use super::ctx::Ctx;
use crate::chain;
use crate::error::Error;
use crate::hypervisor::{BackingLayer, DiskKind, DiskSource, HvError, ImageFormat, NewVolume};
use crate::journal::{Destination, Plan, Stage};
use crate::model::Phase;

/// SHALLOW: makes every read-only layer of the chain present in the
/// destination pool, bottom first: a layer the pool holds already (proven in
/// VALIDATING) is used as it is; any other is created, journaled, and filled
/// with an exact copy of the source layer linked to the destination's copy of
/// the layer below. Returns the destination chain, nearest first, for the
/// top to be created over (empty when the chain is flattened).
pub(super) async fn prepare_layers(ctx: &mut Ctx<'_>) -> Result<Vec<BackingLayer>, Error> {
    let plan = ctx.plan();
    if plan.chain.is_empty() {
        return Ok(Vec::new());
    }
    let to_copy = plan.chain.iter().filter(|l| l.reused.is_none()).count();
    ctx.set_phase(
        Phase::PreparingDestination,
        format!(
            "making the {} backing layer(s) present in pool {}: {} reused, {} to copy ({} bytes)",
            plan.chain.len(),
            plan.dest_pool,
            plan.chain.len() - to_copy,
            to_copy,
            chain::layers_to_copy_bytes(&plan.chain)
        ),
    )
    .await?;
    let mut below: Option<(String, ImageFormat)> = None;
    let mut chain = Vec::new();
    for layer in &plan.chain {
        ctx.checkpoint().await?;
        let path = match &layer.reused {
            Some(volume) => volume.path.clone(),
            None => {
                // Journaled before the call, as for the top (see `prepare`).
                let name = layer.dest_volume.clone();
                ctx.publish(|r| r.creating_layer = Some(name)).await?;
                let new = NewVolume {
                    name: layer.dest_volume.clone(),
                    capacity: layer.capacity,
                    format: layer.format,
                    backing: below.clone(),
                };
                let pool = plan.dest_pool.clone();
                let created = ctx.hv(move |hv| hv.create_volume(&pool, &new)).await;
                let volume = match created {
                    Ok(v) => v,
                    Err(e) => {
                        if !matches!(e, HvError::Unreachable { .. }) {
                            ctx.note(|r| r.creating_layer = None);
                        }
                        return Err(layer_error(&plan, &layer.dest_volume, e));
                    }
                };
                let identity = volume.identity();
                let message = format!(
                    "copying backing layer {} ({} bytes) to {}",
                    layer.source, layer.allocation, volume.path
                );
                ctx.publish(|r| {
                    r.creating_layer = None;
                    r.created_layers.push(identity.clone());
                    r.latest.message = message;
                })
                .await?;
                let (source, back) = (layer.source.clone(), below.clone());
                ctx.hv_retry("copying a backing layer", move |hv| {
                    hv.copy_layer(
                        &source,
                        &identity,
                        back.as_ref().map(|(p, f)| (p.as_str(), *f)),
                    )
                })
                .await?;
                volume.path
            }
        };
        below = Some((path.clone(), layer.format));
        chain.push(BackingLayer {
            source: DiskSource::File { path },
            format: Some(layer.format.as_str().to_string()),
        });
    }
    chain.reverse();
    Ok(chain)
}

fn layer_error(plan: &Plan, name: &str, e: HvError) -> Error {
    match e {
        HvError::NoSpace(m) => Error::Exhausted(format!(
            "pool '{}' cannot hold backing layer {name}: {m}",
            plan.dest_pool
        )),
        HvError::VolumeExists(_) => Error::DestinationExists {
            pool: plan.dest_pool.clone(),
            volume: name.to_string(),
        },
        other => Error::hv(format!(
            "creating backing layer {name} in pool '{}'",
            plan.dest_pool
        ))(other),
    }
}

pub(super) async fn prepare(
    ctx: &mut Ctx<'_>,
    backing: Vec<BackingLayer>,
) -> Result<Destination, Error> {
    let plan = ctx.plan();
    ctx.set_phase(
        Phase::PreparingDestination,
        format!(
            "creating volume {} ({}, {} bytes) in pool {}",
            plan.dest_volume, plan.dest_format, plan.capacity, plan.dest_pool
        ),
    )
    .await?;
    let name = plan.dest_pool.clone();
    let pool = ctx
        .hv_retry("reading the destination pool", move |hv| hv.pool(&name))
        .await?;
    // Journaled before the call: a node that dies inside it cannot know whether
    // the volume was made, and must not delete a volume of that name later.
    ctx.publish(|r| r.stage = Stage::Creating).await?;
    let new = NewVolume {
        name: plan.dest_volume.clone(),
        capacity: plan.capacity,
        format: plan.dest_format,
        backing: backing
            .first()
            .map(|l| (l.source.display_name(), ImageFormat::Qcow2)),
    };
    let dest_pool = plan.dest_pool.clone();
    let created = ctx.hv(move |hv| hv.create_volume(&dest_pool, &new)).await;
    let volume = match created {
        Ok(volume) => volume,
        Err(e) => {
            if !matches!(e, HvError::Unreachable { .. }) {
                // libvirt refused the create: nothing exists to roll back.
                ctx.note(|r| r.stage = Stage::Planned);
            }
            return Err(create_error(&plan, e));
        }
    };
    ctx.inner
        .rename_reservation(ctx.job, &plan.dest_pool, &plan.dest_volume, &volume.name);
    let identity = volume.identity();
    ctx.publish(|r| {
        r.plan.dest_volume = identity.name.clone();
        r.stage = Stage::Created(identity.clone());
    })
    .await?;
    if volume.capacity < plan.capacity {
        return Err(Error::Exhausted(format!(
            "pool '{}' created volume {} with {} bytes, less than the disk's {} bytes",
            plan.dest_pool, volume.name, volume.capacity, plan.capacity
        )));
    }
    // QEMU's mirror needs the destination to have exactly the source's virtual size.
    // Pools round sizes up (partitions, extents, KiB for qcow2 files): a storage
    // slice hides the excess of a block volume; elsewhere the copy cannot work.
    let exact = volume.capacity == plan.capacity;
    let inexact = || {
        Error::Precondition(format!(
            "pool '{}' made volume {} {} bytes for a {}-byte disk and QEMU's mirror needs the exact size; choose a block pool or a raw destination whose size the pool does not round",
            plan.dest_pool, volume.name, volume.capacity, plan.capacity
        ))
    };
    let disk = match pool.disk_kind() {
        Some(DiskKind::File) if exact => DiskSource::File {
            path: volume.path.clone(),
        },
        Some(DiskKind::Block) if plan.dest_format == ImageFormat::Raw => DiskSource::Block {
            path: volume.path.clone(),
            slice_size: (!exact).then_some(plan.capacity),
        },
        Some(DiskKind::Network) if exact => DiskSource::Rbd {
            pool: pool.source_name.clone(),
            image: volume.name.clone(),
            hosts: pool.source_hosts.clone(),
            auth: pool.auth.clone(),
        },
        Some(_) => return Err(inexact()),
        None => {
            return Err(Error::Precondition(format!(
                "pool '{}' has type '{}', which cannot hold a live disk",
                pool.name, pool.pool_type
            )))
        }
    };
    let message = format!("created {} in pool {}", disk.display_name(), plan.dest_pool);
    ctx.publish(|r| r.latest.message = message).await?;
    Ok(Destination {
        volume: identity,
        disk,
        backing,
    })
}

fn create_error(plan: &Plan, e: HvError) -> Error {
    match e {
        HvError::NoSpace(m) => Error::Exhausted(format!(
            "pool '{}' cannot hold {} bytes: {m}",
            plan.dest_pool, plan.capacity
        )),
        HvError::VolumeExists(_) => Error::DestinationExists {
            pool: plan.dest_pool.clone(),
            volume: plan.dest_volume.clone(),
        },
        HvError::Unreachable { uri, message } => Error::Unavailable(format!(
            "libvirt at {uri} went away while creating volume {} in pool '{}' ({message}); whether it was created is unknown",
            plan.dest_volume, plan.dest_pool
        )),
        other => Error::hv(format!(
            "creating the destination volume in pool '{}'",
            plan.dest_pool
        ))(other),
    }
}
