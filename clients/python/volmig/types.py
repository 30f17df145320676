"""Plain typed views of the API's messages (frozen dataclasses and enums).

Converted from the generated protobuf classes in one place, so callers never
handle raw protobuf messages (those stay reachable as `volmig.v1.*_pb2`).
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import grpc

from .errors import status_code
from .v1 import controller_pb2, migration_pb2, node_pb2


class Phase(enum.IntEnum):
    """A migration's phase (volmig.v1.Phase)."""

    UNSPECIFIED = 0
    ACCEPTED = 1
    VALIDATING = 2
    PREPARING_DESTINATION = 3
    COPYING = 4
    SYNCHRONIZED = 5
    PIVOTING = 6
    VERIFYING = 7
    CLEANING_UP = 8
    COMPLETED = 9
    FAILED = 10
    CANCELLED = 11

    @property
    def terminal(self) -> bool:
        return self in (Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED)

    @classmethod
    def of(cls, number: int) -> "Phase":
        try:
            return cls(number)
        except ValueError:
            return cls.UNSPECIFIED


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    bytes_total: int
    rate_bytes_per_sec: int
    eta_seconds: int

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 0.0


@dataclass(frozen=True)
class Result:
    """Where a disk is after a completed migration."""

    destination_source: str
    destination_pool: str
    destination_volume: str
    destination_format: str
    source_pool: str
    source_volume: str
    previous_source: str
    source_deleted: bool
    source_kept_reason: str


@dataclass(frozen=True)
class Error:
    """The error of a FAILED or CANCELLED migration."""

    code: grpc.StatusCode
    message: str
    phase: Phase
    disk_state: str


@dataclass(frozen=True)
class DiskStatus:
    disk: str
    migration_id: str
    phase: Phase
    progress: Optional[Progress]
    message: str
    result: Optional[Result]
    error: Optional[Error]


@dataclass(frozen=True)
class Event:
    """One MigrationEvent: the state of a migration at `timestamp_unix_ms`."""

    migration_id: str
    phase: Phase
    progress: Optional[Progress]
    message: str
    result: Optional[Result]
    error: Optional[Error]
    node_id: str
    domain: str
    disk: str
    disks: Tuple[DiskStatus, ...]
    skipped: Tuple[Tuple[str, str], ...]
    timestamp_unix_ms: int

    @property
    def terminal(self) -> bool:
        return self.phase.terminal


@dataclass(frozen=True)
class Outcome:
    """A completed migration: each moved disk's `Result`, by target (e.g. "vda")."""

    migration_id: str
    node_id: str
    domain: str
    results: Dict[str, Result]
    skipped: Tuple[Tuple[str, str], ...] = ()

    @property
    def result(self) -> Result:
        """The result of a single-disk migration."""
        if len(self.results) != 1:
            raise ValueError(f"{len(self.results)} disks moved; use .results")
        return next(iter(self.results.values()))


@dataclass(frozen=True)
class PoolMaintenance:
    """A pool's maintenance flag as last set (on a controller): while `on`, placement
    never chooses the pool and a migration naming it is refused (FAILED_PRECONDITION).
    A flag turned off stays visible (who turned it off, when)."""

    on: bool
    actor: str
    since: datetime.datetime
    """When it was last set (UTC)."""
    reason: str

    @property
    def since_unix_ms(self) -> int:
        return round(self.since.timestamp() * 1000)


@dataclass(frozen=True)
class MaintenanceResult:
    """What `set_pool_maintenance` set: the pool's storage id, its name, the flag now."""

    storage_id: str
    pool: str
    maintenance: PoolMaintenance


@dataclass(frozen=True)
class Pool:
    """A storage pool; `storage_id`, `node_ids`, `tags`, `in_flight_migrations` and
    `maintenance` (None if never set) come from a controller (a node reports one
    host's pools)."""

    name: str
    type: str
    state: str
    capacity_bytes: int
    allocation_bytes: int
    available_bytes: int
    storage_id: str
    shared: bool
    node_ids: Tuple[str, ...] = ()
    tags: Tuple[str, ...] = ()
    in_flight_migrations: int = 0
    maintenance: Optional[PoolMaintenance] = None

    @property
    def in_maintenance(self) -> bool:
        return self.maintenance is not None and self.maintenance.on


@dataclass(frozen=True)
class Disk:
    target: str
    type: str
    format: str
    source: str
    pool: str
    volume: str
    capacity_bytes: int
    allocation_bytes: int
    read_only: bool
    shareable: bool
    migration_id: str


@dataclass(frozen=True)
class DomainDisks:
    domain: str
    uuid: str
    running: bool
    disks: Tuple[Disk, ...]


@dataclass(frozen=True)
class Candidate:
    pool: str
    storage_id: str
    accepted: bool
    rejected_by: str
    reason: str
    score: float


@dataclass(frozen=True)
class Plan:
    """Where the controller would put a disk (and why the other pools were not chosen)."""

    node_id: str
    source_pool: str
    chosen_pool: str
    disk: Optional[Disk]
    candidates: Tuple[Candidate, ...]
    disks: Tuple["Plan", ...] = field(default=())


@dataclass(frozen=True)
class Record:
    """A migration as the server keeps it (GetMigration, ListMigrations)."""

    migration_id: str
    node_id: str
    domain: str
    source_pool: str
    latest: Optional[Event]


def _enum_name(enum_type: "object", number: int, prefix: str) -> str:
    name: str = getattr(enum_type, "Name")(number) if number else ""
    return name[len(prefix):].lower() if name.startswith(prefix) else name.lower()


def progress_of(m: migration_pb2.MigrationProgress) -> Progress:
    return Progress(m.bytes_done, m.bytes_total, m.rate_bytes_per_sec, m.eta_seconds)


def result_of(m: migration_pb2.MigrationResult) -> Result:
    return Result(
        destination_source=m.destination_source,
        destination_pool=m.destination_pool,
        destination_volume=m.destination_volume,
        destination_format=_enum_name(migration_pb2.VolumeFormat, m.destination_format, "VOLUME_FORMAT_"),
        source_pool=m.source_pool,
        source_volume=m.source_volume,
        previous_source=m.previous_source,
        source_deleted=m.source_deleted,
        source_kept_reason=m.source_kept_reason,
    )


def error_of(m: migration_pb2.MigrationError) -> Error:
    return Error(status_code(m.code), m.message, Phase.of(m.phase), m.disk_state)


def event_of(m: migration_pb2.MigrationEvent) -> Event:
    return Event(
        migration_id=m.migration_id,
        phase=Phase.of(m.phase),
        progress=progress_of(m.progress) if m.HasField("progress") else None,
        message=m.message,
        result=result_of(m.result) if m.HasField("result") else None,
        error=error_of(m.error) if m.HasField("error") else None,
        node_id=m.node_id,
        domain=m.domain,
        disk=m.disk,
        disks=tuple(
            DiskStatus(
                disk=d.disk,
                migration_id=d.migration_id,
                phase=Phase.of(d.phase),
                progress=progress_of(d.progress) if d.HasField("progress") else None,
                message=d.message,
                result=result_of(d.result) if d.HasField("result") else None,
                error=error_of(d.error) if d.HasField("error") else None,
            )
            for d in m.disks
        ),
        skipped=tuple((s.disk, s.reason) for s in m.skipped),
        timestamp_unix_ms=m.timestamp_unix_ms,
    )


def outcome_of(e: Event) -> Outcome:
    results: Dict[str, Result] = {d.disk: d.result for d in e.disks if d.result is not None}
    if not results and e.result is not None:
        results[e.disk] = e.result
    return Outcome(e.migration_id, e.node_id, e.domain, results, e.skipped)


def pool_of(m: node_pb2.Pool) -> Pool:
    return Pool(
        name=m.name,
        type=m.type,
        state=_enum_name(node_pb2.PoolState, m.state, "POOL_STATE_"),
        capacity_bytes=m.capacity_bytes,
        allocation_bytes=m.allocation_bytes,
        available_bytes=m.available_bytes,
        storage_id=m.storage_id,
        shared=m.shared,
    )


def cluster_pool_of(m: controller_pb2.ClusterPool) -> Pool:
    p = pool_of(m.pool)
    return Pool(
        name=p.name,
        type=p.type,
        state=p.state,
        capacity_bytes=p.capacity_bytes,
        allocation_bytes=p.allocation_bytes,
        available_bytes=p.available_bytes,
        storage_id=m.storage_id or p.storage_id,
        shared=p.shared,
        node_ids=tuple(m.node_ids),
        tags=tuple(m.tags),
        in_flight_migrations=m.in_flight_migrations,
        maintenance=maintenance_of(m.maintenance) if m.HasField("maintenance") else None,
    )


def maintenance_of(m: controller_pb2.PoolMaintenance) -> PoolMaintenance:
    since = datetime.datetime.fromtimestamp(m.since_unix_ms / 1000, tz=datetime.timezone.utc)
    return PoolMaintenance(on=m.on, actor=m.actor, since=since, reason=m.reason)


def maintenance_result_of(m: controller_pb2.SetPoolMaintenanceResponse) -> MaintenanceResult:
    return MaintenanceResult(m.storage_id, m.pool, maintenance_of(m.maintenance))


def disk_of(m: node_pb2.Disk) -> Disk:
    return Disk(
        target=m.target,
        type=_enum_name(node_pb2.DiskType, m.type, "DISK_TYPE_"),
        format=_enum_name(migration_pb2.VolumeFormat, m.format, "VOLUME_FORMAT_"),
        source=m.source,
        pool=m.pool,
        volume=m.volume,
        capacity_bytes=m.capacity_bytes,
        allocation_bytes=m.allocation_bytes,
        read_only=m.read_only,
        shareable=m.shareable,
        migration_id=m.migration_id,
    )


def domain_disks_of(m: node_pb2.ListDisksResponse) -> DomainDisks:
    return DomainDisks(m.domain_name, m.domain_uuid, m.running, tuple(disk_of(d) for d in m.disks))


def plan_of(m: controller_pb2.PlanMigrationResponse) -> Plan:
    return Plan(
        node_id=m.node_id,
        source_pool=m.source_pool,
        chosen_pool=m.chosen_pool,
        disk=disk_of(m.disk) if m.HasField("disk") else None,
        candidates=tuple(
            Candidate(c.pool, c.storage_id, c.accepted, c.rejected_by, c.reason, c.score)
            for c in m.candidates
        ),
        disks=tuple(plan_of(d) for d in m.disks),
    )


def record_of(m: migration_pb2.MigrationRecord) -> Record:
    latest = event_of(m.latest) if m.HasField("latest") else None
    return Record(
        migration_id=m.migration_id,
        node_id=m.node_id,
        domain=m.request.domain,
        source_pool=m.source_pool,
        latest=latest,
    )


def records_of(ms: "List[migration_pb2.MigrationRecord]") -> List[Record]:
    return [record_of(m) for m in ms]
