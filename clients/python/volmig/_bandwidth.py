"""Bandwidth values: bytes per second as an int, or strings like "200MiB".

Binary units are powers of 2 (KiB, MiB, GiB, TiB = 2**10 …), decimal units
powers of 10 (kB/KB, MB, GB, TB = 10**3 …); "B" or no unit is bytes; a
trailing "/s" is allowed. 0 means unlimited.
"""

from __future__ import annotations

import re
from typing import Union

Bandwidth = Union[int, str]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "mb": 10**6,
    "m": 10**6,
    "gb": 10**9,
    "g": 10**9,
    "tb": 10**12,
    "t": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*(?:/s)?\s*$")


def parse_bandwidth(value: Bandwidth) -> int:
    """Bytes per second for `value` ("200MiB", "1.5GB/s", 1048576); 0 is unlimited."""
    if isinstance(value, bool):
        raise TypeError("bandwidth must be an int or a string, not a bool")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"bandwidth must not be negative: {value}")
        return value
    match = _PATTERN.match(value)
    if match is None:
        raise ValueError(f"not a bandwidth: {value!r} (expected e.g. '200MiB' or '50MB')")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(
            f"unknown unit {unit!r} in {value!r} (use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    return int(float(number) * factor)
