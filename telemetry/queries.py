"""The read side of telemetry: raw readings, aggregates, stats, site energy and dashboard metrics.

Aggregates come from the rollups (see `telemetry/rollups.py`) wherever a whole rollup bucket
fits the question, and from raw readings for what is left: a range is cut into the largest
rollup buckets that fit inside it (1 d, then 1 h, then 15 min) with raw readings at the ragged
edges, so the answer is exactly that of the readings in [start, end).

On plain PostgreSQL a rollup row is used only while no dirty mark lies inside its bucket; a
marked bucket is answered from the 15-minute rollups of its clean quarter-hours and the raw
readings of its marked ones. One SQL statement reads marks, rollups and raw readings, so it
sees one snapshot: a committed reading is either in a rollup or under a mark, never in neither.
On TimescaleDB the rollups are real-time continuous aggregates and answer the same way.
"""

# SQL here is assembled from constant fragments only; every value is a bound parameter.
# ruff: noqa: S608

import functools
import hashlib
import re
import zoneinfo
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

import psycopg

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import QuerySet

from devices.currency import round_money
from devices.models import (
    Device,
    DeviceKind,
    Feeder,
    Room,
    Sensor,
    SensorKind,
    Site,
    Substation,
    Transformer,
)
from devices.selectors import room_list, sensor_list, site_list
from telemetry.models import PolledAppliance, RoomMetrics, SiteMetrics
from telemetry.timescale import is_timescale

# time_bucket's default origin (a Monday at midnight UTC); date_bin gets it explicitly, so both
# backends cut buckets at the same instants.
ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)
ORIGIN_SQL = "TIMESTAMPTZ '2000-01-03 00:00:00+00'"
STEPS = {"1d": timedelta(days=1), "1h": timedelta(hours=1), "15m": timedelta(minutes=15)}
INTERVALS = {"1d": "1 day", "1h": "1 hour", "15m": "15 minutes"}
TABLES = {"1d": "rollup_1d", "1h": "rollup_1h", "15m": "rollup_15m"}
LEVELS = ("1d", "1h", "15m")  # largest first
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Aggregates of one 15-minute bucket `m` (columns sensor_id, bucket) recomputed from raw data.
# Shared by the refresh job and by reads of marked buckets.
BUCKET_FROM_RAW = """
SELECT sum(e.value) AS sum, count(*) AS count, min(e.value) AS min, max(e.value) AS max,
       (SELECT l.value FROM energy_readings l
        WHERE l.sensor_id = m.sensor_id AND l.time >= m.bucket
          AND l.time < m.bucket + interval '15 minutes'
        ORDER BY l.time DESC LIMIT 1) AS last
FROM energy_readings e
WHERE e.sensor_id = m.sensor_id AND e.time >= m.bucket AND e.time < m.bucket + interval '15 minutes'
"""


def floor_to(ts: datetime, step: timedelta) -> datetime:
    return ts - (ts - ORIGIN) % step


def ceil_to(ts: datetime, step: timedelta) -> datetime:
    floored = floor_to(ts, step)
    return floored if floored == ts else floored + step


def array_literal(values) -> str:
    """PostgreSQL's text form of a one-dimensional array of ints, floats or strings."""
    # Lists of one type (ids, factors) in one go: 4x quicker than element by element.
    if all(type(value) is int for value in values):
        return "{" + ",".join(map(str, values)) + "}"
    if all(type(value) is float for value in values):
        return "{" + ",".join(map(repr, values)) + "}"

    def element(value) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(float(value)) if isinstance(value, float) else str(int(value))

    return "{" + ",".join(element(value) for value in values) + "}"


class _Sql:
    """Named parameters for one statement; `prefix` tells apart those of statements sent
    together (`_fetch_each`)."""

    def __init__(self, prefix: str = "p") -> None:
        self.prefix = prefix
        self.params: dict[str, object] = {}
        self._arrays: dict[tuple[int, str], tuple[object, str]] = {}

    def p(self, value: object) -> str:
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return f"%({name})s"

    def array(self, values: list, sql_type: str) -> str:
        """A list as one array parameter (`sql_type`[]), sent as its text form and cast by the
        server, once per statement however often it is used: the driver binds a Python list
        client-side at about 4 µs an element (1 ms for 250 sensor ids, every time)."""
        key = (id(values), sql_type)
        if key not in self._arrays:  # the list is kept, so its id cannot be reused meanwhile
            self._arrays[key] = (values, f"{self.p(array_literal(values))}::{sql_type}[]")
        return self._arrays[key][1]


def _segments(
    start: datetime, end: datetime, levels: tuple[str, ...]
) -> list[tuple[str, datetime, datetime]]:
    """[start, end) as the largest whole buckets of `levels` that fit, with raw edges."""
    if start >= end:
        return []
    if not levels:
        return [("raw", start, end)]
    step = STEPS[levels[0]]
    lo, hi = ceil_to(start, step), floor_to(end, step)
    if lo >= hi:
        return _segments(start, end, levels[1:])
    return [
        *_segments(start, lo, levels[1:]),
        (levels[0], lo, hi),
        *_segments(hi, end, levels[1:]),
    ]


def _rows(q: _Sql, level: str, ids: list[int], lo: datetime, hi: datetime) -> str:
    """SQL for rows (sensor_id, bucket, sum, count, min, max, last) covering the readings of the
    sensors `ids` in [lo, hi), which is aligned to `level` buckets. Rows are `level` buckets or
    smaller pieces of them (a marked bucket's quarter-hours, raw readings)."""
    return _rows_between(q, level, ids, q.p(lo), q.p(hi))


def _rows_between(
    q: _Sql, level: str, ids: list[int], lo_p: str, hi_p: str, *, ids_p: str | None = None
) -> str:
    """`_rows` with the bounds as SQL expressions: parameters, or the columns of a table of
    spans the rows are read for (`site_energy_in_windows`). `ids_p`: the sensors as an SQL
    array expression instead of `ids` (a column of such a table: `_spans_energy`)."""
    ids_p = ids_p or q.array(ids, "bigint")
    if level == "raw":
        return f"""
        SELECT e.sensor_id, e.time AS bucket, e.value AS sum, 1::bigint AS count,
               e.value AS min, e.value AS max, e.value AS last
        FROM energy_readings e
        WHERE e.sensor_id = ANY({ids_p}) AND e.time >= {lo_p} AND e.time < {hi_p}"""
    table = TABLES[level]
    rollup = f"""
        SELECT r.sensor_id, r.bucket, r.sum, r.count::bigint, r.min, r.max, r.last
        FROM {table} r
        WHERE r.sensor_id = ANY({ids_p}) AND r.bucket >= {lo_p} AND r.bucket < {hi_p}"""
    if is_timescale(connection):
        return rollup
    step = f"interval '{INTERVALS[level]}'"
    marked_raw = f"""
        SELECT m.sensor_id, m.bucket, x.sum, x.count, x.min, x.max, x.last
        FROM rollup_dirty m CROSS JOIN LATERAL ({BUCKET_FROM_RAW}) x
        WHERE m.sensor_id = ANY({ids_p}) AND m.bucket >= {lo_p} AND m.bucket < {hi_p}
          AND x.count > 0"""
    # The bounds [lo, hi) and the sensors repeat what the row implies, so that the planner can
    # read only these sensors' marks of the range (the primary key) rather than all of them: a
    # hash anti-join over every mark of the range read by time (rollup_dirty_bucket) took 6 ms
    # a statement with the 20,000 marks of a 10,000-device fleet's last quarter-hour
    # (bench/pages: the dashboard's today, 6 statements).
    clean = f"""{rollup}
          AND NOT EXISTS (SELECT 1 FROM rollup_dirty d WHERE d.sensor_id = r.sensor_id
                          AND d.sensor_id = ANY({ids_p})
                          AND d.bucket >= r.bucket AND d.bucket < r.bucket + {step}
                          AND d.bucket >= {lo_p} AND d.bucket < {hi_p})"""
    if level == "15m":
        return f"{clean}\n UNION ALL {marked_raw}"
    # A marked hour or day: its clean quarter-hours from rollup_15m, the marked ones from raw.
    # LATERAL: each marked parent's quarter-hours by the primary key; a plain join let the
    # planner hash-join on sensor_id and scan all of rollup_15m (333 ms at 10M readings for
    # the meters' day in progress).
    clean_quarters = f"""
        SELECT c.sensor_id, c.bucket, c.sum, c.count, c.min, c.max, c.last
        FROM (SELECT DISTINCT d.sensor_id, date_bin({step}, d.bucket, {ORIGIN_SQL}) AS parent
              FROM rollup_dirty d
              WHERE d.sensor_id = ANY({ids_p}) AND d.bucket >= {lo_p} AND d.bucket < {hi_p}) p
        CROSS JOIN LATERAL (
            SELECT c.* FROM rollup_15m c
            WHERE c.sensor_id = p.sensor_id AND c.bucket >= p.parent
              AND c.bucket < p.parent + {step}
              AND NOT EXISTS (SELECT 1 FROM rollup_dirty d2
                              WHERE d2.sensor_id = c.sensor_id AND d2.bucket = c.bucket)) c"""
    return f"{clean}\n UNION ALL {clean_quarters}\n UNION ALL {marked_raw}"


def _union(q: _Sql, ids: list[int], start: datetime, end: datetime, levels: tuple[str, ...]) -> str:
    parts = [_rows(q, level, ids, lo, hi) for level, lo, hi in _segments(start, end, levels)]
    return "\n UNION ALL ".join(f"({part})" for part in parts)


def _fetch(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


class _PreparedCursor(psycopg.Cursor):
    """Binds on the server and prepares each statement on a connection when first run there, so
    that PostgreSQL plans it once and keeps the plan (psycopg keeps the names, per connection).
    Django's cursors bind on the client, which sends no statement to keep."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


def _fetch_prepared(sql: str, params: dict) -> list[tuple]:
    """`_fetch` for a statement whose text does not change from one call to the next (every
    value a parameter: `_Sql`), run often enough for its planning to count: planned once per
    connection instead of at every run (1.5 ms of the dashboard's energy statement). Through
    Django's cursor wrapper, so that it is counted like the rest. While Django logs queries
    (DEBUG, `CaptureQueriesContext`) it runs unprepared: the log's text is what psycopg keeps
    of a statement sent whole, and a prepared one is sent by name."""
    if connection.queries_logged:
        return _fetch(sql, params)
    connection.ensure_connection()
    connection.validate_thread_sharing()
    with connection.make_cursor(_PreparedCursor(connection.connection)) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _fetch_each(statements: list[tuple[str, dict]]) -> list[list[tuple]]:
    """The rows of each statement, all sent in one round trip (client-side binding sends them
    as one simple query; each still runs and is planned on its own). Their parameter names
    must differ. A round trip through Django costs about 0.3 ms here."""
    params: dict = {}
    for _, own in statements:
        if params.keys() & own.keys():
            raise ValueError(f"parameters named twice: {sorted(params.keys() & own.keys())}")
        params |= own
    with connection.cursor() as cursor:
        cursor.execute(";\n".join(sql for sql, _ in statements), params)
        results = [cursor.fetchall()]
        while cursor.nextset():
            results.append(cursor.fetchall())
    return results


# --- per sensor: readings, aggregates, stats ----------------------------------------------


def sensor_by_public_id(*, user: AbstractBaseUser, public_id: str) -> Sensor | None:
    """The sensor `<device uid>.<key>` if this user may see it."""
    uid, _, key = public_id.rpartition(".")
    return sensor_list(user=user).filter(device__uid=uid, key=key).first()


def readings_page(
    *,
    sensor_id: int,
    start: datetime,
    end: datetime,
    after: datetime | None = None,
    limit: int,
) -> list[tuple[datetime, float]]:
    """Up to `limit` readings in [start, end) later than `after`, in time order: a keyset page
    read by the primary key (sensor_id, time), as fast on the last page as on the first."""
    q = _Sql()
    where = f"sensor_id = {q.p(sensor_id)} AND time >= {q.p(start)} AND time < {q.p(end)}"
    if after is not None:
        where += f" AND time > {q.p(after)}"
    return _fetch(
        f"SELECT time, value FROM energy_readings WHERE {where} ORDER BY time LIMIT {q.p(limit)}",
        q.params,
    )


def readings_chunks(
    *, sensor_id: int, start: datetime, end: datetime, chunk: int = 10_000
) -> Iterator[list[tuple[datetime, float]]]:
    """All readings in [start, end) in time order, a keyset page at a time: memory stays flat
    however many millions of rows the range holds."""
    after = None
    while True:
        rows = readings_page(sensor_id=sensor_id, start=start, end=end, after=after, limit=chunk)
        if rows:
            yield rows
        if len(rows) < chunk:
            return
        after = rows[-1][0]


class RangeError(ValueError):
    """A question the rollups cannot answer as asked (e.g. a zone off the 15-minute grid)."""


def _offset_fits(tz: zoneinfo.ZoneInfo, instant: datetime, step: timedelta) -> bool:
    return not (instant.astimezone(tz).utcoffset() or timedelta(0)) % step


@functools.lru_cache(maxsize=100_000)
def _day_offsets_fit(tz_key: str, day: date, step: timedelta) -> bool:
    """The zone's offset at 00:00 and 12:00 UTC of `day` is a whole number of `step` (cached:
    a year's check is 730 zone conversions, and questions repeat)."""
    tz = zoneinfo.ZoneInfo(tz_key)
    midnight = datetime.combine(day, datetime.min.time(), UTC)
    return _offset_fits(tz, midnight, step) and _offset_fits(
        tz, midnight + timedelta(hours=12), step
    )


def _offsets_fit(tz: zoneinfo.ZoneInfo, start: datetime, end: datetime, step: timedelta) -> bool:
    """True when the zone's UTC offset is a whole number of `step` all over [start, end)
    (checked at both ends and twice a day between: offsets change at most once a day)."""
    if tz.key == "UTC":
        return True
    if not (_offset_fits(tz, start, step) and _offset_fits(tz, end, step)):
        return False
    first, last = start.astimezone(UTC).date(), end.astimezone(UTC).date()
    days = (first + timedelta(days=n) for n in range((last - first).days + 1))
    return all(_day_offsets_fit(tz.key, day, step) for day in days)


def _source_level(bucket: str, tz: zoneinfo.ZoneInfo, start: datetime, end: datetime) -> str:
    """The largest rollup whose buckets nest inside the asked buckets of zone `tz`."""
    if bucket == "1d" and _offsets_fit(tz, start, end, STEPS["1d"]):
        return "1d"
    if bucket in ("1d", "1h") and _offsets_fit(tz, start, end, STEPS["1h"]):
        return "1h"
    if _offsets_fit(tz, start, end, STEPS["15m"]):
        return "15m"
    raise RangeError(
        f"time zone {tz.key} has UTC offsets off the 15-minute grid in this range; "
        "ask in UTC instead"
    )


def aggregates(
    *,
    sensor_id: int,
    start: datetime,
    end: datetime,
    bucket: str,
    tz: zoneinfo.ZoneInfo | None = None,
) -> list[dict]:
    """Per bucket (15m, 1h or 1d; hours and days of `tz`, UTC by default) avg, min, max, sum and
    count of the readings in [start, end); buckets without readings are left out. The first and
    last bucket cover only the part of them inside the range."""
    tz = tz or zoneinfo.ZoneInfo("UTC")
    source = _source_level(bucket, tz, start, end)
    levels = LEVELS[LEVELS.index(source) :]
    q = _Sql()
    if bucket == "15m":
        target = f"date_bin(interval '15 minutes', x.bucket, {ORIGIN_SQL})"
    else:
        unit = "hour" if bucket == "1h" else "day"
        target = f"date_trunc('{unit}', x.bucket, {q.p(tz.key)})"
    union = _union(q, [sensor_id], start, end, levels)
    # Buckets travel as whole epoch seconds: turning 720 timestamps into aware datetimes in
    # the driver took longer than the query itself (bench/query hourly_30d: 2.2 of 5 ms).
    sql = f"""
        SELECT extract(epoch FROM {target})::bigint AS b, sum(x.sum), sum(x.count)::bigint,
               min(x.min), max(x.max)
        FROM ({union}) x GROUP BY 1 ORDER BY 1"""
    return [
        {"bucket": datetime.fromtimestamp(b, UTC), "avg": total / count, "min": low,
         "max": high, "sum": total, "count": count}
        for b, total, count, low, high in _fetch(sql, q.params)
    ]  # fmt: skip


def stats(*, sensor_id: int, start: datetime, end: datetime) -> dict:
    """min, max, avg, sum and count of the readings in [start, end) (None when there are none)."""
    q = _Sql()
    union = _union(q, [sensor_id], start, end, LEVELS)
    sql = f"SELECT sum(x.sum), sum(x.count)::bigint, min(x.min), max(x.max) FROM ({union}) x"
    [(total, count, low, high)] = _fetch(sql, q.params)
    count = count or 0
    return {
        "min": low,
        "max": high,
        "avg": total / count if count else None,
        "sum": total if count else None,
        "count": count,
    }


# --- energy of sites ----------------------------------------------------------------------
#
# Which sensors make a site's energy, and how (the rule every energy figure here follows):
#
# - an energy sensor of a `meter` device (the utility meter, fed by .sgl_v2 load profiles)
#   holds the kWh of each interval: its energy is the sum of its values. When the meter has
#   data in a bucket (an hour, a day), it is the site's energy for that bucket: it measures the
#   whole premises, which the other devices only part of.
# - an energy sensor of an HTTP-polled appliance stored as `sum` or `consumption` also holds
#   per-interval energy.
# - every other energy sensor (a Pi's `energy_kwh`) is a cumulative counter: the energy of a
#   quarter-hour is its last value minus the last value before it. A counter that went down was
#   reset (a restarted device): that quarter-hour counts from its lowest value instead.
#   Energy between two readings is booked in the quarter-hour of the later one.
# - a device without any energy sensor has its power integrated: mean power of each
#   quarter-hour with readings times 15 minutes (a device that was silent counts nothing).
# Generation sensors are not consumption and are left out. Units: Wh, kWh, MWh; W, kW, MW.

ENERGY_FACTORS = {"wh": 0.001, "kwh": 1.0, "mwh": 1000.0}
POWER_FACTORS = {"w": 1.0, "kw": 1000.0, "mw": 1_000_000.0}  # to W


@dataclass
class EnergyPlan:
    """The sensors of some sites and how each counts (see the rule above)."""

    modes: dict[int, str] = field(default_factory=dict)  # sensor id -> meter|interval|counter|power
    factors: dict[int, float] = field(default_factory=dict)  # to kWh (energy) or W (power)
    device_of: dict[int, int] = field(default_factory=dict)  # sensor id -> device id
    power_sensors: list[int] = field(default_factory=list)  # for power now and peak
    devices: dict[int, tuple[int, int | None]] = field(default_factory=dict)  # -> (site, room)
    # plan_keys' answers by time zones of the sites asked (the plan is never changed once made)
    keys: dict[frozenset, dict[int, str]] = field(default_factory=dict, repr=False, compare=False)
    _by_site: dict[int, list[tuple[int, str]]] | None = field(
        default=None, repr=False, compare=False
    )
    _json_members: dict[int, str] | None = field(default=None, repr=False, compare=False)

    def json_members(self) -> dict[int, str]:
        """sensor id -> `"<id>":["<mode>",<factor>,<device id>]`, a member of the JSON object
        `_recent_energy_sql` describes sensors with; made once per plan."""
        if self._json_members is None:
            self._json_members = {
                i: f'"{i}":["{mode}",{self.factors[i]!r},{self.device_of[i]}]'
                for i, mode in self.modes.items()
            }
        return self._json_members

    def sensors_of_site(self) -> dict[int, list[tuple[int, str]]]:
        """site id -> [(sensor id, mode)], in the plan's order; made once per plan."""
        if self._by_site is None:
            by_site: dict[int, list[tuple[int, str]]] = defaultdict(list)
            for sensor_id, mode in self.modes.items():
                by_site[self.devices[self.device_of[sensor_id]][0]].append((sensor_id, mode))
            self._by_site = dict(by_site)  # replaced, not changed: other threads may read it
        return self._by_site


_PLAN_SQL = """
SELECT se.id, se.kind, se.unit, se.device_id, d.kind, d.site_id, d.room_id,
       EXISTS (SELECT 1 FROM {polled} p WHERE p.device_id = se.device_id
               AND p.store_type IN ('sum', 'consumption'))
FROM {sensor} se JOIN {device} d ON d.id = se.device_id
WHERE se.kind IN ('energy', 'power') AND (%(all)s OR d.site_id = ANY(%(ids)s::bigint[]))
ORDER BY se.device_id, se.key"""


def energy_plan(*, site_ids: list[int] | None) -> EnergyPlan:
    """The plan of the given sites; None: of every site (no id list to send). One statement
    in plain SQL: through the ORM, building the query and its 1,000 rows took 3 ms of the
    fleet view."""
    return _plan_of(_fetch(*_plan_sql(site_ids=site_ids)))


def _plan_sql(*, site_ids: list[int] | None) -> tuple[str, dict]:
    # Whether a device is an appliance polled for energy per interval, in the same statement.
    sql = _PLAN_SQL.format(
        polled=PolledAppliance._meta.db_table,
        sensor=Sensor._meta.db_table,
        device=Device._meta.db_table,
    )
    return sql, {"all": site_ids is None, "ids": array_literal(site_ids or [])}


# What was last made from rows read again and again (the energy plan of every site, the grid),
# by name: (a key of the rows, what was made from them). Fetching and comparing the plan's
# 1,000 rows and the grid's 500 took 2.5 ms of the fleet view, making the plan and its keys from
# them 1.5 ms. The fleet view keys them by `fleet_version` (migration 0012: a number that moves
# on with every change they are made of), read before their rows, and reads the rows only when
# it moved; `energy_plan` keeps the rows themselves, which it reads anyway.
_MADE: dict[str, tuple[object, object]] = {}


def _made_from(name: str, version: int, rows_sql: tuple[str, dict], make):
    """What `make(rows)` gives for the rows of `rows_sql`, made again only when `version` (the
    `fleet_version` read before) is not the one the last rows were read under. (Rows read after
    the version may be newer than it; the next call then reads a newer version and reads them
    again: slower, never stale.)"""
    last = _MADE.get(name)
    if last is not None and last[0] == version:
        return last[1]
    value = make(_fetch(*rows_sql))
    _MADE[name] = (version, value)  # replaced, not changed: other threads may be reading it
    return value


def _plan_of(sensors: list[tuple]) -> EnergyPlan:
    """The plan from the rows of `_PLAN_SQL`; the last one made when the rows are the same
    (every input of the plan is in them)."""
    rows = tuple(sensors)
    last = _MADE.get("plan")
    if last is not None and last[0] == rows:
        return last[1]
    plan = _plan_made(list(rows))
    _MADE["plan"] = (rows, plan)  # replaced, not changed: other threads may be reading it
    return plan


def _plan_made(sensors: list[tuple]) -> EnergyPlan:
    plan = EnergyPlan()
    with_energy = {row[3] for row in sensors if row[1] == SensorKind.ENERGY}
    for sensor_id, kind, unit, device_id, device_kind, site_id, room_id, polled in sensors:
        plan.devices[device_id] = (site_id, room_id)
        plan.device_of[sensor_id] = device_id
        if kind == SensorKind.POWER:
            plan.power_sensors.append(sensor_id)
            plan.factors[sensor_id] = POWER_FACTORS.get(unit.strip().lower(), 1.0)
            if device_id not in with_energy:
                plan.modes[sensor_id] = "power"
            continue
        plan.factors[sensor_id] = ENERGY_FACTORS.get(unit.strip().lower(), 1.0)
        if device_kind == DeviceKind.METER:
            plan.modes[sensor_id] = "meter"
        elif polled:
            plan.modes[sensor_id] = "interval"
        else:
            plan.modes[sensor_id] = "counter"
    return plan


def _quarter_hours(q: _Sql, ids: list[int], lo: datetime, hi: datetime) -> str:
    """Rows (sensor_id, bucket, sum, count, min, max, last) per quarter-hour of [lo, hi); lo
    on a quarter-hour, hi anywhere (e.g. now: its quarter-hour so far comes from raw data)."""
    union = _union(q, ids, lo, hi, ("15m",))
    return f"""
        SELECT u.sensor_id, date_bin(interval '15 minutes', u.bucket, {ORIGIN_SQL}) AS bucket,
               sum(u.sum) AS sum, sum(u.count)::bigint AS count, min(u.min) AS min,
               max(u.max) AS max, (array_agg(u.last ORDER BY u.bucket DESC))[1] AS last
        FROM ({union}) u GROUP BY 1, 2"""


def energy_by_device(
    *,
    plan: EnergyPlan,
    lo: datetime,
    hi: datetime,
    tz: str,
    unit: str,
) -> list[tuple[datetime, int, str, float]]:
    """(local period start, device id, mode, kWh) per `unit` (hour, day, month) of zone `tz`
    over [lo, hi); lo must be on a quarter-hour. A counter's first quarter-hour counts from its
    last reading before `lo`."""
    if not plan.modes:
        return []
    q = _Sql()
    sql = _energy_sql(q, plan=plan, lo=lo, hi=hi, tz=tz, unit=unit, stored_last=False)
    return _periods_as_instants(_fetch(sql, q.params))


def site_energy_in_windows(
    *,
    site_groups: dict[int, int],
    spans: list[tuple[datetime, datetime]],
    weights: list[tuple[int, int, datetime, Decimal]],
) -> list[tuple[int, int, Decimal, int]]:
    """Each site's energy over windows, summed in one statement: (site id, window id, kWh,
    quarter-hours with data). A site's quarter-hour counts as `site_quarter_energy` counts it
    (the utility meter's where the meter reported in it, else the sum of the devices');
    `weights` (group, window id, quarter start, share of the quarter inside the window) say
    which quarter-hours make each window of the sites of a group (`site_groups`: site id to
    group, e.g. one per time zone). Only the quarter-hours of `spans` (UTC, on quarter-hours,
    covering every weighted one) are read: a window's count below its number of weighted
    quarter-hours means data is missing. Sums are numeric (exact): kWh as floats, each
    quarter's value turned to a decimal by its shortest text, as
    `Decimal(repr(kwh))`, before it is weighted."""
    plan = energy_plan(site_ids=list(site_groups))
    if not plan.modes or not weights or not spans:
        return []
    q = _Sql()
    # The spans are a table the rollups are read for (one scan of each span's quarter-hours in
    # one plan, spans without data costing an index probe each), not one UNION part per span.
    los, his = zip(*spans, strict=True)
    span_table = (
        f"SELECT * FROM unnest({q.array([str(t) for t in los], 'timestamptz')}, "
        f"{q.array([str(t) for t in his], 'timestamptz')}) AS sp(lo, hi)"
    )
    counters = [i for i, mode in plan.modes.items() if mode == "counter"]
    others = [i for i, mode in plan.modes.items() if mode != "counter"]
    parts = []
    for ids, counter in ((others, False), (counters, True)):
        if not ids:
            continue
        modes = _modes_table(q, plan, ids)
        # A counter's quarter-hour counts from the reading before it: the last of its previous
        # quarter-hour in the span, for the span's first the last reading before the span. Only
        # counters need that window (a sort); the rest are read as they come.
        prev = (
            """coalesce(lag(u.last) OVER (PARTITION BY u.sensor_id, sp.lo ORDER BY u.bucket),
                        (SELECT e.value FROM energy_readings e
                         WHERE e.sensor_id = u.sensor_id AND e.time < sp.lo
                         ORDER BY e.time DESC LIMIT 1))"""
            if counter
            else "NULL::float8"
        )
        # Rows of the 15m level are whole quarter-hours, one per sensor and bucket (a marked
        # quarter-hour is read from raw instead of its rollup row): no regrouping.
        rows = _rows_between(q, "15m", ids, "sp.lo", "sp.hi")
        parts.append(f"""
        SELECT u.bucket, u.sum, u.count, u.min, u.last, m.mode, m.factor, m.device_id,
               {prev} AS prev
        FROM ({span_table}) sp CROSS JOIN LATERAL ({rows}) u
        JOIN ({modes}) m ON m.sensor_id = u.sensor_id""")
    devices = list(plan.devices)
    sites = [plan.devices[d][0] for d in devices]
    groups, window_ids, quarters, shares = zip(*weights, strict=True)
    sql = f"""
    WITH x AS ({" UNION ALL ".join(f"({part})" for part in parts)}),
    e AS (SELECT bucket, device_id, mode, sum(factor * {_QUARTER_KWH}) AS sum
          FROM x GROUP BY 1, 2, 3),
    d AS (SELECT * FROM unnest({q.array(devices, "bigint")}, {q.array(sites, "bigint")},
                               {q.array([site_groups[s] for s in sites], "int")})
          AS d(device_id, site_id, grp)),
    s AS (
        SELECT d.site_id, d.grp, e.bucket,
               CASE WHEN bool_or(e.mode = 'meter') THEN sum(e.sum) FILTER (WHERE e.mode = 'meter')
                    ELSE sum(e.sum) END AS kwh
        FROM e JOIN d ON d.device_id = e.device_id
        GROUP BY 1, 2, 3
    ),
    w AS (SELECT w.grp, w.window_id, to_timestamp(w.epoch) AS bucket, w.share
          FROM unnest({q.array(list(groups), "int")}, {q.array(list(window_ids), "int")},
                      {q.array([int(t.timestamp()) for t in quarters], "bigint")},
                      {q.array([str(share) for share in shares], "numeric")})
          AS w(grp, window_id, epoch, share))
    SELECT s.site_id, w.window_id, sum(s.kwh::text::numeric * w.share), count(*)
    FROM s JOIN w ON w.grp = s.grp AND w.bucket = s.bucket
    GROUP BY 1, 2"""
    return _fetch(sql, q.params)


def _modes_table(q: _Sql, plan: EnergyPlan, ids: list[int]) -> str:
    """The sensors `ids` of `plan` as rows m(sensor_id, mode, factor, device_id)."""
    return (
        f"SELECT * FROM unnest({q.array(ids, 'bigint')}, "
        f"{q.array([plan.modes[i] for i in ids], 'text')}, "
        f"{q.array([plan.factors[i] for i in ids], 'float8')}, "
        f"{q.array([plan.device_of[i] for i in ids], 'bigint')}) "
        "AS m(sensor_id, mode, factor, device_id)"
    )


def _energy_sql(
    q: _Sql, *, plan: EnergyPlan, lo: datetime, hi: datetime, tz: str, unit: str,
    stored_last: bool,
) -> str:  # fmt: skip
    """The statement of `energy_by_device`. `stored_last`: `lo` is the end of stored
    beginnings of today that are current (`rollup_site_today`), so a counter's last reading
    before it is taken from `rollup_counter_today` where it was stored for this `lo`, instead
    of one probe of the readings per counter (250 at bench/query's fleet)."""
    ids = list(plan.modes)
    rows = _quarter_hours(q, ids, lo, hi)
    lo_p = q.p(lo)
    modes = _modes_table(q, plan, ids)
    if stored_last:
        modes = f"""
        SELECT m.*, c.sensor_id IS NOT NULL AS stored, c.last AS stored_last FROM ({modes}) m
        LEFT JOIN rollup_counter_today c ON c.sensor_id = m.sensor_id AND c.through = {lo_p}"""
    else:
        modes = f"SELECT m.*, false AS stored, NULL::float8 AS stored_last FROM ({modes}) m"
    return f"""
    WITH m AS ({modes}),
    x AS (
        SELECT x.*, m.mode, m.factor, m.device_id,
               coalesce(lag(x.last) OVER (PARTITION BY x.sensor_id ORDER BY x.bucket),
                        CASE WHEN m.mode <> 'counter' THEN NULL
                             WHEN m.stored THEN m.stored_last
                             ELSE (SELECT e.value FROM energy_readings e
                                   WHERE e.sensor_id = x.sensor_id AND e.time < {lo_p}
                                   ORDER BY e.time DESC LIMIT 1) END) AS prev
        FROM ({rows}) x JOIN m ON m.sensor_id = x.sensor_id
    )
    {_ENERGY_OF_QUARTERS.format(unit=q.p(unit), tz=q.p(tz))}"""


# A quarter-hour's energy before its sensor's factor, by the sensor's mode, from its row of `x`.
_QUARTER_KWH = """CASE mode
               WHEN 'counter' THEN CASE WHEN prev IS NOT NULL AND last >= prev THEN last - prev
                                        ELSE last - min END
               WHEN 'power' THEN sum / count / 4000.0
               ELSE sum END"""

# The energy per period, device and mode of the quarter-hours `x` (sensor_id, bucket, sum, count,
# min, max, last, mode, factor, device_id, prev: the sensor's reading before the quarter-hour).
_ENERGY_OF_QUARTERS = (
    """
    SELECT extract(epoch FROM date_trunc({unit}, bucket, {tz}))::bigint AS period,
           device_id, mode, sum(factor * """
    + _QUARTER_KWH
    + """)
    FROM x GROUP BY 1, 2, 3 ORDER BY 1, 2"""
)


def _recent_energy_sql(
    q: _Sql, *, plan: EnergyPlan, ids: list[int], lo: datetime, hi: datetime, tz: str, unit: str
) -> str:
    """What `_energy_sql(stored_last=True)` answers, with the quarter-hours summed straight from
    the readings: for a short [lo, hi) after a stored end of today, which nothing rolled up
    covers as a rule (the rollups and marks would be probed for nothing). The readings are read
    by time (the BRIN index; `sensor_id + 0` keeps the primary key's index out, whose 500
    probes took 3 ms at 50M readings), and each sensor is described by a JSON object of modes,
    factors and devices: by sensor, the planner cannot know how few readings a recent range
    holds (it guessed 1 row at 50M), and joined with the sensors afterwards it compared every
    row with every sensor (250,000 comparisons, 42 ms). `ids`: the sensors of `plan` counted."""
    members = plan.json_members()
    sensors_p, lo_p = q.p("{" + ",".join([members[i] for i in ids]) + "}"), q.p(lo)
    ids_p = q.array(ids, "bigint")
    return f"""
    WITH r AS (
        SELECT e.sensor_id, date_bin(interval '15 minutes', e.time, {ORIGIN_SQL}) AS bucket,
               sum(e.value) AS sum, count(*) AS count, min(e.value) AS min,
               max(e.value) AS max, (array_agg(e.value ORDER BY e.time DESC))[1] AS last
        FROM energy_readings e
        WHERE e.time >= {lo_p} AND e.time < {q.p(hi)} AND e.sensor_id + 0 = ANY({ids_p})
        GROUP BY 1, 2
    ),
    x AS (
        SELECT r.*, s.a ->> 0 AS mode, (s.a ->> 1)::float8 AS factor,
               (s.a ->> 2)::bigint AS device_id,
               coalesce(lag(r.last) OVER (PARTITION BY r.sensor_id ORDER BY r.bucket),
                        CASE WHEN s.a ->> 0 <> 'counter' THEN NULL
                             WHEN c.sensor_id IS NOT NULL THEN c.last
                             ELSE (SELECT e.value FROM energy_readings e
                                   WHERE e.sensor_id = r.sensor_id AND e.time < {lo_p}
                                   ORDER BY e.time DESC LIMIT 1) END) AS prev
        FROM r CROSS JOIN LATERAL (SELECT {sensors_p}::jsonb -> r.sensor_id::text AS a) s
        LEFT JOIN rollup_counter_today c ON c.sensor_id = r.sensor_id AND c.through = {lo_p}
    )
    {_ENERGY_OF_QUARTERS.format(unit=q.p(unit), tz=q.p(tz))}"""


def _periods_as_instants(rows: list[tuple]) -> list[tuple]:
    """Rows (epoch seconds, ...) as (aware UTC datetime, ...). Periods travel as epoch seconds:
    the driver parses every timestamptz in Python (2 µs each: 1 ms for the 500 rows of the
    fleet's rest of today), and a result holds only a few distinct periods."""
    instants: dict[int, datetime] = {}
    for row in rows:
        if row[0] not in instants:
            instants[row[0]] = datetime.fromtimestamp(row[0], UTC)
    return [(instants[row[0]], *row[1:]) for row in rows]


def money(kwh: float, tariff: Decimal) -> Decimal:
    return (Decimal(repr(kwh)) * tariff).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def site_energy(*, site: Site, start: date, end: date, unit: str = "day") -> list[dict]:
    """Energy and cost of a site per local hour, day or month for the local days [start, end).

    Each period: `start` (aware, local), `energy_kwh`, `cost` (Decimal, site tariff), `currency`,
    `source` ('meter' when the utility meter's data is used, else 'devices'), `devices`
    ({device id: kWh}) and `rooms` ({room id or None: kWh}), the last two without the meter.
    Periods without data are left out. DST days have 23 or 25 hours.
    """
    if unit not in ("hour", "day", "month"):
        raise ValueError("unit must be hour, day or month")
    tz = zoneinfo.ZoneInfo(site.timezone)
    lo = datetime.combine(start, datetime.min.time(), tz).astimezone(UTC)
    hi = datetime.combine(end, datetime.min.time(), tz).astimezone(UTC)
    return _site_periods(site=site, lo=lo, hi=hi, unit=unit)


def sites_energy_between(
    *, spans: list[tuple[Site, datetime, datetime]]
) -> list[tuple[float, Decimal]]:
    """(kWh, cost) of each (site, lo, hi) over [lo, hi) (lo on a quarter-hour, hi anywhere: now),
    counted per local day as the site's history counts them (the meter where it has one, else
    its devices). On plain PostgreSQL the whole local days a span starts with come from the
    stored `SiteDay` rows where they are current (`_stored_site_days`, as the fleet view reads
    them), up to the site's first day that is not; the rest is summed from the quarter-hours.
    Three round trips however many spans (stored days, energy plan, one statement for every
    distinct computed part: "this month" after its stored days is the same as "today"); the
    dashboard's "this month" and "last month by this day" then read a day of quarter-hours, not
    up to a month (75 of the dashboard's 121 ms of SQL at 10,000 devices, bench/pages)."""
    plan = energy_plan(site_ids=sorted({site.id for site, _, _ in spans}))
    starts, stored_kwh = _stored_span_starts(spans)
    computed: dict[tuple[int, datetime, datetime], int] = {}  # distinct computed spans
    for (site, _, hi), lo in zip(spans, starts, strict=True):
        if lo < hi and (site.id, lo, hi) not in computed:
            computed[site.id, lo, hi] = len(computed)
    zones = {site.id: site.timezone for site, _, _ in spans}
    results = _spans_energy(plan, [(*key, zones[key[0]]) for key in computed])
    totals = []
    for (site, _, hi), lo, kwh in zip(spans, starts, stored_kwh, strict=True):
        rows = results[computed[site.id, lo, hi]] if (site.id, lo, hi) in computed else []
        own = _site_plan(plan, site.id)
        kwh += sum(period["energy_kwh"] for period in _periods_of(site, own, rows))
        totals.append((kwh, money(kwh, site.tariff_per_kwh)))
    return totals


def _spans_energy(
    plan: EnergyPlan, spans: list[tuple[int, datetime, datetime, str]]
) -> list[list[tuple[datetime, int, str, float]]]:
    """For each span (site id, lo, hi, the site's zone): `energy_by_device`'s rows per local day
    of the site's sensors in `plan` over [lo, hi), all in one statement. The spans and their
    sensors are a table the quarter-hours are read for (each span's sensor by the rollups'
    keys), so the statement is planned once however many spans: one statement per span took
    the dashboard 1-1.5 ms of planning each, 9 of them for 3 sites (bench/pages)."""
    results: list[list[tuple]] = [[] for _ in spans]
    ids = list(plan.modes)
    if not spans or not ids:
        return results
    q = _Sql()
    step = STEPS["15m"]
    bounds = []  # raw [lo, qlo), quarter-hours [qlo, qhi), raw [qhi, hi): as `_segments` cuts
    for _, lo, hi, _ in spans:
        qlo = min(ceil_to(lo, step), hi)
        bounds.append((lo, qlo, max(qlo, floor_to(hi, step)), hi))
    span_table = (
        f"SELECT * FROM unnest({q.array(list(range(len(spans))), 'int')}, "
        f"{q.array([site_id for site_id, *_ in spans], 'bigint')}, "
        + "".join(f"{q.array([str(b[n]) for b in bounds], 'timestamptz')}, " for n in range(4))
        + f"{q.array([zone for *_, zone in spans], 'text')}) "
        "AS sp(span, site_id, lo, qlo, qhi, hi, tz)"
    )
    sensor_table = (
        f"SELECT * FROM unnest({q.array(ids, 'bigint')}, "
        f"{q.array([plan.modes[i] for i in ids], 'text')}, "
        f"{q.array([plan.factors[i] for i in ids], 'float8')}, "
        f"{q.array([plan.device_of[i] for i in ids], 'bigint')}, "
        f"{q.array([plan.devices[plan.device_of[i]][0] for i in ids], 'bigint')}) "
        "AS sn(sensor_id, mode, factor, device_id, site_id)"
    )
    one = "ARRAY[ss.sensor_id]"  # the span's sensor (`ss`: no alias `_rows_between` uses)
    raw = [
        _rows_between(q, "raw", [], "ss.lo", "ss.qlo", ids_p=one),
        _rows_between(q, "raw", [], "ss.qhi", "ss.hi", ids_p=one),
    ]
    # The 15m level's rows are whole quarter-hours already, one per sensor and bucket (a marked
    # one read from raw instead of its rollup row); only the raw edges are grouped into theirs.
    # Only counters need the quarter-hour before (a window: a sort); the rest are read as they
    # come.
    sql = f"""
    WITH ss AS MATERIALIZED (
        SELECT sp.span, sp.lo, sp.qlo, sp.qhi, sp.hi, sp.tz, sn.sensor_id, sn.mode, sn.factor,
               sn.device_id
        FROM ({span_table}) sp JOIN ({sensor_table}) sn ON sn.site_id = sp.site_id
    ),
    k AS (
        SELECT ss.span, ss.sensor_id, ss.mode, ss.factor, ss.device_id, ss.lo, ss.tz, r.bucket,
               r.sum, r.count, r.min, r.last
        FROM ss CROSS JOIN LATERAL ({_rows_between(q, "15m", [], "ss.qlo", "ss.qhi", ids_p=one)}) r
        UNION ALL
        SELECT ss.span, ss.sensor_id, ss.mode, ss.factor, ss.device_id, ss.lo, ss.tz, r.bucket,
               r.sum, r.count, r.min, r.last
        FROM ss CROSS JOIN LATERAL (
            SELECT date_bin(interval '15 minutes', u.bucket, {ORIGIN_SQL}) AS bucket,
                   sum(u.sum) AS sum, sum(u.count)::bigint AS count, min(u.min) AS min,
                   (array_agg(u.last ORDER BY u.bucket DESC))[1] AS last
            FROM ({" UNION ALL ".join(f"({part})" for part in raw)}) u GROUP BY 1) r
    ),
    x AS (
        SELECT k.*, NULL::float8 AS prev FROM k WHERE k.mode <> 'counter'
        UNION ALL
        SELECT k.*, coalesce(lag(k.last) OVER (PARTITION BY k.span, k.sensor_id ORDER BY k.bucket),
                             (SELECT e.value FROM energy_readings e
                              WHERE e.sensor_id = k.sensor_id AND e.time < k.lo
                              ORDER BY e.time DESC LIMIT 1))
        FROM k WHERE k.mode = 'counter'
    )
    SELECT extract(epoch FROM date_trunc('day', bucket, tz))::bigint AS period, span,
           device_id, mode, sum(factor * {_QUARTER_KWH})
    FROM x GROUP BY 1, 2, 3, 4 ORDER BY 1, 3"""
    for period, span, device_id, mode, kwh in _periods_as_instants(_fetch_prepared(sql, q.params)):
        results[span].append((period, device_id, mode, kwh))
    return results


def _stored_span_starts(
    spans: list[tuple[Site, datetime, datetime]],
) -> tuple[list[datetime], list[float]]:
    """Per span, where its computed part starts and the kWh of the stored days before that: the
    span's whole local days (before the local day of its site's latest `hi`, which is not over)
    while their `SiteDay` rows are current; a day without a row and without marks had no
    readings. One statement; none on TimescaleDB or when no span holds a whole day."""
    starts = [lo for _, lo, _ in spans]
    stored_kwh = [0.0] * len(spans)
    if is_timescale(connection):
        return starts, stored_kwh
    zones = {site.id: site.timezone for site, _, _ in spans}
    latest: dict[int, datetime] = {}
    for site, _, hi in spans:
        latest[site.id] = max(hi, latest.get(site.id, hi))
    today = {site_id: hi.astimezone(zoneinfo.ZoneInfo(zones[site_id])).date()
             for site_id, hi in latest.items()}  # fmt: skip
    whole = []  # per span: its first and end whole local day to read from the store
    for site, lo, hi in spans:
        tz = zoneinfo.ZoneInfo(site.timezone)
        first = lo.astimezone(tz).date()
        if local_midnight(first, tz) < lo:
            first += timedelta(days=1)
        end = min(hi.astimezone(tz).date(), today[site.id])
        whole.append((first, end) if first < end else None)
    if not any(whole):
        return starts, stored_kwh
    period = Period(kind="day", first=min(w[0] for w in whole if w),
                    end=max(w[1] for w in whole if w))  # fmt: skip
    current, first_live, _ = _stored_site_days(zones=zones, period=period, today=today, latest=None)
    for i, ((site, _, _), days) in enumerate(zip(spans, whole, strict=True)):
        if days is None:
            continue
        first, end = days
        end = min(end, max(first, first_live.get(site.id, end)))
        stored_kwh[i] = sum(
            current[site.id, first + timedelta(days=n)][1]
            for n in range((end - first).days)
            if (site.id, first + timedelta(days=n)) in current
        )
        if end > first:
            starts[i] = local_midnight(end, zoneinfo.ZoneInfo(site.timezone))
    return starts, stored_kwh


def _site_plan(plan: EnergyPlan, site_id: int) -> EnergyPlan:
    """The part of a plan of several sites that is one site's."""
    own = EnergyPlan()
    for sensor_id, device_id in plan.device_of.items():
        if plan.devices[device_id][0] != site_id:
            continue
        own.device_of[sensor_id] = device_id
        own.devices[device_id] = plan.devices[device_id]
        own.factors[sensor_id] = plan.factors[sensor_id]
        if sensor_id in plan.modes:
            own.modes[sensor_id] = plan.modes[sensor_id]
    own.power_sensors = [i for i in plan.power_sensors if i in own.device_of]
    return own


def _site_periods(*, site: Site, lo: datetime, hi: datetime, unit: str) -> list[dict]:
    plan = energy_plan(site_ids=[site.id])
    rows = energy_by_device(plan=plan, lo=lo, hi=hi, tz=site.timezone, unit=unit)
    return _periods_of(site, plan, rows)


def _periods_of(
    site: Site, plan: EnergyPlan, rows: list[tuple[datetime, int, str, float]]
) -> list[dict]:
    """The site's periods from `energy_by_device`'s rows: the meter where it has one."""
    tz = zoneinfo.ZoneInfo(site.timezone)
    periods: dict[datetime, dict] = {}
    for period, device_id, mode, kwh in rows:
        entry = periods.setdefault(
            period, {"meter": None, "devices": defaultdict(float), "rooms": defaultdict(float)}
        )
        if mode == "meter":
            entry["meter"] = (entry["meter"] or 0.0) + kwh
        else:
            entry["devices"][device_id] += kwh
            entry["rooms"][plan.devices[device_id][1]] += kwh
    result = []
    for period, entry in sorted(periods.items()):
        source = "devices" if entry["meter"] is None else "meter"
        kwh = entry["meter"] if source == "meter" else sum(entry["devices"].values())
        result.append(
            {
                "start": period.astimezone(tz),
                "energy_kwh": kwh,
                "cost": money(kwh, site.tariff_per_kwh),
                "currency": site.currency,
                "source": source,
                "devices": dict(entry["devices"]),
                "rooms": dict(entry["rooms"]),
            }
        )
    return result


# --- dashboard metrics --------------------------------------------------------------------

POWER_FRESH = timedelta(minutes=15)


def latest_power(*, plan: EnergyPlan, now: datetime) -> dict[int, tuple[datetime, float]]:
    """Latest reading (W) of each power sensor, when under 15 minutes old, by device id."""
    if not plan.power_sensors:
        return {}
    q = _Sql()
    sql = f"""
        SELECT s.id, r.time, r.value FROM unnest({q.array(plan.power_sensors, "bigint")}) AS s(id)
        CROSS JOIN LATERAL (SELECT e.time, e.value FROM energy_readings e
                            WHERE e.sensor_id = s.id AND e.time <= {q.p(now)}
                              AND e.time > {q.p(now - POWER_FRESH)}
                            ORDER BY e.time DESC LIMIT 1) r"""
    latest: dict[int, tuple[datetime, float]] = {}
    for sensor_id, time, value in _fetch(sql, q.params):
        device_id = plan.device_of[sensor_id]
        watts = value * plan.factors[sensor_id]
        seen, total = latest.get(device_id, (time, 0.0))
        latest[device_id] = (max(seen, time), total + watts)
    return latest


def latest_power_by_device(
    *, device_ids: list[int], now: datetime, fresh: timedelta = POWER_FRESH
) -> dict[int, tuple[str, str, float | None]]:
    """Device id -> (key, unit, latest value as stored or None) of its first power sensor (by
    key, the order the device's sensors are listed in), the value when younger than `fresh`;
    devices without a power sensor are left out. One statement for the sensors and their
    readings (a page of the fleet)."""
    if not device_ids:
        return {}
    q = _Sql()
    sql = f"""
        SELECT s.device_id, s.key, s.unit, r.value
        FROM (SELECT DISTINCT ON (se.device_id) se.id, se.device_id, se.key, se.unit
              FROM {Sensor._meta.db_table} se
              WHERE se.device_id = ANY({q.array(device_ids, "bigint")})
                AND se.kind = {q.p(SensorKind.POWER.value)}
              ORDER BY se.device_id, se.key) s
        LEFT JOIN LATERAL (SELECT e.value FROM energy_readings e
                           WHERE e.sensor_id = s.id AND e.time <= {q.p(now)}
                             AND e.time > {q.p(now - fresh)}
                           ORDER BY e.time DESC LIMIT 1) r ON true"""
    return {device_id: (key, unit, value) for device_id, key, unit, value in _fetch(sql, q.params)}


def latest_and_minute_means(
    *,
    sensor_ids: list[int],
    series_ids: list[int],
    lo: datetime,
    now: datetime,
    fresh: timedelta = POWER_FRESH,
) -> tuple[dict[int, tuple[datetime, float]], list[tuple[int, float, float]]]:
    """The latest reading (time, value as stored) of each of `sensor_ids`, when younger than
    `fresh`; and (sensor id, minute as Unix seconds, mean value) of the readings of `series_ids`
    over [lo, now), in time order: an hour of a dashboard chart is at most 60 points a sensor,
    however often it reports. One round trip for both. The minutes travel as numbers, which is
    what the charts take: parsed as timestamps they cost the dashboard 2 µs each (900 for 15
    devices)."""
    statements = []
    if sensor_ids:
        q = _Sql("l")
        statements.append((f"""
        SELECT s.id, r.time, r.value FROM unnest({q.array(sensor_ids, "bigint")}) AS s(id)
        CROSS JOIN LATERAL (SELECT e.time, e.value FROM energy_readings e
                            WHERE e.sensor_id = s.id AND e.time <= {q.p(now)}
                              AND e.time > {q.p(now - fresh)}
                            ORDER BY e.time DESC LIMIT 1) r""", q.params))  # fmt: skip
    if series_ids:
        q = _Sql("m")
        statements.append((f"""
        SELECT sensor_id, extract(epoch FROM date_bin(interval '1 minute', time, {ORIGIN_SQL}))
                              ::float8 AS minute, avg(value)
        FROM energy_readings
        WHERE sensor_id = ANY({q.array(series_ids, "bigint")})
          AND time >= {q.p(lo)} AND time < {q.p(now)}
        GROUP BY 1, 2 ORDER BY 1, 2""", q.params))  # fmt: skip
    results = _fetch_each(statements) if statements else []
    latest = results.pop(0) if sensor_ids else []
    means = results.pop(0) if series_ids else []
    return {sensor_id: (time, value) for sensor_id, time, value in latest}, means


def power_by_quarter(
    *, plan: EnergyPlan, lo: datetime, hi: datetime
) -> list[tuple[datetime, int, float]]:
    """(quarter-hour, device id, mean W) of the power sensors over [lo, hi)."""
    if not plan.power_sensors:
        return []
    q = _Sql()
    rows = _quarter_hours(q, plan.power_sensors, lo, hi)
    ids = plan.power_sensors
    sql = f"""
        SELECT date_bin(interval '15 minutes', x.bucket, {ORIGIN_SQL}) AS quarter, f.device_id,
               sum(x.sum / x.count * f.factor)
        FROM ({rows}) x
        JOIN unnest({q.array(ids, "bigint")},
                    {q.array([plan.device_of[i] for i in ids], "bigint")},
                    {q.array([plan.factors[i] for i in ids], "float8")})
             AS f(sensor_id, device_id, factor)
          ON f.sensor_id = x.sensor_id
        GROUP BY 1, 2"""
    return _fetch(sql, q.params)


def site_metrics_list(*, user: AbstractBaseUser) -> QuerySet[SiteMetrics]:
    """Dashboard figures of the sites this user may see (refreshed every 5 minutes)."""
    return SiteMetrics.objects.filter(site__in=site_list(user=user).values("id")).select_related(
        "site"
    )


def room_metrics_list(*, user: AbstractBaseUser, site: Site | None = None) -> QuerySet[RoomMetrics]:
    """Dashboard figures of the rooms this user may see, optionally of one site."""
    qs = RoomMetrics.objects.filter(room__in=room_list(user=user).values("id")).select_related(
        "room"
    )
    return qs if site is None else qs.filter(site=site)


def rooms_of(*, site_ids: list[int]) -> dict[int, list[int]]:
    rooms: dict[int, list[int]] = defaultdict(list)
    for room_id, site_id in Room.objects.filter(site_id__in=site_ids).values_list("id", "site_id"):
        rooms[site_id].append(room_id)
    return rooms


# --- a site's history and the operators' analytics ----------------------------------------
#
# A period is a local day, an ISO week (Monday first), a calendar month or a calendar year in
# the site's time zone, shown per hour, day, day and month: a DST day has 23 or 25 hours.

PERIOD_UNITS = {"day": "hour", "week": "day", "month": "day", "year": "month"}
ANALYTICS_PERIODS = tuple(PERIOD_UNITS)
# The zone where a calendar day begins first (UTC+14): a period has begun nowhere before its first
# midnight there.
EARLIEST_ZONE = zoneinfo.ZoneInfo("Etc/GMT-14")
EARLIEST_DAY, LATEST_DAY = date(2000, 1, 1), date(2099, 12, 31)
_ISO_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
SUM_MODES = ("meter", "interval")  # sensors whose values are energy per interval
KIND_LABELS = dict(DeviceKind.choices)


def local_midnight(day: date, tz: zoneinfo.ZoneInfo) -> datetime:
    """The UTC instant a local day of zone `tz` begins."""
    return datetime.combine(day, datetime.min.time(), tz).astimezone(UTC)


class PeriodError(ValueError):
    """A period or date that cannot be read; the message says what to send instead."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Period:
    """The local days [first, end) of one day, week, month or year."""

    kind: str
    first: date
    end: date

    @property
    def unit(self) -> str:
        return PERIOD_UNITS[self.kind]

    def previous(self) -> "Period":
        return period_containing(kind=self.kind, day=self.first - timedelta(days=1))

    def next(self) -> "Period":
        return period_containing(kind=self.kind, day=self.end)

    def is_future(self, now: datetime, tz: zoneinfo.ZoneInfo = EARLIEST_ZONE) -> bool:
        """Nothing of the period has come yet at `now` in zone `tz` (by default: in any zone),
        so nothing can have been measured in it."""
        return now < local_midnight(self.first, tz)

    def days(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range((self.end - self.first).days)]

    def bounds(self, tz: zoneinfo.ZoneInfo) -> tuple[datetime, datetime]:
        """The period as UTC instants, from its first local midnight to the one after it."""
        return local_midnight(self.first, tz), local_midnight(self.end, tz)

    def slots(self, tz: zoneinfo.ZoneInfo) -> list[datetime]:
        """Local start of each hour, day or month of the period: 23 or 25 hours on DST days."""
        if self.unit == "hour":
            lo, hi = self.bounds(tz)
            hours = []
            while lo < hi:
                hours.append(lo.astimezone(tz))
                lo += timedelta(hours=1)
            return hours
        if self.unit == "day":
            days = (self.end - self.first).days
            return [
                datetime.combine(self.first + timedelta(days=n), datetime.min.time(), tz)
                for n in range(days)
            ]
        return [datetime(self.first.year, month, 1, tzinfo=tz) for month in range(1, 13)]


def period_containing(*, kind: str, day: date) -> Period:
    """The day, ISO week (Monday first), calendar month or calendar year containing `day`."""
    if kind == "day":
        return Period(kind, day, day + timedelta(days=1))
    if kind == "week":
        monday = day - timedelta(days=day.weekday())
        return Period(kind, monday, monday + timedelta(days=7))
    if kind == "month":
        first = day.replace(day=1)
        return Period(kind, first, (first + timedelta(days=32)).replace(day=1))
    if kind == "year":
        return Period(kind, date(day.year, 1, 1), date(day.year + 1, 1, 1))
    raise ValueError(f"unknown period {kind!r}")


def period_parse(
    *,
    kind: str | None,
    day: str | None,
    today: date,
    kinds: tuple[str, ...] = tuple(PERIOD_UNITS),
) -> Period:
    """The period that `?period=&date=` ask for: the day, week, month or year containing the
    date (YYYY-MM-DD; today when absent). Raises PeriodError saying what to send instead."""
    kind = kind or "day"
    if kind not in kinds:
        choices = f"{', '.join(kinds[:-1])} or {kinds[-1]}"
        raise PeriodError("period", f"{kind[:20]!r} is not a period; use {choices}.")
    value = today
    if day:
        if not _ISO_DAY.match(day):
            raise PeriodError(
                "date", f"{day[:20]!r} is not a date; use YYYY-MM-DD, e.g. 2026-10-25."
            )
        try:
            value = date.fromisoformat(day)
        except ValueError:
            raise PeriodError("date", f"{day!r} is not a day of the calendar.") from None
    if not EARLIEST_DAY <= value <= LATEST_DAY:
        raise PeriodError(
            "date", f"Pick a date between {EARLIEST_DAY.isoformat()} and {LATEST_DAY.isoformat()}."
        )
    return period_containing(kind=kind, day=value)


def site_for_user(*, user: AbstractBaseUser, site_id: int) -> Site | None:
    """The site if this user may see it: a resident their own, an operator any."""
    return site_list(user=user).prefetch_related(None).filter(pk=site_id).first()


# Figures as shown, and how they add up. Each row a page or the API shows (an hour, day or month
# of a site; a device; a room; a site's local day in the grid's figures) is rounded once, half
# up, from its exact energy: energy to ENERGY_SHOWN kWh, its cost to the currency's minor unit.
# A total is the sum of its rows as shown, never the rounding of an exact sum, so the rows shown
# always add up to the total shown: three hours of 0.3333 kWh show 0.333 each and 0.999 in all.
# A watt-hour is what meters resolve; a coarser step (0.01 kWh) made a day of 24 hours of
# 0.41667 kWh add up to 10.08 kWh instead of the 10.008 shown now.
ENERGY_SHOWN = Decimal("0.001")  # a watt-hour


def shown_kwh(kwh: float) -> Decimal:
    """Energy as shown: to ENERGY_SHOWN kWh, half up."""
    return Decimal(repr(kwh)).quantize(ENERGY_SHOWN, rounding=ROUND_HALF_UP)


def shown_cost(kwh: float, *, tariff: Decimal, currency: str) -> Decimal:
    """The cost of `kwh` (exact) at `tariff`, rounded once to the currency's minor unit."""
    return round_money(Decimal(repr(kwh)) * tariff, currency)


def _slot_key(start: datetime, unit: str) -> object:
    """What identifies an hour (its instant), a day (its local date) or a month."""
    if unit == "hour":
        return start.astimezone(UTC)
    if unit == "day":
        return start.date()
    return (start.year, start.month)


def _slots_with_energy(
    starts: list[datetime], end: datetime, entries: dict, unit: str, site: Site
) -> list:
    slots = []
    for n, start in enumerate(starts):
        entry = entries.get(_slot_key(start, unit))
        slots.append(
            {
                "start": start,
                "end": starts[n + 1] if n + 1 < len(starts) else end,
                "energy_kwh": shown_kwh(entry["energy_kwh"]) if entry else None,
                "cost": shown_cost(
                    entry["energy_kwh"], tariff=site.tariff_per_kwh, currency=site.currency
                )
                if entry
                else None,
                "source": entry["source"] if entry else None,
                "devices": entry["devices"] if entry else {},
                "rooms": entry["rooms"] if entry else {},
            }
        )
    return slots


def _total(slots: list[dict], site: Site) -> tuple[Decimal, Decimal]:
    """The sums of the slots' energy and cost as shown."""
    kwh = sum((s["energy_kwh"] for s in slots if s["energy_kwh"] is not None), Decimal("0.00"))
    zero = round_money(Decimal(0), site.currency)
    return kwh, sum((s["cost"] for s in slots if s["cost"] is not None), zero)


def _shares(kwh_by_id: dict, names: dict, total: Decimal, site: Site) -> list[dict]:
    return sorted(
        (
            {
                **names[key],
                "energy_kwh": shown_kwh(kwh),
                "cost": shown_cost(kwh, tariff=site.tariff_per_kwh, currency=site.currency),
                "share_pct": float(100 * shown_kwh(kwh) / total) if total > 0 else None,
            }
            for key, kwh in kwh_by_id.items()
        ),
        key=lambda row: (-row["energy_kwh"], row["name"]),
    )


def site_history(*, site: Site, period: Period, now: datetime) -> dict:
    """Energy and cost of a site in each hour, day or month of `period` and of the period before
    it, the comparison of the two, and the period's energy by device and by room, all rounded
    as shown (`shown_kwh`, `shown_cost`) with totals summed from the rounded rows.

    Slots without data have `energy_kwh` None; `future` says the period has not begun in the
    site's time. While the period is in progress (or still to
    come) it is compared with the previous period's slots up to the same one (`basis`
    'to_date'), else with the whole previous period. Energy the meter measured beyond what the
    devices did is `unattributed_kwh`. Four queries, whatever the period.
    """
    tz = zoneinfo.ZoneInfo(site.timezone)
    previous = period.previous()
    entries = {
        _slot_key(entry["start"], period.unit): entry
        for entry in site_energy(site=site, start=previous.first, end=period.end, unit=period.unit)
    }
    lo, hi = period.bounds(tz)
    slots = _slots_with_energy(period.slots(tz), hi.astimezone(tz), entries, period.unit, site)
    before = _slots_with_energy(previous.slots(tz), lo.astimezone(tz), entries, period.unit, site)
    kwh, cost = _total(slots, site)
    previous_kwh, previous_cost = _total(before, site)

    basis, compared_kwh = "whole", previous_kwh
    if now < hi:
        elapsed = sum(1 for s in slots if s["start"] <= now)
        basis, compared_kwh = "to_date", _total(before[:elapsed], site)[0]
    change = float(100 * (kwh - compared_kwh) / compared_kwh) if compared_kwh > 0 else None

    device_kwh: dict[int, float] = defaultdict(float)
    room_kwh: dict[int | None, float] = defaultdict(float)
    for slot in slots:
        for device_id, value in slot["devices"].items():
            device_kwh[device_id] += value
        for room_id, value in slot["rooms"].items():
            room_kwh[room_id] += value
    device_names, room_names = {}, {None: {"id": None, "name": "No room"}}
    for row in Device.objects.filter(site=site).values(
        "id", "uid", "name", "kind", "room_id", "room__name"
    ):
        device_names[row["id"]] = {
            "id": row["id"],
            "uid": row["uid"],
            "name": row["name"] or row["uid"],
            "kind": KIND_LABELS.get(row["kind"], row["kind"]),
            "room": row["room__name"],
        }
        if row["room_id"] is not None:
            room_names[row["room_id"]] = {"id": row["room_id"], "name": row["room__name"]}

    for slot in (*slots, *before):
        del slot["devices"], slot["rooms"]
    devices = _shares(device_kwh, device_names, kwh, site)
    # What the meter measured beyond the devices, as the rest of the shown total.
    unattributed = max(Decimal("0.00"), kwh - sum(row["energy_kwh"] for row in devices))
    return {
        "period": period,
        "slots": slots,
        "energy_kwh": kwh,
        "cost": cost,
        "in_progress": lo <= now < hi,
        "future": period.is_future(now, tz),
        "previous": {"period": previous, "slots": before, "energy_kwh": previous_kwh,
                     "cost": previous_cost},
        "comparison": {"basis": basis, "previous_kwh": compared_kwh, "change_pct": change},
        "devices": devices,
        "rooms": _shares(room_kwh, room_names, kwh, site),
        "unattributed_kwh": unattributed,
        "unattributed_cost": round_money(unattributed * site.tariff_per_kwh, site.currency),
    }  # fmt: skip


def _plan_where(plan: EnergyPlan, keep) -> EnergyPlan:
    """The part of a plan whose sensors `keep(sensor_id)` accepts."""
    return EnergyPlan(
        modes={i: mode for i, mode in plan.modes.items() if keep(i)},
        factors=plan.factors,
        device_of=plan.device_of,
        devices=plan.devices,
    )


def energy_by_device_from_rollups(
    *, plan: EnergyPlan, lo: datetime, hi: datetime, tz: str, unit: str
) -> list[tuple[datetime, int, str, float]]:
    """What `energy_by_device` answers, with the sensors whose values are energy per interval
    (meters, summing appliances) read from the largest rollups that nest in the hours or days
    of `tz`: a day of a meter is 24 hourly rows or one daily row instead of 96. Counters and
    integrated power need their quarter-hours and take `energy_by_device`'s path."""
    sums = [i for i, mode in plan.modes.items() if mode in SUM_MODES]
    rest = _plan_where(plan, lambda i: plan.modes[i] not in SUM_MODES)
    rows = list(energy_by_device(plan=rest, lo=lo, hi=hi, tz=tz, unit=unit)) if rest.modes else []
    if not sums:
        return rows
    try:
        source = _source_level("1h" if unit == "hour" else "1d", zoneinfo.ZoneInfo(tz), lo, hi)
    except RangeError:
        source = "15m"
    q = _Sql()
    union = _union(q, sums, lo, hi, LEVELS[LEVELS.index(source) :])
    sql = f"""
        SELECT extract(epoch FROM date_trunc({q.p(unit)}, x.bucket, {q.p(tz)}))::bigint AS period,
               m.device_id, m.mode, sum(m.factor * x.sum)
        FROM (SELECT u.sensor_id, u.bucket, u.sum FROM ({union}) u) x
        JOIN unnest({q.array(sums, "bigint")}, {q.array([plan.modes[i] for i in sums], "text")},
                    {q.array([plan.factors[i] for i in sums], "float8")},
                    {q.array([plan.device_of[i] for i in sums], "bigint")})
             AS m(sensor_id, mode, factor, device_id)
          ON m.sensor_id = x.sensor_id
        GROUP BY 1, 2, 3"""
    rows += _periods_as_instants(_fetch(sql, q.params))
    return sorted(rows, key=lambda row: (row[0], row[1]))


def _most_energy_first(row: dict) -> tuple:
    return (-row["energy_kwh"], row["code"] or "")


def _zone_energy_by_day(
    *,
    plan: EnergyPlan,
    site_ids: set[int],
    zone: str,
    period: Period,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    metered: frozenset[tuple[int, date]] = frozenset(),
) -> dict[tuple[int, date], dict[str, float]]:
    """(site, local day) -> {'meter': kWh, 'devices': kWh} for sites of one time zone.

    Meters (and summing appliances) are read from the largest rollups. Devices count only on
    days without meter data, so their quarter-hours are read only for the sites that have
    such a day (up to today), and only from the first such day on: where the meters are
    complete, no quarter-hour is read at all.

    `since` and `until` (quarter-hours inside the period) cut the readings counted to
    [since, until): the beginning of a day in progress, which `rollup_site_today` holds, and
    what came after it; `metered` are the (site, day) whose meter is known to have data in
    the part left out, so their devices are not read either. With `since`, the sites' stored
    beginnings are current, and so are their counters' last readings before it
    (`rollup_counter_today`)."""
    tz = zoneinfo.ZoneInfo(zone)
    lo, hi = period.bounds(tz)
    lo, hi = max(lo, since or lo), min(hi, until or hi)
    # (partial, not a lambda: no Python call per (site, day), 0.3 ms of the fleet's today)
    days: dict[tuple[int, date], dict[str, float]] = defaultdict(
        functools.partial(defaultdict, float)
    )

    def site_of(sensor_id: int) -> int:
        return plan.devices[plan.device_of[sensor_id]][0]

    local_day: dict[datetime, date] = {}  # a few distinct starts in hundreds of rows

    def add(rows) -> None:
        for start, device_id, mode, kwh in rows:
            if start not in local_day:
                local_day[start] = start.astimezone(tz).date()
            source = "meter" if mode == "meter" else "devices"
            days[plan.devices[device_id][0], local_day[start]][source] += kwh

    if since is not None:
        _add_rest_of_today(
            add, plan=plan, site_ids=site_ids, day=period.first, metered=metered, lo=lo, hi=hi,
            zone=zone, now=now,
        )  # fmt: skip
        return days
    summed = _plan_where(plan, lambda i: plan.modes[i] in SUM_MODES and site_of(i) in site_ids)
    if summed.modes:
        add(energy_by_device_from_rollups(plan=summed, lo=lo, hi=hi, tz=zone, unit="day"))
    until = min(period.end, now.astimezone(tz).date() + timedelta(days=1))
    past = [period.first + timedelta(days=n) for n in range((until - period.first).days)]
    first_gap = {}
    for site_id in site_ids:
        gap = next(
            (
                d
                for d in past
                if "meter" not in days.get((site_id, d), {}) and (site_id, d) not in metered
            ),
            None,
        )
        if gap is not None:
            first_gap[site_id] = gap
    counted = _plan_where(
        plan, lambda i: plan.modes[i] not in SUM_MODES and site_of(i) in first_gap
    )
    if counted.modes:
        start = max(lo, local_midnight(min(first_gap.values()), tz))
        add(energy_by_device(plan=counted, lo=start, hi=hi, tz=zone, unit="day"))
    return days


# The rest of today is summed straight from the readings while it is this short. The readings
# are the truth; rollups after a stored end of today exist only while a refresh that stores a
# later end runs, so the rollups and marks were probed for nothing (2 of 9 ms at 50M readings).
# Longer, the refresh has fallen behind (a catch-up over several runs stores no beginnings of
# today), and the rollups it made are worth reading.
RAW_REST_MAX = timedelta(hours=1)


def _add_rest_of_today(
    add, *, plan: EnergyPlan, site_ids: set[int], day: date,
    metered: frozenset[tuple[int, date]], lo: datetime, hi: datetime, zone: str, now: datetime,
) -> None:  # fmt: skip
    """`add` the energy of the sites' `day` in [lo, hi), after stored beginnings that are
    current, in one statement: the meters (and summing appliances) of every site, and the
    devices of the sites whose meter has no data in the beginning. (A site whose meter starts
    in [lo, hi) has its devices read too, for nothing: its day is the meter's, see
    _day_energy.)"""
    sensors = [
        sensor_id
        for site_id in site_ids
        for sensor_id, mode in plan.sensors_of_site().get(site_id, ())
        if mode in SUM_MODES or (site_id, day) not in metered
    ]
    if not sensors:
        return
    q = _Sql()
    if now - lo <= RAW_REST_MAX:
        sql = _recent_energy_sql(q, plan=plan, ids=sensors, lo=lo, hi=hi, tz=zone, unit="day")
    else:
        rest = EnergyPlan(modes={i: plan.modes[i] for i in sensors}, factors=plan.factors,
                          device_of=plan.device_of, devices=plan.devices)  # fmt: skip
        sql = _energy_sql(q, plan=rest, lo=lo, hi=hi, tz=zone, unit="day", stored_last=True)
    add(_periods_as_instants(_fetch(sql, q.params)))


def _day_energy(by_source: dict[str, float]) -> tuple[str, float]:
    """(source, kWh) of a site's day: the meter's when it measured that day, else the devices'."""
    if "meter" in by_source:
        return "meter", by_source["meter"]
    return "devices", by_source.get("devices", 0.0)


def site_days_compute(*, site_ids: list[int], zone: str, day: date) -> dict[int, tuple[str, float]]:
    """(source, kWh) of one local day of sites of time zone `zone`, for those with data."""
    period = Period(kind="day", first=day, end=day + timedelta(days=1))
    plan = energy_plan(site_ids=site_ids)
    tz = zoneinfo.ZoneInfo(zone)
    days = _zone_energy_by_day(
        plan=plan, site_ids=set(site_ids), zone=zone, period=period,
        now=local_midnight(period.end, tz),
    )  # fmt: skip
    return {site_id: _day_energy(by_source) for (site_id, _), by_source in days.items()}


def site_today_compute(
    *, plan: EnergyPlan, site_ids: set[int], zone: str, day: date, through: datetime
) -> dict[int, dict[str, float]]:
    """Per site of time zone `zone`: {'meter': kWh, 'devices': kWh} of the local `day` from its
    start up to the quarter-hour `through`, a source only where it had data (devices only for
    sites whose meter had none). What `rollup_site_today` stores."""
    period = Period(kind="day", first=day, end=day + timedelta(days=1))
    days = _zone_energy_by_day(
        plan=plan, site_ids=site_ids, zone=zone, period=period, now=through, until=through
    )
    return {site_id: dict(days[site_id, day]) for site_id in site_ids if (site_id, day) in days}


def _local_today(*, zones: dict[int, str], now: datetime) -> dict[int, date]:
    """Each site's local date at `now`: one zone conversion per zone, not per site."""
    by_zone = {zone: now.astimezone(zoneinfo.ZoneInfo(zone)).date() for zone in set(zones.values())}
    return {site_id: by_zone[zone] for site_id, zone in zones.items()}


# The state the fleet view reads in one statement, so in one snapshot: every reading committed
# is either rolled up (and in the stored rows that cover it) or under a mark, never in neither.
#
# - pending: (site, local day) of the period that readings not yet rolled up change, each with
#   the earliest instant changed, in epoch seconds: the start of each marked quarter-hour and,
#   for an energy sensor (a counter, or not: a few probes more) marked before the period, the
#   time of its next reading. (A counter marked inside the period changes at most later days
#   of it, which the caller computes anyway: everything after a site's first changed day is
#   computed; so those are not probed.)
# - marked: per site, its earliest marked quarter-hour: a stored beginning of today (`through`)
#   after it lacks a reading.
# - stored, dirty: the `SiteDay` rows of the period and the site days marked to be recomputed.
#   (pending, stored and dirty only before the latest local today: later days are computed;
#   `past` false when there is no such day, so that the planner skips those parts: the file of
#   rollup_site_day_dirty keeps the size of the load's 209,500 marks, 0.8 ms a scan at 50M.)
# - today: the stored beginnings of today (`rollup_site_today`), when the period holds today.
#
# Marks are read only before `cut`: nothing stored covers a later instant (the stored days end
# at the latest at a site's local midnight of today, the stored beginnings at `through`), so a
# later mark changes only what is computed anyway. In a running system that leaves the marks
# of late arrivals only, not the current quarter-hour of every sensor, which the refresh leaves
# for its next run: reading and joining those 1,000 marks was 2-10 ms of the fleet's today.
_STORED_STATE = """
WITH marks AS MATERIALIZED (
    SELECT m.sensor_id, m.bucket, se.kind, d.site_id, s.timezone
    FROM rollup_dirty m
    JOIN devices_sensor se ON se.id = m.sensor_id AND se.kind IN ('energy', 'power')
    JOIN devices_device d ON d.id = se.device_id
    JOIN devices_site s ON s.id = d.site_id
    WHERE m.bucket < %(cut)s
)
SELECT 'pending', m.site_id, (t.at AT TIME ZONE m.timezone)::date,
       extract(epoch FROM min(t.at))::float8, NULL::float8, NULL::float8, NULL::text
FROM marks m
CROSS JOIN LATERAL (VALUES (m.bucket), (
    CASE WHEN m.bucket < %(latest_start)s AND m.kind = 'energy'
              AND (m.bucket AT TIME ZONE m.timezone)::date < %(first)s THEN
        (SELECT e.time FROM energy_readings e
         WHERE e.sensor_id = m.sensor_id AND e.time >= m.bucket + interval '15 minutes'
         ORDER BY e.time LIMIT 1) END)) AS t(at)
WHERE %(past)s AND (m.bucket >= %(lo)s OR m.kind = 'energy')
  AND (t.at AT TIME ZONE m.timezone)::date >= %(first)s
  AND (t.at AT TIME ZONE m.timezone)::date < %(upto)s
GROUP BY 2, 3
UNION ALL
SELECT 'marked', site_id, NULL, extract(epoch FROM min(bucket))::float8, NULL, NULL, NULL
FROM marks WHERE %(with_today)s GROUP BY site_id
UNION ALL
SELECT 'stored', site_id, day, energy_kwh, NULL, NULL, source FROM rollup_site_day
WHERE %(past)s AND day >= %(first)s AND day < %(upto)s
UNION ALL
SELECT 'dirty', site_id, day, NULL, NULL, NULL, NULL FROM rollup_site_day_dirty
WHERE %(past)s AND day >= %(first)s AND day < %(upto)s
UNION ALL
SELECT 'today', site_id, day, extract(epoch FROM through)::float8, meter_kwh, devices_kwh,
       plan_key
FROM rollup_site_today WHERE %(with_today)s AND through <= %(latest)s"""


class SiteToday(NamedTuple):
    """A site's energy of its local day in progress up to `through` (`rollup_site_today`): kWh
    by source, None where that source had no data; `plan_key` what it was computed under. (A
    named tuple: 500 frozen dataclasses took 0.7 ms to make.)"""

    day: date
    through: datetime
    meter_kwh: float | None
    devices_kwh: float | None
    plan_key: str


_GRID = """
SELECT 'site', id, name, timezone, tariff_per_kwh, currency, feeder_id FROM {site}
UNION ALL
SELECT 'transformer', t.id, t.code, t.name, t.capacity_kva, s.code, NULL
FROM {transformer} t JOIN {substation} s ON s.id = t.substation_id
UNION ALL
SELECT 'feeder', f.id, f.code, f.name, NULL, t.code, f.transformer_id
FROM {feeder} f JOIN {transformer} t ON t.id = f.transformer_id"""


@dataclass
class _Fleet:
    """What the fleet view reads first: sites (by id), transformers and feeders (by code) with
    its counters at zero, the latest end of a stored beginning of today, and the
    `fleet_version` they were read under (the energy plan is kept under it too)."""

    sites: list[dict]
    transformers: dict[int, dict]
    feeders: dict[int, dict]
    latest_through: datetime | None
    version: int


def _fleet() -> _Fleet:
    """One round trip for `fleet_version` and the latest stored end of today (three statements
    through the ORM and two more took 3.5 ms of the fleet's today), and one more for the
    grid's rows when the version moved."""
    grid_sql = _GRID.format(
        site=Site._meta.db_table,
        transformer=Transformer._meta.db_table,
        substation=Substation._meta.db_table,
        feeder=Feeder._meta.db_table,
    )
    [(version,)], [(latest,)] = _fetch_each(
        [("SELECT version FROM fleet_version", {}),
         ("SELECT max(through) FROM rollup_site_today", {})]
    )  # fmt: skip
    sites, transformers, feeders = _made_from("grid", version, (grid_sql, {}), _grid_made)
    return _Fleet(
        sites=sites,
        transformers={row["id"]: dict(row) for row in transformers},
        feeders={row["id"]: dict(row) for row in feeders},
        latest_through=latest,
        version=version,
    )


def _grid_made(grid: list[tuple]) -> tuple[list[dict], list[dict], list[dict]]:
    """Sites by id, transformers and feeders by code, from the rows of `_GRID`. The sites are
    shared by every call (read only); the others are copied, their counters set per call."""
    sites, transformers, feeders = [], [], []
    for tag, row_id, a, b, amount, c, ref in grid:
        if tag == "site":
            sites.append({"id": row_id, "name": a, "timezone": b, "tariff_per_kwh": amount,
                          "currency": c, "feeder_id": ref})  # fmt: skip
        elif tag == "transformer":
            transformers.append({"id": row_id, "code": a, "name": b, "capacity_kva": amount,
                                 "substation_code": c, "feeders": 0, "sites": 0,
                                 "energy_kwh": Decimal("0.00")})  # fmt: skip
        else:
            feeders.append({"id": row_id, "code": a, "name": b, "transformer_id": ref,
                            "transformer_code": c, "sites": 0,
                            "energy_kwh": Decimal("0.00")})  # fmt: skip
    sites.sort(key=lambda site: site["id"])
    transformers.sort(key=lambda row: row["code"])
    feeders.sort(key=lambda row: row["code"])
    return sites, transformers, feeders


_UNREAD = object()


def _stored_site_days(
    *, zones: dict[int, str], period: Period, today: dict[int, date], latest: object = _UNREAD
) -> tuple[dict[tuple[int, date], tuple[str, float]], dict[int, date], dict[int, SiteToday]]:
    """The `SiteDay` rows of the period that are current; for every site with a day that is
    not (not over yet, marked dirty, or with readings waiting in `rollup_dirty`), the first
    such day: from there on its days are computed from the rollups and raw data; and the
    stored beginnings of today no waiting reading falls before (the caller checks their plan).
    Plain PostgreSQL only; one statement (`_STORED_STATE`).

    A past day without a row and without marks had no readings: every inserted reading marks
    its quarter-hour, the refresh turns that mark into a site-day mark in the same transaction,
    and the site-day mark goes only when its row is written; likewise it drops a stored
    beginning of today in the transaction that removes a mark before its `through`.

    `latest`: the latest `through` stored, read before this (e.g. with the fleet); read here
    when not given."""
    # Every zone's local days of the period lie inside [lo, hi); a local day starts at most
    # 14 h before and 12 h after its UTC midnight.
    lo = local_midnight(period.first, UTC) - timedelta(hours=14)
    hi = local_midnight(period.end, UTC) + timedelta(hours=12)
    local_days = {(zones[site_id], day) for site_id, day in today.items()}
    midnight = max(
        (local_midnight(day, zoneinfo.ZoneInfo(zone)) for zone, day in local_days), default=hi
    )
    with_today = any(period.first <= day < period.end for day in today.values())
    # The bound of the marks read, as a constant: the planner then reads them by time
    # (rollup_dirty_bucket); computed inside the statement, its unknown value made it scan
    # the whole table. A stored beginning written after `latest` was read ends past the bound
    # and is left out (its site's today is computed).
    if latest is _UNREAD:
        latest = _fetch("SELECT max(through) FROM rollup_site_today", {})[0][0]
    if not with_today:
        latest = None
    cut = min(hi, max(midnight, latest) if latest else midnight)
    # A site's days from its today on are computed whatever is stored or marked.
    upto = min(period.end, max(today.values(), default=period.end))
    params = {"lo": lo, "hi": hi, "latest_start": lo + timedelta(hours=26), "cut": cut,
              "latest": latest, "first": period.first, "upto": upto, "past": period.first < upto,
              "with_today": latest is not None}  # fmt: skip
    pending: set[tuple[int, date]] = set()
    dirty: set[tuple[int, date]] = set()
    stored: dict[tuple[int, date], tuple[str, float]] = {}
    marked: dict[int, float] = {}
    rows: list[tuple] = []
    for tag, site_id, day, value, meter, devices, text in _fetch(_STORED_STATE, params):
        if tag == "pending":
            pending.add((site_id, day))
        elif tag == "marked":
            marked[site_id] = value
        elif tag == "stored":
            stored[site_id, day] = (text, value)
        elif tag == "dirty":
            dirty.add((site_id, day))
        else:
            rows.append((site_id, day, value, meter, devices, text))
    begun = {}
    instants: dict[float, datetime] = {}  # one `through` for all, as a rule
    for site_id, day, through, meter, devices, key in rows:
        if site_id in zones and day == today[site_id] and marked.get(site_id, through) >= through:
            if through not in instants:
                instants[through] = datetime.fromtimestamp(through, UTC)
            begun[site_id] = SiteToday(day, instants[through], meter, devices, key)
    days = period.days()
    first_live = {}
    for site_id in zones:
        gap = next(
            (
                d
                for d in days
                if d >= today[site_id] or (site_id, d) in pending or (site_id, d) in dirty
            ),
            None,
        )
        if gap is not None:
            first_live[site_id] = gap
    current = {k: v for k, v in stored.items() if k not in pending and k not in dirty}
    return current, first_live, begun


def plan_keys(plan: EnergyPlan, zones: dict[int, str]) -> dict[int, str]:
    """Per site, a digest of what its energy is made of (time zone, sensors, how each counts):
    a figure computed under another key is stale. Kept with the plan, by the zones asked."""
    asked = frozenset(zones.items())
    keys = plan.keys.get(asked)
    if keys is None:
        keys = _plan_keys(plan, zones)
        plan.keys = {asked: keys}  # replaced, not changed: other threads may be reading it
    return keys


def _plan_keys(plan: EnergyPlan, zones: dict[int, str]) -> dict[int, str]:
    parts: dict[int, list[str]] = defaultdict(list)
    for sensor_id, mode in sorted(plan.modes.items()):
        site_id = plan.devices[plan.device_of[sensor_id]][0]
        parts[site_id].append(f"{sensor_id}:{mode}:{plan.factors[sensor_id]!r}")
    return {
        site_id: hashlib.md5(  # noqa: S324 (a fingerprint, not security)
            "|".join([zone, *parts.get(site_id, [])]).encode()
        ).hexdigest()
        for site_id, zone in zones.items()
    }


def _site_energy_by_day(
    *, zones: dict[int, str], period: Period, now: datetime, fleet: _Fleet | None = None
) -> dict[tuple[int, date], tuple[str, float]]:
    """(site, local day) -> (source, kWh) for every day of the period a site has data: stored
    site days where current (plain PostgreSQL), the rest computed per time zone; a site's
    today from its stored beginning (`rollup_site_today`) plus what came since. `fleet`: what
    was read already (the latest stored end of today, maybe the plan's rows)."""
    result: dict[tuple[int, date], tuple[str, float]] = {}
    first_live = dict.fromkeys(zones, period.first)
    timescale = is_timescale(connection)
    today = _local_today(zones=zones, now=now)
    begun: dict[int, SiteToday] = {}
    if not timescale:
        latest = fleet.latest_through if fleet else _UNREAD
        stored, first_live, begun = _stored_site_days(
            zones=zones, period=period, today=today, latest=latest
        )
        result = {key: value for key, value in stored.items() if value[0]}
    if not first_live:
        return result
    # not needed for stored days
    if fleet is not None:
        plan = _made_from("fleet-plan", fleet.version, _plan_sql(site_ids=None), _plan_made)
    else:
        plan = energy_plan(site_ids=None)
    # A stored beginning of today counts for a site computed from today on, made under the
    # plan the site has now.
    from_today = {
        site_id for site_id, first in first_live.items()
        if first == today[site_id] and site_id in begun
    }  # fmt: skip
    keys = plan_keys(plan, {site_id: zones[site_id] for site_id in from_today})
    begun = {site_id: begun[site_id] for site_id in from_today
             if begun[site_id].plan_key == keys[site_id]}  # fmt: skip
    # Sites computed together share a zone, their first computed day (usually today) and the
    # instant their stored beginning of today ends.
    groups: dict[tuple[str, date, datetime | None], set[int]] = defaultdict(set)
    for site_id, first in first_live.items():
        through = begun[site_id].through if site_id in begun else None
        groups[zones[site_id], first, through].add(site_id)
    for (zone, first, through), site_ids in sorted(
        groups.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or EPOCH)
    ):
        live = Period(kind="day", first=first, end=period.end)
        metered = frozenset(
            (site_id, first) for site_id in site_ids
            if site_id in begun and begun[site_id].meter_kwh is not None
        )  # fmt: skip
        days = _zone_energy_by_day(
            plan=plan, site_ids=site_ids, zone=zone, period=live, now=now, since=through,
            metered=metered,
        )  # fmt: skip
        for site_id in site_ids & begun.keys():
            today = begun[site_id]
            for source, kwh in (("meter", today.meter_kwh), ("devices", today.devices_kwh)):
                if kwh is not None:
                    days[site_id, today.day][source] += kwh
        result |= {key: _day_energy(by_source) for key, by_source in days.items()}
    return result


def grid_unit(period_kind: str) -> str:
    """What the grid's figures of a period are given by: a year by month, shorter periods by
    day (a day is one slot: the grid's days are stored whole, without hours)."""
    return "month" if period_kind == "year" else "day"


def grid_energy(*, period_kind: str, day: date, now: datetime, top: int = 10) -> dict:
    """Energy of every site over the day, week, month or year containing `day`, each in its own
    local time, summed by feeder, by transformer and by day (by month for a year; a site's local
    day counts in its own day and month), with the `top` sites that used the most.

    Each site's local day is rounded once as shown (`shown_kwh`) and every figure is a sum of
    those, so the feeders, the transformers, the days or months and the sites each add up to
    the total; a site's figure (and cost: the sum of its days' costs) equals its own history's
    total over a day, week or month (its year in the history sums rounded months instead).

    A site's energy of a local day is its meter's when the meter has data that day, else its
    devices' (the rule above); a period sums its days. Sites without a feeder are counted under
    a feeder None. On plain PostgreSQL the days come from the stored `SiteDay` rows where they
    are current; days not over yet or with readings not rolled up yet are computed, today from
    its stored beginning (`rollup_site_today`) where current. Queries: 2 (`fleet_version` and
    the latest stored end of today in one round trip; what is stored and marked), 1 more for
    the grid's and 1 for the energy plan's rows when the version moved since they were last
    read (the plan only when some days are computed), plus 1 per (time zone, first computed
    day, end of the stored beginning) of the sites with such days (2 when it is not today's
    rest after stored beginnings).
    """
    period = period_containing(kind=period_kind, day=day)
    fleet = _fleet()
    sites, transformers, feeders = fleet.sites, fleet.transformers, fleet.feeders
    zones = {site["id"]: site["timezone"] for site in sites}
    zero = Decimal("0.00")
    unit = grid_unit(period.kind)
    site_kwh: dict[int, Decimal] = defaultdict(lambda: zero)
    site_cost: dict[int, Decimal] = defaultdict(Decimal)
    slot_kwh: dict[object, Decimal] = defaultdict(lambda: zero)
    site_sources: dict[int, set[str]] = defaultdict(set)
    days = _site_energy_by_day(zones=zones, period=period, now=now, fleet=fleet)
    tariffs = {site["id"]: (site["tariff_per_kwh"], site["currency"]) for site in sites}
    for (site_id, local_day), (source, kwh) in days.items():
        shown = shown_kwh(kwh)
        site_kwh[site_id] += shown
        tariff, currency = tariffs[site_id]
        site_cost[site_id] += shown_cost(kwh, tariff=tariff, currency=currency)
        slot_kwh[_slot_key(datetime.combine(local_day, datetime.min.time()), unit)] += shown
        site_sources[site_id].add(source)
    slot_periods = (
        [period_containing(kind="month", day=date(period.first.year, m, 1)) for m in range(1, 13)]
        if unit == "month"
        else [period_containing(kind="day", day=d) for d in period.days()]
    )
    slots = [
        {"first": slot.first, "end": slot.end,
         "energy_kwh": slot_kwh.get(_slot_key(datetime.combine(slot.first, datetime.min.time()),
                                              unit))}
        for slot in slot_periods
    ]  # fmt: skip

    unassigned = {"id": None, "code": None, "name": "No feeder", "transformer_id": None,
                  "transformer_code": None, "sites": 0, "energy_kwh": zero}  # fmt: skip
    for site in sites:
        feeder = feeders.get(site["feeder_id"], unassigned)
        feeder["sites"] += 1
        feeder["energy_kwh"] += site_kwh.get(site["id"], zero)
    for feeder in feeders.values():
        transformer = transformers[feeder["transformer_id"]]
        transformer["feeders"] += 1
        transformer["sites"] += feeder["sites"]
        transformer["energy_kwh"] += feeder["energy_kwh"]
    feeder_rows = list(feeders.values()) + ([unassigned] if unassigned["sites"] else [])

    by_energy = sorted(
        (site for site in sites if site_kwh.get(site["id"], zero) > 0),
        key=lambda site: (-site_kwh[site["id"]], site["name"], site["id"]),
    )
    feeder_codes = {feeder_id: feeder["code"] for feeder_id, feeder in feeders.items()}
    top_sites = [
        {
            "id": site["id"],
            "name": site["name"],
            "feeder_code": feeder_codes.get(site["feeder_id"]),
            "energy_kwh": site_kwh[site["id"]],
            "cost": site_cost[site["id"]],
            "currency": site["currency"],
            "source": "+".join(sorted(site_sources[site["id"]])),
        }
        for site in by_energy[:top]
    ]
    return {
        "period": period,
        "energy_kwh": sum(site_kwh.values(), zero),
        "future": period.is_future(now),
        "unit": unit,
        "slots": slots,
        "sites": len(sites),
        "sites_with_data": len(by_energy),
        "feeders": sorted(feeder_rows, key=_most_energy_first),
        "transformers": sorted(transformers.values(), key=_most_energy_first),
        "top_sites": top_sites,
    }


def devices_not_reporting(*, now: datetime, silent_for: timedelta, limit: int = 100) -> dict:
    """Devices with sensors but no reading for `silent_for`: those still online (a live socket
    and nothing measured) first, then the offline ones, longest silent first; each with its
    last reading and its last sign of life. One query, one index probe per sensor.
    """
    device, site, feeder, sensor = (
        model._meta.db_table for model in (Device, Site, Feeder, Sensor)
    )
    sql = f"""
    WITH latest AS (
        SELECT s.device_id, max(r.time) AS last_reading
        FROM {sensor} s
        LEFT JOIN LATERAL (SELECT e.time FROM energy_readings e WHERE e.sensor_id = s.id
                           ORDER BY e.time DESC LIMIT 1) r ON true
        GROUP BY s.device_id
    )
    SELECT d.uid, d.name, d.kind, d.online, d.last_seen, l.last_reading,
           st.id, st.name, f.code,
           count(*) OVER (), count(*) FILTER (WHERE d.online) OVER ()
    FROM latest l
    JOIN {device} d ON d.id = l.device_id
    JOIN {site} st ON st.id = d.site_id
    LEFT JOIN {feeder} f ON f.id = st.feeder_id
    WHERE l.last_reading IS NULL OR l.last_reading < %(cutoff)s
    ORDER BY d.online DESC, l.last_reading ASC NULLS FIRST, d.uid
    LIMIT %(limit)s"""
    rows = _fetch(sql, {"cutoff": now - silent_for, "limit": limit})
    total, online = (rows[0][9], rows[0][10]) if rows else (0, 0)
    return {
        "count": total,
        "online_silent": online,
        "offline": total - online,
        "devices": [
            {
                "uid": uid,
                "name": name or uid,
                "kind": KIND_LABELS.get(kind, kind),
                "state": "silent" if is_online else "offline",
                "last_seen": last_seen,
                "last_reading": last_reading,
                "site": {"id": site_id, "name": site_name},
                "feeder_code": feeder_code,
            }
            for uid, name, kind, is_online, last_seen, last_reading, site_id, site_name,
            feeder_code, _total, _online in rows
        ],
    }  # fmt: skip
