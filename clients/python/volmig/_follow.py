"""What a migration handle does, without I/O (shared by the sync and async handles).

A handle follows one migration's event stream. When the stream drops before a
terminal event (UNAVAILABLE, or it ends early), the handle re-attaches:
with WatchMigration once it knows the migration id, else by re-sending
MigrateVolume with the *same* request_id, which the server attaches to the
migration it already started. A request is never re-issued with a new id.
"""

from __future__ import annotations

import time
from typing import List, Optional, Tuple, Union

import grpc

from .errors import MigrationCancelled, MigrationFailed, refused
from .types import Event, Outcome, Phase, event_of, outcome_of
from .v1 import migration_pb2

Call = Tuple[str, Union[migration_pb2.MigrateVolumeRequest, migration_pb2.WatchMigrationRequest]]

#: Codes after which a stream is re-attached rather than failed.
DROPPED = (grpc.StatusCode.UNAVAILABLE,)


class Follow:
    def __init__(
        self,
        request: Optional[migration_pb2.MigrateVolumeRequest],
        migration_id: Optional[str],
        reattach_timeout: float,
    ) -> None:
        self.request = request
        self.migration_id = migration_id
        self.reattach_timeout = reattach_timeout
        self.events: List[Event] = []
        self.last: Optional[Event] = None
        self.reattachments = 0
        self._dropped_at: Optional[float] = None
        self._tries = 0

    def next_call(self) -> Call:
        """The RPC that (re)opens the stream."""
        if self.migration_id:
            return "WatchMigration", migration_pb2.WatchMigrationRequest(migration_id=self.migration_id)
        assert self.request is not None
        return "MigrateVolume", self.request

    @property
    def done(self) -> bool:
        return self.last is not None and self.last.terminal

    def on_event(self, raw: migration_pb2.MigrationEvent) -> Event:
        event = event_of(raw)
        if self._dropped_at is not None:
            self._dropped_at = None
            self._tries = 0
        self.migration_id = self.migration_id or event.migration_id
        self.events.append(event)
        self.last = event
        return event

    def on_drop(self, code: Optional[grpc.StatusCode], message: str) -> float:
        """A stream ended early: the delay before re-attaching; raises if it is time to give up."""
        now = time.monotonic()
        if self._dropped_at is None:
            self._dropped_at = now
        elif now - self._dropped_at > self.reattach_timeout:
            # Typed like any refusal: UNAVAILABLE is also what a node answers
            # while libvirtd is unreachable.
            raise refused(
                code or grpc.StatusCode.UNAVAILABLE,
                f"could not re-attach to migration {self.migration_id or '(request ' + self._request_id() + ')'} "
                f"within {self.reattach_timeout:.0f} s: {message}",
            )
        self.reattachments += 1  # each re-opening of the stream
        self._tries += 1
        return min(0.2 * 2.0 ** (self._tries - 1), 2.0)

    def _request_id(self) -> str:
        return self.request.request_id if self.request is not None else ""

    def outcome(self) -> Outcome:
        """The result of the terminal event, or the typed exception it stands for."""
        event = self.last
        assert event is not None and event.terminal
        if event.phase == Phase.COMPLETED:
            return outcome_of(event)
        error = event.error
        code = error.code if error else grpc.StatusCode.UNKNOWN
        message = error.message if error else event.message
        phase = error.phase.name if error else None
        disk_state = error.disk_state if error else ""
        cls = MigrationCancelled if event.phase == Phase.CANCELLED else MigrationFailed
        raise cls(code, message, event, phase, disk_state)
