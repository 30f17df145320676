"""Which service an endpoint serves, and the response type of each unary RPC."""

from __future__ import annotations

from typing import Any, Dict

from .v1 import controller_pb2, identity_pb2, migration_pb2, node_pb2

NODE = "node"
CONTROLLER = "controller"

CAPABILITIES = "/volmig.v1.Identity/GetPluginCapabilities"

Unary = Any  # grpc's multi-callables are untyped at this level

_RESPONSES: Dict[str, Any] = {
    "GetPluginCapabilities": identity_pb2.GetPluginCapabilitiesResponse,
    "ListDisks": node_pb2.ListDisksResponse,
    "PlanMigration": controller_pb2.PlanMigrationResponse,
    "GetMigration": migration_pb2.MigrationRecord,
    "ListMigrations": migration_pb2.ListMigrationsResponse,
    "CancelMigration": migration_pb2.CancelMigrationResponse,
    "SetBandwidth": migration_pb2.SetBandwidthResponse,
    "SetPoolMaintenance": controller_pb2.SetPoolMaintenanceResponse,
}


def detect(caps: identity_pb2.GetPluginCapabilitiesResponse) -> str:
    """"controller" if the server offers the controller service, else "node"."""
    controller = identity_pb2.PLUGIN_CAPABILITY_CONTROLLER_SERVICE
    return CONTROLLER if controller in caps.capabilities else NODE


def service_path(service: str, method: str) -> str:
    return f"/volmig.v1.{'Controller' if service == CONTROLLER else 'Node'}/{method}"


def response_type(path: str) -> Any:
    service, method = path.rsplit("/", 2)[-2:]
    if method == "ListPools":
        return (
            controller_pb2.ListClusterPoolsResponse
            if service.endswith("Controller")
            else node_pb2.ListPoolsResponse
        )
    return _RESPONSES[method]
