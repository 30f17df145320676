"""The synchronous client: `volmig.connect(...)` returns a `Client`."""

from __future__ import annotations

import time
from typing import Any, Iterator, List, Optional, Sequence, TypeVar, Union

import grpc

from . import _calls as calls
from ._bandwidth import Bandwidth
from ._channel import Credentials, Endpoint, open_channel
from ._follow import DROPPED, Follow
from ._request import Disks, migrate_request
from ._service import CAPABILITIES, Unary, detect, response_type, service_path
from .errors import WaitTimeout, refused
from .types import DomainDisks, Event, MaintenanceResult, Outcome, Phase, Plan, Pool, Record
from .v1 import identity_pb2, migration_pb2

T = TypeVar("T")


class Client:
    """A connection to a volmig node or to one or several controllers (failover on
    UNAVAILABLE, in the order given). Use as a context manager, or call `close()`."""

    def __init__(
        self,
        endpoints: List[Endpoint],
        creds: Credentials,
        service: Optional[str] = None,
        reattach_timeout: float = 120.0,
    ) -> None:
        self._endpoints = endpoints
        self._creds = creds
        self._channels: List[Optional[grpc.Channel]] = [None] * len(endpoints)
        self._current = 0
        self._service = service
        self.reattach_timeout = reattach_timeout

    def __repr__(self) -> str:
        return f"volmig.Client({[e.url for e in self._endpoints]!r}, service={self._service!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for i, ch in enumerate(self._channels):
            if ch is not None:
                ch.close()
                self._channels[i] = None

    # -- transport -------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now."""
        return self._endpoints[self._current].url

    def _channel(self) -> grpc.Channel:
        ch = self._channels[self._current]
        if ch is None:
            ch = open_channel(self._endpoints[self._current], self._creds)
            self._channels[self._current] = ch
        return ch

    def _fail_over(self) -> None:
        self._current = (self._current + 1) % len(self._endpoints)

    def _unary(self, path: str, request: Any, timeout: Optional[float] = 30.0) -> Any:
        last: Optional[grpc.RpcError] = None
        for _ in self._endpoints:
            call: Unary = self._channel().unary_unary(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type(path).FromString,
            )
            try:
                return call(request, metadata=self._creds.metadata(), timeout=timeout)
            except grpc.RpcError as e:
                last = e
                if e.code() not in DROPPED:
                    break
                self._fail_over()
        assert last is not None
        raise refused(last.code(), last.details() or "")

    def _stream(self, path: str, request: Any, timeout: Optional[float]) -> Any:
        call = self._channel().unary_stream(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=migration_pb2.MigrationEvent.FromString,
        )
        return call(request, metadata=self._creds.metadata(), timeout=timeout)

    @property
    def service(self) -> str:
        """"node" or "controller": what the endpoint serves (asked once, via Identity)."""
        if self._service is None:
            caps = self._unary(CAPABILITIES, identity_pb2.GetPluginCapabilitiesRequest())
            self._service = detect(caps)
        return self._service

    def _path(self, method: str) -> str:
        return service_path(self.service, method)

    # -- calls -------------------------------------------------------------------

    def _do(self, call: "calls.Call[T]") -> T:
        return call.convert(self._unary(call.path, call.request))

    def pools(self) -> List[Pool]:
        """The pools of the node, or of every node the controller knows."""
        return self._do(calls.pools(self.service))

    def disks(self, domain: str) -> DomainDisks:
        """A guest's disks (a node's call; ask a controller with `plan`)."""
        return self._do(calls.disks(self.service, domain))

    def plan(self, domain: str, disks: Disks = None, **kwargs: Any) -> Plan:
        """Where a controller would place the disks (same arguments as `migrate`)."""
        return self._do(calls.plan(self.service, self.endpoint, domain, disks, kwargs))

    def set_pool_maintenance(self, pool: str, on: bool, reason: Optional[str] = None) -> MaintenanceResult:
        """Puts a pool in maintenance (on=True) or takes it out (a controller's call, role
        operator). pool: a storage id, or a pool name only one storage id carries. While on,
        placement never chooses the pool and a migration naming it is refused with
        `FailedPrecondition`; nothing already on it or copying to it is stopped.

        Raises `ControllerRequired` on a node endpoint; `NotFound` (no up node reports the
        pool), `InvalidArgument` (a name several pools carry), `PermissionDenied`."""
        return self._do(calls.set_pool_maintenance(self.service, self.endpoint, pool, on, reason))

    def status(self, migration_id: str) -> Record:
        """A migration's request and latest state."""
        return self._do(calls.status(self.service, migration_id))

    def list(
        self, domain: str = "", node_id: str = "", active_only: bool = False, phases: Sequence[Phase] = ()
    ) -> List[Record]:
        """Migrations, filtered."""
        return self._do(calls.list_(self.service, domain, node_id, active_only, phases))

    def cancel(self, migration_id: str) -> Event:
        """Cancels a migration (refused with FAILED_PRECONDITION once the pivot began)."""
        return self._do(calls.cancel(self.service, migration_id))

    def set_bandwidth(self, migration_id: str, bandwidth: Bandwidth) -> None:
        """Changes a copying migration's limit ("200MiB", "50MB", bytes/s; 0: unlimited)."""
        self._do(calls.set_bandwidth(self.service, migration_id, bandwidth))

    def migrate(self, domain: str, disks: Disks = None, **kwargs: Any) -> "MigrationHandle":
        """Starts a migration and returns its handle once the server accepted it.

        disks: "vda", ["vda", "vdb"] or {"vda": "pool-a", "vdb": "pool-b"}; or all_disks=True.
        to_pool=/to_tags=: the destination (a controller places by tags when no pool is named),
        to_volume=, to_format="raw"|"qcow2", bandwidth="200MiB", request_id= (a fresh one if
        not given; retries re-use it), and the MigrationOptions by name: copy_mode,
        chain_policy, source_policy ("keep"/"delete"), verify, timeout_seconds,
        on_no_convergence, convergence_window_seconds, max_parallel_copies,
        source_users_elsewhere.

        Raises a `RequestRefused` subclass (with the gRPC code) if the server refuses.
        """
        handle = MigrationHandle(self, migrate_request(domain, disks, **kwargs), None)
        handle._start()
        return handle

    def watch(self, migration_id: str) -> "MigrationHandle":
        """A handle on a running (or finished) migration, e.g. after a restart of the caller."""
        handle = MigrationHandle(self, None, migration_id)
        handle._start()
        return handle


class MigrationHandle:
    """One migration: iterate it for `Event`s, `wait()` for its `Outcome`."""

    def __init__(
        self,
        client: Client,
        request: Optional[migration_pb2.MigrateVolumeRequest],
        migration_id: Optional[str],
    ) -> None:
        self._client = client
        self._follow = Follow(request, migration_id, client.reattach_timeout)
        self._call: Any = None
        self._pending: List[Event] = []

    def __repr__(self) -> str:
        return f"volmig.MigrationHandle({self.migration_id!r}, last={self.phase!r})"

    @property
    def migration_id(self) -> str:
        return self._follow.migration_id or ""

    @property
    def request_id(self) -> str:
        return self._follow.request.request_id if self._follow.request is not None else ""

    @property
    def phase(self) -> Optional[Phase]:
        return self._follow.last.phase if self._follow.last else None

    @property
    def last_event(self) -> Optional[Event]:
        return self._follow.last

    @property
    def reattachments(self) -> int:
        """How often the handle re-attached after a dropped stream."""
        return self._follow.reattachments

    def _start(self) -> None:
        event = self._next(None)
        if event is not None:
            self._pending.append(event)

    def _open(self, timeout: Optional[float]) -> None:
        method, req = self._follow.next_call()
        self._call = self._client._stream(self._client._path(method), req, timeout)

    def _next(self, deadline: Optional[float]) -> Optional[Event]:
        """The next event, re-attaching across drops; None after the terminal event."""
        while not self._follow.done:
            if self._call is None:
                self._open(None if deadline is None else max(deadline - time.monotonic(), 0.001))
            try:
                return self._follow.on_event(next(self._call))
            except StopIteration:
                self._call = None
                time.sleep(self._follow.on_drop(None, "the stream ended before the migration did"))
            except grpc.RpcError as e:
                self._call = None
                code = e.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    raise WaitTimeout(f"migration {self.migration_id} still {self.phase.name if self.phase else 'starting'}") from None
                if code not in DROPPED:
                    raise refused(code, e.details() or "") from None
                self._client._fail_over()
                time.sleep(self._follow.on_drop(code, e.details() or ""))
        return None

    def __iter__(self) -> Iterator[Event]:
        while True:
            if self._pending:
                yield self._pending.pop(0)
                continue
            event = self._next(None)
            if event is None:
                return
            yield event

    def wait(self, timeout: Optional[float] = None) -> Outcome:
        """Follows the migration to its end: its `Outcome`, or `MigrationFailed` /
        `MigrationCancelled` (code, message, phase, disk_state), or `WaitTimeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._pending.clear()
        if self._call is not None and deadline is not None:
            self._call.cancel()
            self._call = None
        while self._next(deadline) is not None:
            pass
        return self._follow.outcome()

    def cancel(self) -> Event:
        """Asks the server to cancel the migration; its state at that moment."""
        return self._client.cancel(self.migration_id)

    def set_bandwidth(self, bandwidth: Union[int, str]) -> None:
        self._client.set_bandwidth(self.migration_id, bandwidth)

    def close(self) -> None:
        """Stops following (the migration goes on on the server)."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
