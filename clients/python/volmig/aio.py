"""The asyncio client over grpc.aio: the same calls as `volmig.Client`, awaited.

    async with volmig.aio.connect("unix:///run/volmig/node.sock") as client:
        handle = await client.migrate("guest-1", "vda", to_pool="fast")
        async for event in handle:
            ...
        outcome = await handle.wait(timeout=600)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, List, Optional, Sequence, TypeVar, Union

import grpc
import grpc.aio

from . import _calls as calls
from ._bandwidth import Bandwidth
from ._channel import Credentials, Endpoint, PathLike, endpoints_of, open_aio_channel
from ._follow import DROPPED, Follow
from ._request import Disks, migrate_request
from ._service import CAPABILITIES, detect, response_type, service_path
from .errors import WaitTimeout, refused
from .types import DomainDisks, Event, MaintenanceResult, Outcome, Phase, Plan, Pool, Record
from .v1 import identity_pb2, migration_pb2

T = TypeVar("T")


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
) -> "AsyncClient":
    """Like `volmig.connect`; the client's calls are coroutines."""
    creds = Credentials.load(ca, cert, key, token, token_file)
    return AsyncClient(endpoints_of(endpoint), creds, service, reattach_timeout)


class AsyncClient:
    """`volmig.Client` for asyncio (one event loop; use `async with` or `await close()`)."""

    def __init__(
        self, endpoints: List[Endpoint], creds: Credentials, service: Optional[str], reattach_timeout: float
    ) -> None:
        self._endpoints = endpoints
        self._creds = creds
        self._channels: List[Optional[grpc.aio.Channel]] = [None] * len(endpoints)
        self._current = 0
        self._service = service
        self.reattach_timeout = reattach_timeout

    def __repr__(self) -> str:
        return f"volmig.aio.AsyncClient({[e.url for e in self._endpoints]!r}, service={self._service!r})"

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for i, ch in enumerate(self._channels):
            if ch is not None:
                await ch.close()
                self._channels[i] = None

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now."""
        return self._endpoints[self._current].url

    def _channel(self) -> grpc.aio.Channel:
        ch = self._channels[self._current]
        if ch is None:
            ch = open_aio_channel(self._endpoints[self._current], self._creds)
            self._channels[self._current] = ch
        return ch

    def _fail_over(self) -> None:
        self._current = (self._current + 1) % len(self._endpoints)

    async def _unary(self, path: str, request: Any, timeout: Optional[float] = 30.0) -> Any:
        last: Optional[grpc.aio.AioRpcError] = None
        for _ in self._endpoints:
            call: Any = self._channel().unary_unary(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type(path).FromString,
            )
            try:
                return await call(request, metadata=self._creds.metadata(), timeout=timeout)
            except grpc.aio.AioRpcError as e:
                last = e
                if e.code() not in DROPPED:
                    break
                self._fail_over()
        assert last is not None
        raise refused(last.code(), last.details() or "")

    def _stream(self, path: str, request: Any, timeout: Optional[float]) -> Any:
        call: Any = self._channel().unary_stream(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=migration_pb2.MigrationEvent.FromString,
        )
        return call(request, metadata=self._creds.metadata(), timeout=timeout)

    async def service(self) -> str:
        if self._service is None:
            caps = await self._unary(CAPABILITIES, identity_pb2.GetPluginCapabilitiesRequest())
            self._service = detect(caps)
        return self._service

    async def _path(self, method: str) -> str:
        return service_path(await self.service(), method)

    async def _do(self, call: "calls.Call[T]") -> T:
        return call.convert(await self._unary(call.path, call.request))

    async def pools(self) -> List[Pool]:
        return await self._do(calls.pools(await self.service()))

    async def disks(self, domain: str) -> DomainDisks:
        return await self._do(calls.disks(await self.service(), domain))

    async def plan(self, domain: str, disks: Disks = None, **kwargs: Any) -> Plan:
        return await self._do(calls.plan(await self.service(), self.endpoint, domain, disks, kwargs))

    async def set_pool_maintenance(self, pool: str, on: bool, reason: Optional[str] = None) -> MaintenanceResult:
        """See `volmig.Client.set_pool_maintenance`."""
        service = await self.service()
        return await self._do(calls.set_pool_maintenance(service, self.endpoint, pool, on, reason))

    async def status(self, migration_id: str) -> Record:
        return await self._do(calls.status(await self.service(), migration_id))

    async def list(
        self, domain: str = "", node_id: str = "", active_only: bool = False, phases: Sequence[Phase] = ()
    ) -> List[Record]:
        return await self._do(calls.list_(await self.service(), domain, node_id, active_only, phases))

    async def cancel(self, migration_id: str) -> Event:
        return await self._do(calls.cancel(await self.service(), migration_id))

    async def set_bandwidth(self, migration_id: str, bandwidth: Bandwidth) -> None:
        await self._do(calls.set_bandwidth(await self.service(), migration_id, bandwidth))

    async def migrate(self, domain: str, disks: Disks = None, **kwargs: Any) -> "AsyncMigrationHandle":
        """See `volmig.Client.migrate`."""
        handle = AsyncMigrationHandle(self, migrate_request(domain, disks, **kwargs), None)
        await handle._start()
        return handle

    async def watch(self, migration_id: str) -> "AsyncMigrationHandle":
        handle = AsyncMigrationHandle(self, None, migration_id)
        await handle._start()
        return handle


class AsyncMigrationHandle:
    """`volmig.MigrationHandle` for asyncio: `async for event in handle`, `await handle.wait()`."""

    def __init__(
        self,
        client: AsyncClient,
        request: Optional[migration_pb2.MigrateVolumeRequest],
        migration_id: Optional[str],
    ) -> None:
        self._client = client
        self._follow = Follow(request, migration_id, client.reattach_timeout)
        self._call: Any = None
        self._pending: List[Event] = []

    @property
    def migration_id(self) -> str:
        return self._follow.migration_id or ""

    @property
    def phase(self) -> Optional[Phase]:
        return self._follow.last.phase if self._follow.last else None

    @property
    def last_event(self) -> Optional[Event]:
        return self._follow.last

    @property
    def reattachments(self) -> int:
        return self._follow.reattachments

    async def _start(self) -> None:
        event = await self._next(None)
        if event is not None:
            self._pending.append(event)

    async def _next(self, deadline: Optional[float]) -> Optional[Event]:
        while not self._follow.done:
            if self._call is None:
                method, req = self._follow.next_call()
                timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
                self._call = self._client._stream(await self._client._path(method), req, timeout)
            try:
                raw = await self._call.read()
            except grpc.aio.AioRpcError as e:
                self._call = None
                code = e.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    raise WaitTimeout(f"migration {self.migration_id} has not ended") from None
                if code not in DROPPED:
                    raise refused(code, e.details() or "") from None
                self._client._fail_over()
                await asyncio.sleep(self._follow.on_drop(code, e.details() or ""))
                continue
            if raw is grpc.aio.EOF:
                self._call = None
                await asyncio.sleep(self._follow.on_drop(None, "the stream ended before the migration did"))
                continue
            return self._follow.on_event(raw)
        return None

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            if self._pending:
                yield self._pending.pop(0)
                continue
            event = await self._next(None)
            if event is None:
                return
            yield event

    async def wait(self, timeout: Optional[float] = None) -> Outcome:
        """See `volmig.MigrationHandle.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._pending.clear()
        if self._call is not None and deadline is not None:
            self._call.cancel()
            self._call = None
        while await self._next(deadline) is not None:
            pass
        return self._follow.outcome()

    async def cancel(self) -> Event:
        return await self._client.cancel(self.migration_id)

    async def set_bandwidth(self, bandwidth: Union[int, str]) -> None:
        await self._client.set_bandwidth(self.migration_id, bandwidth)

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
