"""The one ingest pipeline: validate → broadcast to live viewers → durable buffer.

Device sockets, HTTP batch ingest, FTP files and HTTP polling all hand their readings to
`readings_ingest` (sync callers) or `areadings_ingest` (async callers). Both run the same
validation and build the same messages; they differ only in how they reach Redis. The database
write happens later, in batches, in the writer that reads the buffer stream.
"""

import gc
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from asgiref.sync import async_to_sync

from django.db import connection
from django.utils import timezone

from devices.groups import fleet_group, site_group
from energy_portal import realtime
from energy_portal.realtime import agroup_send, live_event
from energy_portal.redis_client import async_client, sync_client
from telemetry.validation import Reading, SensorRef, parse_timestamp, parse_value

INGEST_STREAM = "ep:ingest"
# Rows a stream entry holds at most: a writer takes whole entries, so they stay well below its
# batch size however large the batch handed to `readings_ingest`.
STREAM_ENTRY_ROWS = 10_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# Not frozen: building a frozen dataclass costs three times as much, and a file makes millions.
@dataclass(slots=True)
class Item:
    """One reading as a source gives it, before validation. `ref` names the sensor in the
    source's own terms (a key for a device socket, a public id for the HTTP API)."""

    ref: str
    ts: object
    value: object
    index: int | None = None


@dataclass
class IngestResult:
    readings: list[Reading] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.readings)


_gc_lock = threading.Lock()
_gc_pauses = 0  # callers inside `cyclic_gc_paused`, all threads
_gc_was_enabled = False


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while bulk readings are parsed, validated and enqueued.

    A big batch allocates millions of short-lived objects next to the many it keeps alive (a
    parsed file's rows): the collector would walk the live ones again and again, about a third of
    a file's ingest time (bench/ingest). The pipeline makes no reference cycles, so reference
    counting still frees everything; the collector resumes when the last caller (of any thread:
    the switch is process-wide) leaves, and only if it was on before.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _reject(item: Item, error: str, ref_name: str) -> dict:
    entry = {ref_name: item.ref, "error": error}
    if item.index is not None:
        entry["index"] = item.index
    return entry


def readings_validate(
    *,
    items: Iterable[Item],
    sensors: dict[str, SensorRef],
    ref_name: str = "key",
    now: datetime | None = None,
) -> IngestResult:
    """Keep what is valid; say for each rejected item what was wrong with it."""
    now = now or timezone.now()
    result = IngestResult()
    keep, reject = result.readings.append, result.rejected.append
    # Batches repeat instants (a file has one per meter and interval): parse each text once.
    times: dict[str, datetime | str] = {}
    for item in items:
        sensor = sensors.get(item.ref)
        if sensor is None:
            reject(_reject(item, "unknown sensor", ref_name))
            continue
        raw = item.ts
        ts = times.get(raw) if isinstance(raw, str) else None
        if ts is None:
            try:
                ts = parse_timestamp(raw, now=now)
            except ValueError as exc:
                ts = str(exc)
            if isinstance(raw, str):
                times[raw] = ts
        if isinstance(ts, str):
            reject(_reject(item, ts, ref_name))
            continue
        value = item.value
        # A finite float is what parse_value would return as it is; anything else it checks.
        if type(value) is not float or value - value != 0.0:
            try:
                value = parse_value(value)
            except ValueError as exc:
                reject(_reject(item, str(exc), ref_name))
                continue
        keep(Reading(sensor, ts, value))
    return result


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch_us(ts: datetime) -> int:
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _point_messages(readings: list[Reading]) -> list[tuple[list[str], dict]]:
    """One message per device, its points grouped by instant, for the site and the fleet."""
    by_device: dict[int, dict[datetime, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    devices: dict[int, SensorRef] = {}
    for reading in readings:
        devices[reading.sensor.device_id] = reading.sensor
        by_device[reading.sensor.device_id][reading.ts][reading.sensor.key] = reading.value
    messages = []
    for device_id, points in by_device.items():
        sensor = devices[device_id]
        payload = {
            "type": "readings",
            "device": sensor.device_uid,
            "site": sensor.site_id,
            "points": [{"ts": _iso(ts), "values": values} for ts, values in sorted(points.items())],
        }
        messages.append(([site_group(sensor.site_id), fleet_group()], live_event(payload)))
    return messages


def _summary_messages(readings: list[Reading], source: str) -> list[tuple[list[str], dict]]:
    """For bulk history (files): one note per site of what arrived, not every point."""
    spans: dict[int, list] = {}  # site -> [first, last, count]
    for reading in readings:
        ts = reading.ts
        span = spans.get(reading.sensor.site_id)
        if span is None:
            spans[reading.sensor.site_id] = [ts, ts, 1]
            continue
        if ts < span[0]:
            span[0] = ts
        elif ts > span[1]:
            span[1] = ts
        span[2] += 1
    return [
        (
            [site_group(site_id), fleet_group()],
            live_event(
                {
                    "type": "ingested",
                    "site": site_id,
                    "source": source,
                    "readings": count,
                    "from": _iso(first),
                    "to": _iso(last),
                }
            ),
        )
        for site_id, (first, last, count) in spans.items()
    ]


def _stream_entries(readings: list[Reading], source: str) -> list[dict[str, str]]:
    """The readings as stream entries of at most STREAM_ENTRY_ROWS rows each:
    `{"src": source, "rows": "[[sensor_id,epoch_us,value],...]"}` (JSON)."""
    # Integer microseconds keep the entry small and the writer's parsing trivial. Each row is
    # written as text directly (a float's repr is its JSON), which is twice as fast as json.dumps
    # of a list per row; the time part is made once per instant.
    micros: dict[datetime, str] = {}
    rows: list[str] = []
    add = rows.append
    for r in readings:
        ts = r.ts
        us = micros.get(ts)
        if us is None:
            us = micros[ts] = f",{_epoch_us(ts)},"
        add(f"[{r.sensor.sensor_id}{us}{r.value!r}]")
    return [
        {"src": source, "rows": "[" + ",".join(rows[i : i + STREAM_ENTRY_ROWS]) + "]"}
        for i in range(0, len(rows), STREAM_ENTRY_ROWS)
    ]


async def _send_all(messages: list[tuple[list[str], dict]]) -> None:
    for groups, message in messages:
        await agroup_send(groups, message)


async def _publish_all(messages: list[tuple[list[str], dict]]) -> None:
    """Messages whose groups were already narrowed to the watched ones."""
    for groups, message in messages:
        await realtime.apublish(groups, message)


def readings_ingest(*, result: IngestResult, source: str, live: str = "points") -> None:
    """Broadcast validated readings to live viewers, then put them in the durable buffer.

    `live="summary"` tells viewers what arrived per site instead of every point: for history
    (load-profile files) that no live chart shows point by point.
    """
    if not result.readings:
        return
    sites = sorted({reading.sensor.site_id for reading in result.readings})
    watched = set(realtime.watched_groups.among_sync([*map(site_group, sites), fleet_group()]))
    if watched:  # nobody watching: no messages built, no hop to an event loop
        if live == "summary":
            messages = _summary_messages(result.readings, source)
        else:
            messages = _point_messages(result.readings)
        messages = [
            (heard, message)
            for groups, message in messages
            if (heard := [group for group in groups if group in watched])
        ]
        async_to_sync(_publish_all)(messages)  # one hop to the event loop for the whole batch
    pipe = sync_client().pipeline(transaction=False)  # every entry in one round trip
    for entry in _stream_entries(result.readings, source):
        pipe.xadd(INGEST_STREAM, entry)
    pipe.execute()


# A device resends what it never saw acknowledged: after a crash between our XADD and its ack,
# the same sample comes again. Each device's recently buffered samples (instant + sensors) are
# remembered, and buffering a frame adds only the samples not seen before — in one script, so
# "remembered" and "buffered" can never disagree. Only the last few hundred samples per device
# need remembering: a device has at most a few frames in flight when a connection breaks.
_BUFFER_ONCE = """
local seen, stream = KEYS[1], KEYS[2]
local keep = tonumber(ARGV[2])
local seq = redis.call('INCRBY', seen .. ':seq', (#ARGV - 2) / 2)
local fresh = {}
for i = 3, #ARGV, 2 do
  if redis.call('ZADD', seen, 'NX', seq + i, ARGV[i]) == 1 then
    fresh[#fresh + 1] = ARGV[i + 1]
  end
end
redis.call('ZREMRANGEBYRANK', seen, 0, -(keep + 1))
if #fresh > 0 then
  redis.call('XADD', stream, '*', 'src', ARGV[1], 'rows', '[' .. table.concat(fresh, ',') .. ']')
end
return #fresh
"""
SAMPLES_REMEMBERED = 1000


def _samples(readings: list[Reading]) -> list[str]:
    """Script arguments: per sample (one instant of one device), its identity and its rows."""
    by_instant: dict[int, list[str]] = defaultdict(list)
    for r in readings:
        by_instant[_epoch_us(r.ts)].append(f"[{r.sensor.sensor_id},{_epoch_us(r.ts)},{r.value!r}]")
    args = []
    for us, rows in by_instant.items():
        ids = ",".join(sorted(row[1 : row.index(",")] for row in rows))
        args += [f"{us}:{ids}", ",".join(rows)]
    return args


async def areadings_ingest(*, result: IngestResult, source: str, device_id: int) -> None:
    """`readings_ingest` for a device's socket: the same validation and broadcast, and a buffer
    that takes a resent sample of that device only once."""
    if not result.readings:
        return
    await _send_all(_point_messages(result.readings))
    seen = f"ep:ingest:seen:{int(device_id)}"
    await async_client().eval(
        _BUFFER_ONCE, 2, seen, INGEST_STREAM, source, SAMPLES_REMEMBERED, *_samples(result.readings)
    )


# Set-based insert of a whole batch: three arrays unnested into rows, readings of sensors that no
# longer exist dropped by the join, duplicates of (sensor, time) dropped by the primary key.
# Times travel as integer microseconds and are added to the epoch exactly (no float rounding).
_INSERT_BATCH = """
INSERT INTO energy_readings (sensor_id, time, value)
SELECT r.sensor_id, 'epoch'::timestamptz + r.us * interval '1 microsecond', r.value
FROM unnest(%s::integer[], %s::bigint[], %s::double precision[]) AS r(sensor_id, us, value)
JOIN devices_sensor s ON s.id = r.sensor_id
ON CONFLICT (sensor_id, time) DO NOTHING
"""


_INSERT_BATCH_BINARY = _INSERT_BATCH.replace("%s::", "%b::")


def readings_insert(*, sensor_ids: list[int], times_us: list[int], values: list[float]) -> int:
    """Write a batch of readings in one statement; returns how many rows were new."""
    if not sensor_ids:
        return 0
    connection.ensure_connection()
    # Django's cursor binds parameters client-side, rendering each array as text in Python (about
    # half the writer's CPU, bench/ingest); a plain psycopg cursor on the same connection, hence
    # the same transaction, sends the three arrays in binary instead.
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_INSERT_BATCH_BINARY, [sensor_ids, times_us, values])
        return cursor.rowcount
