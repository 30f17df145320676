"""Typed exceptions: every error carries the gRPC status code and message.

- `RequestRefused` (and one subclass per common code): the server answered a
  call with an error status — nothing was started.
- `MigrationFailed` / `MigrationCancelled`: the migration ran and ended
  FAILED or CANCELLED; `code` is the code from its terminal event.
- `WaitTimeout`: `wait(timeout)` ran out; the migration goes on.
- `ControllerRequired`: a controller's call made on a node; nothing was sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Type

import grpc

if TYPE_CHECKING:
    from .types import Event


class VolmigError(Exception):
    """Base of every error raised by the package."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class ControllerRequired(VolmigError):
    """A controller's call (plan, set_pool_maintenance) made on a node endpoint; nothing
    was sent. `code` is UNIMPLEMENTED (what the node itself would answer)."""

    def __init__(self, call: str, endpoint: str) -> None:
        super().__init__(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{call}() needs a controller; {endpoint} is a node (connect to a controller endpoint)",
        )
        self.call = call


class RequestRefused(VolmigError):
    """The server refused the call (its status code and message)."""


class InvalidArgument(RequestRefused):
    """INVALID_ARGUMENT: a malformed name, id or value."""


class NotFound(RequestRefused):
    """NOT_FOUND: unknown domain, disk, pool or migration id."""


class AlreadyExists(RequestRefused):
    """ALREADY_EXISTS: disk already migrating, request id reused differently, volume exists."""


class FailedPrecondition(RequestRefused):
    """FAILED_PRECONDITION: the guest or disk cannot move now (or a rule rejects the pool)."""


class ResourceExhausted(RequestRefused):
    """RESOURCE_EXHAUSTED: no room in the pool, concurrency or watcher limit."""


class PermissionDenied(RequestRefused):
    """PERMISSION_DENIED: the caller's role does not allow the call."""


class Unauthenticated(RequestRefused):
    """UNAUTHENTICATED: no or unknown credentials."""


class Unavailable(RequestRefused):
    """UNAVAILABLE: no endpoint answered (or libvirtd is unreachable)."""


_BY_CODE: Dict[grpc.StatusCode, Type[RequestRefused]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def refused(code: grpc.StatusCode, message: str) -> RequestRefused:
    """The `RequestRefused` subclass for `code`."""
    return _BY_CODE.get(code, RequestRefused)(code, message)


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode with this number (UNKNOWN for numbers gRPC does not define)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


class MigrationFailed(VolmigError):
    """The migration ended FAILED; `phase` is where, `disk_state` where the disk is."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        event: "Event",
        phase: Optional[str] = None,
        disk_state: str = "",
    ) -> None:
        super().__init__(code, message)
        self.event = event
        self.migration_id = event.migration_id
        self.phase = phase
        self.disk_state = disk_state


class MigrationCancelled(MigrationFailed):
    """The migration ended CANCELLED (the guest stays on its source)."""


class WaitTimeout(VolmigError, TimeoutError):
    """`wait(timeout)` ran out before the migration ended; it goes on on the server."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, message)
