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

import zoneinfo
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import QuerySet

from devices.models import DeviceKind, Room, Sensor, SensorKind, Site
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


class _Sql:
    """Named parameters for one statement."""

    def __init__(self) -> None:
        self.params: dict[str, object] = {}

    def p(self, value: object) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"%({name})s"


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
    ids_p, lo_p, hi_p = q.p(ids), q.p(lo), q.p(hi)
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
    clean = f"""{rollup}
          AND NOT EXISTS (SELECT 1 FROM rollup_dirty d WHERE d.sensor_id = r.sensor_id
                          AND d.bucket >= r.bucket AND d.bucket < r.bucket + {step})"""
    if level == "15m":
        return f"{clean}\n UNION ALL {marked_raw}"
    # A marked hour or day: its clean quarter-hours from rollup_15m, the marked ones from raw.
    clean_quarters = f"""
        SELECT c.sensor_id, c.bucket, c.sum, c.count, c.min, c.max, c.last
        FROM (SELECT DISTINCT d.sensor_id, date_bin({step}, d.bucket, {ORIGIN_SQL}) AS parent
              FROM rollup_dirty d
              WHERE d.sensor_id = ANY({ids_p}) AND d.bucket >= {lo_p} AND d.bucket < {hi_p}) p
        JOIN rollup_15m c ON c.sensor_id = p.sensor_id AND c.bucket >= p.parent
                         AND c.bucket < p.parent + {step}
        WHERE NOT EXISTS (SELECT 1 FROM rollup_dirty d2
                          WHERE d2.sensor_id = c.sensor_id AND d2.bucket = c.bucket)"""
    return f"{clean}\n UNION ALL {clean_quarters}\n UNION ALL {marked_raw}"


def _union(q: _Sql, ids: list[int], start: datetime, end: datetime, levels: tuple[str, ...]) -> str:
    parts = [_rows(q, level, ids, lo, hi) for level, lo, hi in _segments(start, end, levels)]
    return "\n UNION ALL ".join(f"({part})" for part in parts)


def _fetch(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


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


def _offsets_fit(tz: zoneinfo.ZoneInfo, start: datetime, end: datetime, step: timedelta) -> bool:
    """True when the zone's UTC offset is a whole number of `step` all over [start, end)."""
    if tz.key == "UTC":
        return True
    instant = start
    while True:
        offset = instant.astimezone(tz).utcoffset() or timedelta(0)
        if offset % step:
            return False
        if instant >= end:
            return True
        instant = min(instant + timedelta(hours=12), end)


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
    sql = f"""
        SELECT {target} AS b, sum(x.sum), sum(x.count)::bigint, min(x.min), max(x.max)
        FROM ({union}) x GROUP BY 1 ORDER BY 1"""
    return [
        {"bucket": b, "avg": total / count, "min": low, "max": high, "sum": total, "count": count}
        for b, total, count, low, high in _fetch(sql, q.params)
    ]


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


def energy_plan(*, site_ids: list[int]) -> EnergyPlan:
    plan = EnergyPlan()
    per_interval = set(
        PolledAppliance.objects.filter(
            device__site_id__in=site_ids, store_type__in=["sum", "consumption"]
        ).values_list("device_id", flat=True)
    )
    sensors = list(
        Sensor.objects.filter(
            device__site_id__in=site_ids, kind__in=[SensorKind.ENERGY, SensorKind.POWER]
        ).values_list(
            "id", "kind", "unit", "device_id", "device__kind", "device__site_id", "device__room_id"
        )
    )
    with_energy = {row[3] for row in sensors if row[1] == SensorKind.ENERGY}
    for sensor_id, kind, unit, device_id, device_kind, site_id, room_id in sensors:
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
        elif device_id in per_interval:
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
    *, plan: EnergyPlan, lo: datetime, hi: datetime, tz: str, unit: str
) -> list[tuple[datetime, int, str, float]]:
    """(local period start, device id, mode, kWh) per `unit` (hour, day, month) of zone `tz`
    over [lo, hi); lo must be on a quarter-hour."""
    ids = list(plan.modes)
    if not ids:
        return []
    q = _Sql()
    rows = _quarter_hours(q, ids, lo, hi)
    modes = (
        f"SELECT * FROM unnest({q.p(ids)}::bigint[], {q.p([plan.modes[i] for i in ids])}::text[], "
        f"{q.p([plan.factors[i] for i in ids])}::float8[], "
        f"{q.p([plan.device_of[i] for i in ids])}::bigint[]) "
        "AS m(sensor_id, mode, factor, device_id)"
    )
    lo_p = q.p(lo)
    sql = f"""
    WITH m AS ({modes}),
    x AS (
        SELECT x.*, m.mode, m.factor, m.device_id,
               coalesce(lag(x.last) OVER (PARTITION BY x.sensor_id ORDER BY x.bucket),
                        CASE WHEN m.mode = 'counter' THEN
                            (SELECT e.value FROM energy_readings e
                             WHERE e.sensor_id = x.sensor_id AND e.time < {lo_p}
                             ORDER BY e.time DESC LIMIT 1) END) AS prev
        FROM ({rows}) x JOIN m ON m.sensor_id = x.sensor_id
    )
    SELECT date_trunc({q.p(unit)}, bucket, {q.p(tz)}) AS period, device_id, mode,
           sum(factor * CASE mode
               WHEN 'counter' THEN CASE WHEN prev IS NOT NULL AND last >= prev THEN last - prev
                                        ELSE last - min END
               WHEN 'power' THEN sum / count / 4000.0
               ELSE sum END)
    FROM x GROUP BY 1, 2, 3 ORDER BY 1, 2"""
    return _fetch(sql, q.params)


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
    plan = energy_plan(site_ids=[site.id])
    periods: dict[datetime, dict] = {}
    for period, device_id, mode, kwh in energy_by_device(
        plan=plan, lo=lo, hi=hi, tz=site.timezone, unit=unit
    ):
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
        SELECT s.id, r.time, r.value FROM unnest({q.p(plan.power_sensors)}::bigint[]) AS s(id)
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
        JOIN unnest({q.p(ids)}::bigint[], {q.p([plan.device_of[i] for i in ids])}::bigint[],
                    {q.p([plan.factors[i] for i in ids])}::float8[])
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
