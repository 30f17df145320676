//! The Fleet gRPC service (drains): a shim over the controller's drain
//! domain (`crate::controller::drain`) that checks arguments, converts
//! ([`convert`]) and audits the calls that start or stop work.

use std::pin::Pin;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::audit::Audit;
use crate::api::auth::Caller;
use crate::controller::drain::DrainView;
use crate::controller::{self};
use crate::proto;
use crate::proto::fleet_server::Fleet;

pub mod convert;

/// A drain's events as the caller reads them.
pub type DrainStream = Pin<Box<dyn Stream<Item = Result<proto::DrainEvent, Status>> + Send>>;

/// The Fleet service.
#[derive(Clone)]
pub struct FleetService {
    controller: controller::Controller,
}

impl FleetService {
    /// The service over `controller`.
    pub fn new(controller: controller::Controller) -> FleetService {
        FleetService { controller }
    }
}

/// The drain's state now, then on every change, until it ends or the caller goes.
fn drain_stream(mut view: watch::Receiver<DrainView>) -> DrainStream {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let drain = convert::drain_to_proto(&view.borrow_and_update());
            let ended = convert::ended(&drain);
            let event = proto::DrainEvent { drain: Some(drain) };
            if tx.send(Ok(event)).await.is_err() || ended {
                return;
            }
            tokio::select! {
                changed = view.changed() => {
                    if changed.is_err() {
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "the controller stopped following this drain; follow it again with WatchDrain (`volmig drain watch ID`)",
                            )))
                            .await;
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn check_request(req: &proto::DrainRequest) -> Result<(), Status> {
    crate::migration::validate::pool_ref(&req.pool).map_err(crate::api::status::invalid)?;
    if !req.destination_pool.is_empty() {
        crate::migration::validate::pool_ref(&req.destination_pool)
            .map_err(crate::api::status::invalid)?;
    }
    for tag in &req.destination_tags {
        crate::migration::validate::object_name("destination_tags", tag)
            .map_err(crate::api::status::invalid)?;
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), Status> {
    crate::migration::validate::object_name("drain_id", id).map_err(crate::api::status::invalid)
}

#[tonic::async_trait]
impl Fleet for FleetService {
    type StartDrainStream = DrainStream;
    type WatchDrainStream = DrainStream;

    async fn plan_drain(
        &self,
        req: Request<proto::DrainRequest>,
    ) -> Result<Response<proto::DrainPlan>, Status> {
        let req = req.into_inner();
        check_request(&req)?;
        let plan = self
            .controller
            .plan_drain(&convert::spec_from_proto(&req))
            .await
            .map_err(crate::api::status::controller)?;
        Ok(Response::new(convert::plan_to_proto(&plan)))
    }

    async fn start_drain(
        &self,
        req: Request<proto::DrainRequest>,
    ) -> Result<Response<DrainStream>, Status> {
        let audit = Audit::start(&req, "Fleet/StartDrain").target(&[("pool", &req.get_ref().pool)]);
        audit.finish(self.start(req).await)
    }

    async fn watch_drain(
        &self,
        req: Request<proto::WatchDrainRequest>,
    ) -> Result<Response<DrainStream>, Status> {
        let id = req.into_inner().drain_id;
        check_id(&id)?;
        let view = self
            .controller
            .watch_drain(&id)
            .await
            .map_err(crate::api::status::controller)?;
        Ok(Response::new(drain_stream(view)))
    }

    async fn get_drain(
        &self,
        req: Request<proto::GetDrainRequest>,
    ) -> Result<Response<proto::Drain>, Status> {
        let id = req.into_inner().drain_id;
        check_id(&id)?;
        let view = self
            .controller
            .get_drain(&id)
            .await
            .map_err(crate::api::status::controller)?;
        Ok(Response::new(convert::drain_to_proto(&view)))
    }

    async fn list_drains(
        &self,
        _req: Request<proto::ListDrainsRequest>,
    ) -> Result<Response<proto::ListDrainsResponse>, Status> {
        let views = self
            .controller
            .list_drains()
            .await
            .map_err(crate::api::status::controller)?;
        Ok(Response::new(proto::ListDrainsResponse {
            drains: views.iter().map(convert::drain_to_proto).collect(),
        }))
    }

    async fn cancel_drain(
        &self,
        req: Request<proto::CancelDrainRequest>,
    ) -> Result<Response<proto::Drain>, Status> {
        let audit = Audit::start(&req, "Fleet/CancelDrain")
            .target(&[("drain_id", &req.get_ref().drain_id)]);
        audit.finish(self.cancel(req).await)
    }
}

/// The audited calls.
impl FleetService {
    async fn start(
        &self,
        req: Request<proto::DrainRequest>,
    ) -> Result<Response<DrainStream>, Status> {
        let actor = Caller::of(&req).map(Caller::audit_name);
        let req = req.into_inner();
        check_request(&req)?;
        let started = self
            .controller
            .start_drain(actor.as_deref(), convert::spec_from_proto(&req))
            .await
            .map_err(crate::api::status::controller)?;
        let view = self
            .controller
            .watch_drain(&started.job.id)
            .await
            .map_err(crate::api::status::controller)?;
        Ok(Response::new(drain_stream(view)))
    }

    async fn cancel(
        &self,
        req: Request<proto::CancelDrainRequest>,
    ) -> Result<Response<proto::Drain>, Status> {
        let actor = Caller::of(&req).map(Caller::audit_name);
        let id = req.into_inner().drain_id;
        check_id(&id)?;
        let view = self
            .controller
            .cancel_drain(actor.as_deref(), &id)
            .await
            .map_err(crate::api::status::controller)?;
        Ok(Response::new(convert::drain_to_proto(&view)))
    }
}
