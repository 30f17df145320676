"""volmig: a Python client for volmig nodes and controllers.

    import volmig

    with volmig.connect("unix:///run/volmig/node.sock") as client:
        handle = client.migrate("guest-1", "vda", to_pool="fast", bandwidth="200MiB")
        for event in handle:
            print(event.phase.name, event.progress)
        print(handle.wait().result.destination_source)

The async variant is `volmig.aio.connect(...)`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from . import aio
from ._bandwidth import Bandwidth, parse_bandwidth
from ._channel import Credentials, PathLike, endpoints_of
from .client import Client, MigrationHandle
from .errors import (
    AlreadyExists,
    ControllerRequired,
    FailedPrecondition,
    InvalidArgument,
    MigrationCancelled,
    MigrationFailed,
    NotFound,
    PermissionDenied,
    RequestRefused,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VolmigError,
    WaitTimeout,
)
from .types import (
    Disk,
    DomainDisks,
    Event,
    MaintenanceResult,
    Outcome,
    Phase,
    Plan,
    Pool,
    PoolMaintenance,
    Progress,
    Record,
    Result,
)

__all__ = [
    "AlreadyExists",
    "Bandwidth",
    "Client",
    "ControllerRequired",
    "Disk",
    "DomainDisks",
    "Event",
    "FailedPrecondition",
    "InvalidArgument",
    "MaintenanceResult",
    "MigrationCancelled",
    "MigrationFailed",
    "MigrationHandle",
    "NotFound",
    "Outcome",
    "PermissionDenied",
    "Phase",
    "Plan",
    "Pool",
    "PoolMaintenance",
    "Progress",
    "Record",
    "RequestRefused",
    "ResourceExhausted",
    "Result",
    "Unauthenticated",
    "Unavailable",
    "VolmigError",
    "WaitTimeout",
    "aio",
    "connect",
    "parse_bandwidth",
]


def connect(
    endpoint: Union[str, Sequence[str]],
    *,
    ca: Optional[PathLike] = None,
    cert: Optional[PathLike] = None,
    key: Optional[PathLike] = None,
    token: Optional[str] = None,
    token_file: Optional[PathLike] = None,
    service: Optional[str] = None,
    reattach_timeout: float = 120.0,
) -> Client:
    """A client of a node or controller(s).

    endpoint: "unix:///run/volmig/node.sock", "https://ctl1:7450", or a list of
    controller endpoints tried in order when one is UNAVAILABLE. ca/cert/key:
    PEM files (cert+key: mutual TLS). token / token_file: a bearer token (the
    file is re-read per call). service: "node" or "controller" (asked from the
    server when not given). Nothing connects until the first call.
    """
    creds = Credentials.load(ca, cert, key, token, token_file)
    return Client(endpoints_of(endpoint), creds, service, reattach_timeout)
