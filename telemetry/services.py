"""The one ingest pipeline: validate → broadcast to live viewers → durable buffer.

Device sockets, HTTP batch ingest, FTP files and HTTP polling all hand their readings to
`readings_ingest` (sync callers) or `readings_enqueue` (device sockets). Both run the same
validation and build the same messages; they differ only in how they reach Redis. The database
write happens later, in batches, in the writer that reads the buffer stream.
"""

import asyncio
import gc
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection
from django.utils import timezone

from devices.groups import fleet_group, site_group
from energy_portal import metrics, realtime
from energy_portal.per_loop import per_loop
from energy_portal.realtime import live_event
from energy_portal.redis_client import ScriptLink, sync_client
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
        # A sensor twice at one instant: the first value, the one buffered (see `_samples`).
        instant = by_device[reading.sensor.device_id][reading.ts]
        instant.setdefault(reading.sensor.key, reading.value)
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


def _publish_all(pipe, messages: list[tuple[list[str], dict]]) -> None:
    """Queue live messages on `pipe`, their groups already narrowed to the watched ones."""
    for groups, message in messages:
        realtime.publish_live(pipe, groups, message)


def readings_ingest(*, result: IngestResult, source: str, live: str = "points") -> None:
    """Broadcast validated readings to live viewers, then put them in the durable buffer.

    `live="summary"` tells viewers what arrived per site instead of every point: for history
    (load-profile files) that no live chart shows point by point.
    """
    metrics.readings_counted(result=result, source=source)
    if not result.readings:
        return
    pipe = sync_client().pipeline(transaction=False)  # broadcast and every entry: one round trip
    sites = sorted({reading.sensor.site_id for reading in result.readings})
    watched = set(realtime.watched_groups.among_sync([*map(site_group, sites), fleet_group()]))
    if watched:  # nobody watching: no messages built
        if live == "summary":
            messages = _summary_messages(result.readings, source)
        else:
            messages = _point_messages(result.readings)
        messages = [
            (heard, message)
            for groups, message in messages
            if (heard := [group for group in groups if group in watched])
        ]
        _publish_all(pipe, messages)  # ahead of the buffer: viewers first
    for entry in _stream_entries(result.readings, source):
        pipe.xadd(INGEST_STREAM, entry)
    pipe.execute()


# A device resends what it never saw acknowledged: after a crash between our XADD and its ack,
# the same sample comes again. Each device's recently buffered samples (instant + sensors) are
# remembered, and buffering a frame adds only the samples not seen before — in one script, so
# "remembered" and "buffered" can never disagree. Only the last few hundred samples per device
# need remembering: a device has at most a few frames in flight when a connection breaks.
#
# One call carries every frame of this process's sockets that was waiting (see `_SocketBuffer`):
# first their live messages, each published to the groups someone watches (the viewer counts of
# `energy_portal.realtime`, asked here rather than in a round trip of their own), then their
# samples, whose fresh rows go into as few stream entries as `entry_rows` allows.
#
# KEYS: the stream; each frame's set of seen samples; the viewer counts of the groups named.
# ARGV: keep, entry_rows, alive_after, frames, messages; per message its text, its number of
# groups and per group the KEYS index of its viewer count and its channel; per frame its source,
# its number of samples and per sample its identity, its rows and their number.
# Returns, per viewer count in KEYS, 1 if the group has viewers, else 0.
_BROADCAST_AND_BUFFER = """
local stream = KEYS[1]
local keep, entry_rows, alive_after = tonumber(ARGV[1]), tonumber(ARGV[2]), '(' .. ARGV[3]
local frames, messages = tonumber(ARGV[4]), tonumber(ARGV[5])
local a = 6
local watched = {}
for _ = 1, messages do
  local text, groups = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, groups do
    local key = KEYS[tonumber(ARGV[a])]
    local heard = watched[key]
    if heard == nil then
      heard = redis.call('ZCOUNT', key, alive_after, '+inf') > 0
      watched[key] = heard
    end
    if heard then
      redis.call('PUBLISH', ARGV[a + 1], text)
    end
    a = a + 2
  end
end
local pending = {}
local function flush(src, entry)
  redis.call('XADD', stream, '*', 'src', src, 'rows', '[' .. table.concat(entry.rows, ',') .. ']')
end
for f = 1, frames do
  local seen, src, samples = KEYS[1 + f], ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  local base = redis.call('INCRBY', seen .. ':seq', samples) - samples
  local entry = pending[src]
  if entry == nil then
    entry = {rows = {}, count = 0}
    pending[src] = entry
  end
  for s = 1, samples do
    if redis.call('ZADD', seen, 'NX', base + s, ARGV[a]) == 1 then
      local count = tonumber(ARGV[a + 2])
      if entry.count > 0 and entry.count + count > entry_rows then
        flush(src, entry)
        entry.rows, entry.count = {}, 0
      end
      entry.rows[#entry.rows + 1] = ARGV[a + 1]
      entry.count = entry.count + count
    end
    a = a + 3
  end
  redis.call('ZREMRANGEBYRANK', seen, 0, -(keep + 1))
end
for src, entry in pairs(pending) do
  if entry.count > 0 then
    flush(src, entry)
  end
end
local answer = {}
for k = 2 + frames, #KEYS do
  answer[#answer + 1] = watched[KEYS[k]] and 1 or 0
end
return answer
"""
SAMPLES_REMEMBERED = 1000


def _samples(readings: list[Reading]) -> list[str | int]:
    """Script arguments: per sample (one instant of one device), its identity, its rows and
    their number."""
    by_instant: dict[int, dict[int, str]] = defaultdict(dict)
    for r in readings:
        us = _epoch_us(r.ts)
        # A sensor twice at one instant in one frame is one sample: the first is kept, as a
        # resent sample is in a later frame (the table would keep one row either way).
        by_instant[us].setdefault(r.sensor.sensor_id, f"[{r.sensor.sensor_id},{us},{r.value!r}]")
    args = []
    for us, rows in by_instant.items():
        ids = ",".join(sorted(map(str, rows)))
        args += [f"{us}:{ids}", ",".join(rows.values()), len(rows)]
    return args


# At most a thousand trips a second: a frame waits at most this long for its trip to start.
TRIP_GAP_S = 0.001


@dataclass(slots=True)
class _Frame:
    """What one socket frame hands to Redis: its live messages (text, groups) and its samples."""

    device_id: int
    source: str
    messages: list[tuple[str, list[str]]]
    samples: list[str | int]
    done: asyncio.Future


class _SocketBuffer:
    """The frames of this process's device sockets on their way to Redis.

    Every frame waiting when a trip starts goes in that trip: one script call
    (`_BROADCAST_AND_BUFFER`), one round trip, whatever the number of sockets. One trip is under
    way at a time, trips start at least `TRIP_GAP_S` apart, and each takes everything that
    arrived meanwhile: under load trips grow rather than multiply (a trip's socket write and
    wake-up of Redis cost more than the script's work per frame, bench/live). A frame is done
    (its socket may ack) once its trip is back; a trip that fails fails its own frames only,
    with the error its sockets would have had alone.
    """

    def __init__(self):
        self._waiting: list[_Frame] = []
        self._trips: asyncio.Task | None = None
        self._next_trip = 0.0  # event-loop time
        self._script = ScriptLink(
            settings.REDIS_URL, _BROADCAST_AND_BUFFER, name="ep-socket-buffer"
        )

    def add(self, frame: _Frame) -> None:
        """Put the frame on the next trip; `frame.done` completes once its samples are in the
        stream (or fails with the reason they could not be)."""
        self._waiting.append(frame)
        if self._trips is None:
            self._trips = asyncio.create_task(self._travel())

    async def _travel(self) -> None:
        frames: list[_Frame] = []
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                if (wait := self._next_trip - loop.time()) > 0:
                    await asyncio.sleep(wait)
                self._next_trip = loop.time() + TRIP_GAP_S
                frames, self._waiting = self._waiting, []
                try:
                    await self._trip(frames)
                except Exception as exc:  # raised again in each frame's socket
                    for frame in frames:
                        if not frame.done.done():
                            frame.done.set_exception(exc)
                else:
                    for frame in frames:
                        if not frame.done.done():
                            frame.done.set_result(None)
        finally:
            self._trips = None
            for frame in [*frames, *self._waiting]:  # cancelled: the loop is closing
                frame.done.cancel()

    async def _trip(self, frames: list[_Frame]) -> None:
        seen = [f"ep:ingest:seen:{int(frame.device_id)}" for frame in frames]
        groups: dict[str, int] = {}  # group: KEYS index (1-based) of its viewer count
        message_args: list[str | int] = []
        messages = 0
        for frame in frames:
            for text, heard in frame.messages:
                messages += 1
                message_args += [text, len(heard)]
                for group in heard:
                    index = groups.setdefault(group, 2 + len(frames) + len(groups))
                    message_args += [index, realtime.live_channel(group)]
        frame_args: list[str | int] = []
        for frame in frames:
            frame_args += [frame.source, len(frame.samples) // 3, *frame.samples]
        keys = [INGEST_STREAM, *seen, *map(realtime.viewers_key, groups)]
        args = [SAMPLES_REMEMBERED, STREAM_ENTRY_ROWS, time.time(), len(frames), messages]
        watched = await self._script(keys=keys, args=[*args, *message_args, *frame_args])
        for group, heard in zip(groups, watched, strict=True):
            realtime.watched_groups.learn(group, bool(heard))


# This event loop's buffer (its trips' futures and connection belong to the loop).
_socket_buffer = per_loop(_SocketBuffer)


def readings_enqueue(*, result: IngestResult, source: str, device_id: int) -> asyncio.Future | None:
    """`readings_ingest` for a device's socket, from its event loop: the same validation and
    broadcast, and a buffer that takes a resent sample of that device only once. Returns at once
    the future that completes when the readings are in the buffer, or fails with the RedisError
    that kept them out (None: nothing to buffer). The frames of all this process's sockets travel
    to Redis together (`_SocketBuffer`)."""
    metrics.readings_counted(result=result, source=source, later=True)
    if not result.readings:
        return None
    sites = {reading.sensor.site_id for reading in result.readings}
    perhaps = realtime.watched_groups.perhaps_watched([*map(site_group, sites), fleet_group()])
    messages = []
    if perhaps:  # nobody known to watch: no message built
        for groups, message in _point_messages(result.readings):
            if heard := [group for group in groups if group in perhaps]:
                messages.append((message["text"], heard))
    done = asyncio.get_running_loop().create_future()
    _socket_buffer().add(_Frame(device_id, source, messages, _samples(result.readings), done))
    return done


def live_enqueue(*, device_id: int, groups: list[str], message: dict) -> asyncio.Future:
    """A live message from a device's socket, from its event loop: published to those of
    `groups` someone watches with this process's next trip to Redis (`_SocketBuffer`, with the
    sockets' readings: no round trip of its own, no connection of the pool). Returns the future
    that completes once it is published (or fails with the RedisError that kept it back)."""
    done = asyncio.get_running_loop().create_future()
    perhaps = realtime.watched_groups.perhaps_watched(groups)
    if not perhaps:  # nobody known to watch
        done.set_result(None)
        return done
    _socket_buffer().add(_Frame(device_id, "socket", [(message["text"], perhaps)], [], done))
    return done


# Set-based insert of a whole batch, sent as ONE text parameter: a two-dimensional array literal
# `{{sensor_id,epoch_us,value},...}`. The batch writer makes it from the stream entries' JSON with
# byte-level replacements (no Python work per row) and PostgreSQL's number parser does the rest:
# 1.2-1.3x the rows a second of three binary arrays built from parsed JSON, with the writer's own
# CPU near zero (bench/ingest). double precision holds every integer below 2^53 exactly (epoch
# microseconds stay below it until the year 2255); an id or time that is not such an integer is
# cast from its text instead, which fails the statement (DataError) rather than rounding it.
# Readings of sensors that no longer exist are dropped by the join, duplicates of (sensor, time)
# by the primary key. Times are added to the epoch as integer microseconds (no float rounding).
_INSERT_ROWS = """
INSERT INTO energy_readings (sensor_id, time, value)
SELECT r.sensor_id, 'epoch'::timestamptz + r.us * interval '1 microsecond', r.value
FROM (
    SELECT
        CASE WHEN e.sensor_id = trunc(e.sensor_id) THEN e.sensor_id::integer
             ELSE e.sensor_id::text::integer END AS sensor_id,
        CASE WHEN e.us = trunc(e.us) AND abs(e.us) < 9007199254740992 THEN e.us::bigint
             ELSE e.us::text::bigint END AS us,
        e.value
    FROM (SELECT %s::double precision[] AS a) AS p,
         generate_subscripts(p.a, 1) AS i,
         LATERAL (SELECT p.a[i][1] AS sensor_id, p.a[i][2] AS us, p.a[i][3] AS value) AS e
) AS r
JOIN devices_sensor s ON s.id = r.sensor_id
ON CONFLICT (sensor_id, time) DO NOTHING
"""


def readings_insert_rows(*, rows: str) -> int:
    """Write a batch given as an array literal `{{sensor_id,epoch_us,value},...}` in one
    statement; returns how many rows were new. Raises django.db.DataError (nothing written) if a
    row is malformed."""
    if rows in ("", "{}"):
        return 0
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_ROWS, [rows])
        return cursor.rowcount


def readings_insert(*, sensor_ids: list[int], times_us: list[int], values: list[float]) -> int:
    """Write readings given as three parallel lists (see readings_insert_rows)."""
    rows = ",".join(
        f"{{{int(sensor_id)},{int(us)},{float(value)!r}}}"
        for sensor_id, us, value in zip(sensor_ids, times_us, values, strict=True)
    )
    return readings_insert_rows(rows="{" + rows + "}")
