"""Checks every reading from any source must pass, with messages a device owner can act on.

Pure functions: no database, no Redis. Timestamps come back aware and in UTC.
"""

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MAX_FUTURE = timedelta(minutes=10)  # clock skew a Pi may have
MAX_PAST = timedelta(days=400)  # older than a year of buffering is a broken clock, not data


@dataclass(frozen=True)
class SensorRef:
    """What the pipeline needs to know of a sensor a caller may write."""

    sensor_id: int
    key: str
    device_id: int
    device_uid: str
    site_id: int


@dataclass(frozen=True, slots=True)
class Reading:
    sensor: SensorRef
    ts: datetime
    value: float


def parse_timestamp(raw: object, *, now: datetime) -> datetime:
    """An RFC 3339 time with a zone, not absurdly far from `now`; raises ValueError saying why."""
    if not isinstance(raw, str):
        raise ValueError("ts must be an RFC 3339 string such as 2026-11-22T10:00:00.250Z")
    # RFC 3339 allows lower-case t/z and (its note) a space between date and time.
    text = raw.upper()
    if len(text) == 10:
        raise ValueError(f"ts {raw!r} has no time of day and no time zone; e.g. {raw}T10:00:00Z")
    if len(text) < 11 or text[10] not in "T ":
        raise ValueError(f"ts {raw[:40]!r} is not an RFC 3339 time such as 2026-11-22T10:00:00Z")
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"ts {raw[:40]!r} is not an RFC 3339 time") from None
    if ts.tzinfo is None:
        raise ValueError(f"ts {raw[:40]!r} has no time zone; add Z or an offset like +01:00")
    try:
        ts = ts.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past the last representable year
        raise ValueError(f"ts {raw[:40]!r} is out of range; check the device clock") from None
    if ts > now + MAX_FUTURE:
        raise ValueError(f"ts {raw[:40]!r} is in the future; check the device clock")
    if ts < now - MAX_PAST:
        raise ValueError(f"ts {raw[:40]!r} is too far in the past; check the device clock")
    return ts


def parse_value(raw: object) -> float:
    """A finite JSON number (booleans are not numbers here)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError("value must be a number")
    try:
        value = float(raw)
    except OverflowError:  # an integer beyond float range, e.g. 10**400
        raise ValueError("value must be a finite number") from None
    if not math.isfinite(value):
        raise ValueError("value must be a finite number")
    return value
