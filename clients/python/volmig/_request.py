"""Builds MigrateVolumeRequest from keyword arguments (shared by the sync and async clients)."""

from __future__ import annotations

import uuid
from typing import Any, Mapping, Optional, Sequence, Union

from ._bandwidth import Bandwidth, parse_bandwidth
from .v1 import migration_pb2

Disks = Union[str, Sequence[str], Mapping[str, str], None]

_ENUMS = {
    "copy_mode": ("CopyMode", "COPY_MODE_"),
    "chain_policy": ("ChainPolicy", "CHAIN_POLICY_"),
    "source_policy": ("SourcePolicy", "SOURCE_POLICY_"),
    "verify": ("VerifyLevel", "VERIFY_LEVEL_"),
    "on_no_convergence": ("NoConvergencePolicy", "NO_CONVERGENCE_POLICY_"),
}
_NUMBERS = ("timeout_seconds", "convergence_window_seconds")


def enum_value(option: str, value: str) -> int:
    type_name, prefix = _ENUMS[option]
    enum_type: Any = getattr(migration_pb2, type_name)
    try:
        number: int = enum_type.Value(prefix + value.upper().replace("-", "_"))
    except ValueError:
        allowed = [n[len(prefix):].lower() for n in enum_type.keys() if not n.endswith("UNSPECIFIED")]
        raise ValueError(f"{option}={value!r}: expected one of {allowed}") from None
    return number


def migrate_request(
    domain: str,
    disks: Disks = None,
    *,
    all_disks: bool = False,
    to_pool: Optional[str] = None,
    to_tags: Optional[Sequence[str]] = None,
    to_volume: Optional[str] = None,
    to_format: Optional[str] = None,
    bandwidth: Optional[Bandwidth] = None,
    request_id: Optional[str] = None,
    max_parallel_copies: int = 0,
    source_users_elsewhere: Sequence[str] = (),
    **options: Any,
) -> migration_pb2.MigrateVolumeRequest:
    """The request for `Client.migrate` (see its docstring); a fresh request id if none."""
    if (disks is None) == (not all_disks):
        raise ValueError("name the disks (disks='vda' or ['vda', 'vdb']) or pass all_disks=True")
    req = migration_pb2.MigrateVolumeRequest(
        request_id=request_id or str(uuid.uuid4()),
        domain=domain,
        destination_pool=to_pool or "",
        destination_volume=to_volume or "",
        required_tags=list(to_tags or ()),
        all_disks=all_disks,
        max_parallel_copies=max_parallel_copies,
    )
    if to_format:
        formats: Any = migration_pb2.VolumeFormat
        setattr(req, "destination_format", formats.Value("VOLUME_FORMAT_" + to_format.upper()))
    if isinstance(disks, str):
        req.disk = disks
    elif isinstance(disks, Mapping):
        for disk, pool in disks.items():
            req.disks.append(migration_pb2.DiskDestination(disk=disk, destination_pool=pool))
    elif disks is not None:
        names = list(disks)
        if len(names) == 1:
            req.disk = names[0]
        else:
            req.disks.extend(migration_pb2.DiskDestination(disk=d) for d in names)
    opts = req.options
    if bandwidth is not None:
        opts.bandwidth_bytes_per_sec = parse_bandwidth(bandwidth)
    opts.source_users_elsewhere.extend(source_users_elsewhere)
    for name, value in options.items():
        if name in _ENUMS:
            setattr(opts, name, enum_value(name, str(value)))
        elif name in _NUMBERS:
            setattr(opts, name, int(value))
        elif name == "same_pool":
            req.same_pool = bool(value)
        else:
            raise TypeError(f"unknown migration option {name!r}")
    return req
