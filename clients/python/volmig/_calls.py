"""Each unary call once: its RPC, request and how its answer converts, so the
sync and async clients only differ in how they send it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, List, Optional, Sequence, TypeVar

import grpc

from ._bandwidth import Bandwidth, parse_bandwidth
from ._request import Disks, migrate_request
from ._service import CONTROLLER, NODE, service_path
from .errors import ControllerRequired, VolmigError
from .types import (
    DomainDisks,
    Event,
    MaintenanceResult,
    Phase,
    Plan,
    Pool,
    Record,
    cluster_pool_of,
    domain_disks_of,
    event_of,
    maintenance_result_of,
    plan_of,
    pool_of,
    record_of,
    records_of,
)
from .v1 import controller_pb2, migration_pb2, node_pb2

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    path: str
    request: Any
    convert: Callable[[Any], T]


def pools(service: str) -> Call[List[Pool]]:
    if service == CONTROLLER:
        return Call(
            service_path(service, "ListPools"),
            controller_pb2.ListClusterPoolsRequest(),
            lambda r: [cluster_pool_of(p) for p in r.pools],
        )
    return Call(service_path(service, "ListPools"), node_pb2.ListPoolsRequest(), lambda r: [pool_of(p) for p in r.pools])


def disks(service: str, domain: str) -> Call[DomainDisks]:
    if service != NODE:
        raise VolmigError(grpc.StatusCode.UNIMPLEMENTED, "disks() is a node call; ask a controller with plan()")
    return Call(service_path(service, "ListDisks"), node_pb2.ListDisksRequest(domain=domain), domain_disks_of)


def plan(service: str, endpoint: str, domain: str, disks: Disks, kwargs: Any) -> Call[Plan]:
    if service != CONTROLLER:
        raise ControllerRequired("plan", endpoint)
    return Call(service_path(service, "PlanMigration"), migrate_request(domain, disks, **kwargs), plan_of)


def status(service: str, migration_id: str) -> Call[Record]:
    req = migration_pb2.GetMigrationRequest(migration_id=migration_id)
    return Call(service_path(service, "GetMigration"), req, record_of)


def list_(service: str, domain: str, node_id: str, active_only: bool, phases: Sequence[Phase]) -> Call[List[Record]]:
    req = migration_pb2.ListMigrationsRequest(domain=domain, node_id=node_id, active_only=active_only)
    numbers: Any = req.phases
    numbers.extend(int(p) for p in phases)
    return Call(service_path(service, "ListMigrations"), req, lambda r: records_of(r.migrations))


def cancel(service: str, migration_id: str) -> Call[Event]:
    req = migration_pb2.CancelMigrationRequest(migration_id=migration_id)
    return Call(service_path(service, "CancelMigration"), req, lambda r: event_of(r.latest))


def set_bandwidth(service: str, migration_id: str, bandwidth: Bandwidth) -> Call[None]:
    req = migration_pb2.SetBandwidthRequest(migration_id=migration_id, bytes_per_sec=parse_bandwidth(bandwidth))
    return Call(service_path(service, "SetBandwidth"), req, lambda _: None)


def set_pool_maintenance(
    service: str, endpoint: str, pool: str, on: bool, reason: Optional[str]
) -> Call[MaintenanceResult]:
    if service != CONTROLLER:
        raise ControllerRequired("set_pool_maintenance", endpoint)
    if not isinstance(on, bool):
        raise TypeError(f"on must be True or False, not {on!r}")
    req = controller_pb2.SetPoolMaintenanceRequest(pool=pool, maintenance=on, reason=reason or "")
    return Call(service_path(service, "SetPoolMaintenance"), req, maintenance_result_of)
