"""Rollups of readings per sensor (15 minutes, 1 hour, 1 day), their upkeep, raw-data retention
and the dashboards' site and room metrics.

Each rollup row holds sum, count, min, max and `last` (the value of the bucket's latest reading,
for energy counters) of one sensor's readings in one bucket; avg is sum / count. Buckets are cut
at the same instants on both backends (origin 2000-01-03 00:00 UTC, time_bucket's default).

Plain PostgreSQL
    `rollup_15m`, `rollup_1h` and `rollup_1d` are tables. A statement-level trigger on
    `energy_readings` marks every (sensor, quarter-hour) that an INSERT really added rows to in
    `rollup_dirty`, in the inserting transaction, whatever wrote them (the batch writer, a
    test, psql). Late, out-of-order and duplicate arrivals need nothing special: a late reading
    marks its own old quarter-hour; a duplicate, dropped by ON CONFLICT, marks nothing.
    The `rollups_refresh` beat job (every minute) recomputes exactly the marked quarter-hours
    from raw data, re-derives their hours from `rollup_15m` and their days from `rollup_1h`, set
    based, and deletes the marks it processed in the same transaction, but only those whose `seq`
    has not changed meanwhile (a writer re-marking a bucket bumps `seq`, so its new readings get
    recomputed on the next run). Marks are locked in key order on both sides, so writers and
    the job never deadlock. Queries use a rollup row only if no mark lies inside its bucket and
    compute marked buckets from raw data (see `telemetry/queries.py`), so answers are current.

TimescaleDB
    The same three names are continuous aggregates: 15 minutes on the hypertable, 1 hour on the
    15-minute one, 1 day on the hourly one (hierarchical), all real-time
    (`materialized_only = false`: buckets past the materialized watermark are computed from raw
    data at query time). Refresh policies materialize them; a late reading below the watermark
    shows once the policies have refreshed its buckets level by level: the 15-minute one within
    5 minutes, then the hourly one within 15 and the daily one within the hour (each level
    reads the one below, so its refresh picks up the change after the lower one did).
    No trigger or table of marks: TimescaleDB keeps its own invalidation log.

    The known trap: a refresh over a range whose raw chunks retention has dropped deletes the
    aggregate's buckets there. Every refresh window here starts `refresh_start()` ago, which is
    always at least a day newer than the raw retention's `drop_after`, so no refresh ever
    reaches data retention has removed and aggregate buckets outlive the raw data.

Raw retention on plain PostgreSQL (`readings_retention_run`, daily): readings older than
READINGS_RETENTION are deleted per sensor, 10,000 rows a statement, each its own short
transaction, so writers are never locked out. It never deletes readings inside the window in
which late readings are still accepted (ingest refuses older ones), nor at or after the oldest
marked quarter-hour: a bucket is always recomputed from all of its readings.
"""

# SQL here is assembled from constant fragments only; every value is a bound parameter.
# ruff: noqa: S608

import logging
import time
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from devices.models import Site
from telemetry import queries
from telemetry.models import RoomMetrics, SiteDay, SiteDayDirty, SiteMetrics
from telemetry.timescale import is_timescale
from telemetry.validation import MAX_PAST

logger = logging.getLogger(__name__)

ORIGIN_SQL = queries.ORIGIN_SQL
# Readings up to MAX_PAST old are still accepted; raw data this old may still get neighbours.
LATE_WINDOW = MAX_PAST + timedelta(days=1)

# --- storage (migration 0004) -------------------------------------------------------------

# No foreign keys to devices_sensor: Django's test flush truncates that table without CASCADE and
# would fail on them. Rows of deleted sensors are removed by the daily retention job instead
# (sensor ids are never reused, and every query names its sensors).
_PLAIN_TABLES = [
    *(
        f"""CREATE TABLE {table} (
            sensor_id bigint NOT NULL,
            bucket timestamptz NOT NULL,
            sum double precision NOT NULL,
            count bigint NOT NULL,
            min double precision NOT NULL,
            max double precision NOT NULL,
            last double precision NOT NULL,
            PRIMARY KEY (sensor_id, bucket))"""
        for table in queries.TABLES.values()
    ),
    """CREATE TABLE rollup_dirty (
        sensor_id bigint NOT NULL,
        bucket timestamptz NOT NULL,
        seq bigserial NOT NULL,
        PRIMARY KEY (sensor_id, bucket))""",
    # Statement level with a transition table: one set-based upsert per INSERT statement, only
    # for rows really inserted. Sorted, so concurrent writers lock marks in the same order.
    f"""CREATE FUNCTION rollup_mark_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO rollup_dirty (sensor_id, bucket)
        SELECT DISTINCT sensor_id, date_bin(interval '15 minutes', time, {ORIGIN_SQL})
        FROM new_rows ORDER BY 1, 2
        ON CONFLICT (sensor_id, bucket) DO UPDATE SET seq = EXCLUDED.seq;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER energy_readings_mark_dirty AFTER INSERT ON energy_readings
        REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
        EXECUTE FUNCTION rollup_mark_dirty()""",
    # Readings written before this migration get rolled up by the first refresh.
    f"""INSERT INTO rollup_dirty (sensor_id, bucket)
        SELECT DISTINCT sensor_id, date_bin(interval '15 minutes', time, {ORIGIN_SQL})
        FROM energy_readings""",
]

_PLAIN_DROP = [
    "DROP TRIGGER IF EXISTS energy_readings_mark_dirty ON energy_readings",
    "DROP FUNCTION IF EXISTS rollup_mark_dirty()",
    "DROP TABLE IF EXISTS rollup_dirty, rollup_1d, rollup_1h, rollup_15m",
]

_CAGGS = [
    """CREATE MATERIALIZED VIEW rollup_15m
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT sensor_id, time_bucket(interval '15 minutes', time) AS bucket,
               sum(value) AS sum, count(*) AS count, min(value) AS min, max(value) AS max,
               last(value, time) AS last
        FROM energy_readings GROUP BY sensor_id, time_bucket(interval '15 minutes', time)
        WITH NO DATA""",
    *(
        f"""CREATE MATERIALIZED VIEW {table}
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT sensor_id, time_bucket(interval '{interval}', bucket) AS bucket,
               sum(sum) AS sum, sum(count)::bigint AS count, min(min) AS min, max(max) AS max,
               last(last, bucket) AS last
        FROM {source} GROUP BY sensor_id, time_bucket(interval '{interval}', bucket)
        WITH NO DATA"""
        for table, interval, source in (
            ("rollup_1h", "1 hour", "rollup_15m"),
            ("rollup_1d", "1 day", "rollup_1h"),
        )
    ),
]

# (aggregate, end_offset, schedule_interval): the newest bucket of each level is left to
# real-time aggregation until it is complete.
_CAGG_POLICIES = [
    ("rollup_15m", "15 minutes", "5 minutes"),
    ("rollup_1h", "1 hour", "15 minutes"),
    ("rollup_1d", "1 day", "1 hour"),
]


def storage_create(connection) -> None:
    """Rollup tables, marks and trigger (plain PostgreSQL) or continuous aggregates."""
    if is_timescale(connection):
        with connection.cursor() as cursor:
            for statement in _CAGGS:
                cursor.execute(statement)
        continuous_aggregate_policies_apply(connection)
        return
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        for statement in _PLAIN_TABLES:
            cursor.execute(statement)


def storage_drop(connection) -> None:
    with connection.cursor() as cursor:
        if is_timescale(connection):
            for table in reversed(queries.TABLES.values()):
                cursor.execute(f"DROP MATERIALIZED VIEW IF EXISTS {table}")
            return
        for statement in _PLAIN_DROP:
            cursor.execute(statement)


def _interval_seconds(cursor, interval: str) -> float:
    cursor.execute("SELECT extract(epoch FROM %s::interval)", [interval])
    return float(cursor.fetchone()[0])


def refresh_start(*, retention_s: float | None) -> timedelta:
    """How far back continuous aggregates are refreshed: far enough for every late reading
    ingest accepts, and always a day short of raw retention (see the module docstring)."""
    start = LATE_WINDOW
    if retention_s is not None:
        start = min(start, timedelta(seconds=retention_s) - timedelta(days=1))
    if start <= timedelta(days=1):
        raise ValueError(
            "READINGS_RETENTION is too short to keep rollups safe: use at least 3 days"
        )
    return start


def continuous_aggregate_policies_apply(connection) -> None:
    """(Re)apply the refresh policies of the continuous aggregates; safe to run again."""
    with connection.cursor() as cursor:
        retention = settings.READINGS_RETENTION
        retention_s = _interval_seconds(cursor, retention) if retention else None
        start = refresh_start(retention_s=retention_s)
        for table, end_offset, every in _CAGG_POLICIES:
            cursor.execute(
                "SELECT remove_continuous_aggregate_policy(%s, if_exists => TRUE)", [table]
            )
            cursor.execute(
                "SELECT add_continuous_aggregate_policy(%s, start_offset => %s, "
                "end_offset => %s::interval, schedule_interval => %s::interval)",
                [table, start, end_offset, every],
            )


# --- refresh (plain PostgreSQL) -----------------------------------------------------------

_REFRESH_LOCK = 0x726F6C6C  # pg advisory lock key: one refresh at a time

_MARKS = """
SELECT sensor_id, bucket, seq FROM rollup_dirty
WHERE (sensor_id, bucket) > (%(sensor_id)s, %(bucket)s) AND bucket < %(settled)s
ORDER BY sensor_id, bucket LIMIT %(limit)s
"""

_UPSERT = """
{fresh},
gone AS (
    DELETE FROM {table} r USING fresh f
    WHERE r.sensor_id = f.sensor_id AND r.bucket = f.bucket AND f.count = 0
)
INSERT INTO {table} AS r (sensor_id, bucket, sum, count, min, max, last)
SELECT sensor_id, bucket, sum, count, min, max, last FROM fresh WHERE count > 0
ON CONFLICT (sensor_id, bucket) DO UPDATE SET sum = EXCLUDED.sum, count = EXCLUDED.count,
    min = EXCLUDED.min, max = EXCLUDED.max, last = EXCLUDED.last
"""

_RECOMPUTE_15M = _UPSERT.format(
    table="rollup_15m",
    fresh=f"""WITH fresh AS (
    SELECT m.sensor_id, m.bucket, x.sum, x.count, x.min, x.max, x.last
    FROM unnest(%(sensor_ids)s::bigint[], %(buckets)s::timestamptz[]) AS m(sensor_id, bucket)
    CROSS JOIN LATERAL ({queries.BUCKET_FROM_RAW}) x
)""",
)


def _derive(table: str, child: str, interval: str) -> str:
    return _UPSERT.format(
        table=table,
        fresh=f"""WITH parents AS (
    SELECT DISTINCT m.sensor_id, date_bin(interval '{interval}', m.bucket, {ORIGIN_SQL}) AS bucket
    FROM unnest(%(sensor_ids)s::bigint[], %(buckets)s::timestamptz[]) AS m(sensor_id, bucket)
), fresh AS (
    SELECT p.sensor_id, p.bucket, x.sum, x.count, x.min, x.max,
           (SELECT c.last FROM {child} c
            WHERE c.sensor_id = p.sensor_id AND c.bucket >= p.bucket
              AND c.bucket < p.bucket + interval '{interval}'
            ORDER BY c.bucket DESC LIMIT 1) AS last
    FROM parents p CROSS JOIN LATERAL (
        SELECT sum(c.sum) AS sum, coalesce(sum(c.count), 0)::bigint AS count,
               min(c.min) AS min, max(c.max) AS max
        FROM {child} c
        WHERE c.sensor_id = p.sensor_id AND c.bucket >= p.bucket
          AND c.bucket < p.bucket + interval '{interval}'
    ) x
)""",
    )


_DERIVE_1H = _derive("rollup_1h", "rollup_15m", "1 hour")
_DERIVE_1D = _derive("rollup_1d", "rollup_1h", "1 day")

# A backlog (a batch of at least _SET_BASED_FROM marks: a catch-up after downtime, a history
# loaded at once) is recomputed set-based: the batch's sensors' rows over the batch's time span
# grouped once and joined to the marks, instead of one probe of the readings (or of the level
# below) per mark. The answers are the same (tests/telemetry/test_rollups.py runs its property
# both ways); the seeding of the demo's 90 days, 450,000 marks, went from 70-100 s of probes
# under load to a few seconds.
_SET_BASED_FROM = 2_000

_RECOMPUTE_15M_SET = _UPSERT.format(
    table="rollup_15m",
    fresh=f"""WITH m AS (
    SELECT * FROM unnest(%(sensor_ids)s::bigint[], %(buckets)s::timestamptz[])
        AS m(sensor_id, bucket)
), x AS (
    SELECT e.sensor_id, date_bin(interval '15 minutes', e.time, {ORIGIN_SQL}) AS bucket,
           sum(e.value) AS sum, count(*) AS count, min(e.value) AS min, max(e.value) AS max,
           (array_agg(e.value ORDER BY e.time DESC))[1] AS last
    FROM energy_readings e
    WHERE e.sensor_id = ANY(%(sensor_ids)s::bigint[])
      AND e.time >= (SELECT min(bucket) FROM m)
      AND e.time < (SELECT max(bucket) FROM m) + interval '15 minutes'
    GROUP BY 1, 2
), fresh AS (
    SELECT m.sensor_id, m.bucket, x.sum, coalesce(x.count, 0)::bigint AS count, x.min, x.max,
           x.last
    FROM m LEFT JOIN x ON x.sensor_id = m.sensor_id AND x.bucket = m.bucket
)""",
)


def _derive_set(table: str, child: str, interval: str) -> str:
    return _UPSERT.format(
        table=table,
        fresh=f"""WITH parents AS (
    SELECT DISTINCT m.sensor_id, date_bin(interval '{interval}', m.bucket, {ORIGIN_SQL}) AS bucket
    FROM unnest(%(sensor_ids)s::bigint[], %(buckets)s::timestamptz[]) AS m(sensor_id, bucket)
), x AS (
    SELECT c.sensor_id, date_bin(interval '{interval}', c.bucket, {ORIGIN_SQL}) AS bucket,
           sum(c.sum) AS sum, sum(c.count)::bigint AS count, min(c.min) AS min,
           max(c.max) AS max, (array_agg(c.last ORDER BY c.bucket DESC))[1] AS last
    FROM {child} c
    WHERE c.sensor_id = ANY(%(sensor_ids)s::bigint[])
      AND c.bucket >= (SELECT min(bucket) FROM parents)
      AND c.bucket < (SELECT max(bucket) FROM parents) + interval '{interval}'
    GROUP BY 1, 2
), fresh AS (
    SELECT p.sensor_id, p.bucket, x.sum, coalesce(x.count, 0)::bigint AS count, x.min, x.max,
           x.last
    FROM parents p LEFT JOIN x ON x.sensor_id = p.sensor_id AND x.bucket = p.bucket
)""",
    )


_DERIVE_1H_SET = _derive_set("rollup_1h", "rollup_15m", "1 hour")
_DERIVE_1D_SET = _derive_set("rollup_1d", "rollup_1h", "1 day")

# Only marks still carrying the seq we read: a writer that re-marked a bucket meanwhile bumped
# it (and holds its lock until commit), so that bucket stays marked for the next run.
_UNMARK = """
DELETE FROM rollup_dirty d USING (
    SELECT x.sensor_id, x.bucket FROM rollup_dirty x
    JOIN unnest(%(sensor_ids)s::bigint[], %(buckets)s::timestamptz[], %(seqs)s::bigint[])
        AS m(sensor_id, bucket, seq)
      ON x.sensor_id = m.sensor_id AND x.bucket = m.bucket AND x.seq = m.seq
    ORDER BY x.sensor_id, x.bucket FOR UPDATE OF x
) done
WHERE d.sensor_id = done.sensor_id AND d.bucket = done.bucket
"""


# The local days of the sites whose energy the processed marks change: the day of each marked
# quarter-hour and, since a counter's quarter-hour counts the difference to its previous reading,
# the day of the sensor's next quarter-hour with readings (normally the same day, but not after a
# gap). Only energy and power sensors count towards a site's energy.
_MARK_SITE_DAYS = """
INSERT INTO rollup_site_day_dirty (site_id, day)
SELECT DISTINCT d.site_id, (t.at AT TIME ZONE s.timezone)::date
FROM unnest(%(sensor_ids)s::bigint[], %(buckets)s::timestamptz[]) AS m(sensor_id, bucket)
JOIN devices_sensor se ON se.id = m.sensor_id AND se.kind IN ('energy', 'power')
JOIN devices_device d ON d.id = se.device_id
JOIN devices_site s ON s.id = d.site_id
CROSS JOIN LATERAL (VALUES (m.bucket), ((
    SELECT c.bucket FROM rollup_15m c WHERE c.sensor_id = m.sensor_id AND c.bucket > m.bucket
    ORDER BY c.bucket LIMIT 1))) AS t(at)
WHERE t.at IS NOT NULL
ORDER BY 1, 2
ON CONFLICT DO NOTHING
"""


# The stored beginnings of today (`rollup_site_today`) that a processed mark falls before: the
# readings it stands for were not in them. Dropped, with their counters' last readings
# (`rollup_counter_today`), in the transaction that removes the mark, so a query sees either
# the mark or no row. (A counter's next quarter-hour is later than its mark, so the mark alone
# decides.)
_DROP_SITES_TODAY = """
WITH dropped AS (
    DELETE FROM rollup_site_today t
    USING unnest(%(sensor_ids)s::bigint[], %(buckets)s::timestamptz[]) AS m(sensor_id, bucket),
          devices_sensor se, devices_device d
    WHERE se.id = m.sensor_id AND se.kind IN ('energy', 'power') AND d.id = se.device_id
      AND t.site_id = d.site_id AND m.bucket < t.through
    RETURNING t.site_id
)
DELETE FROM rollup_counter_today c USING dropped WHERE c.site_id = dropped.site_id
"""


@dataclass
class RefreshResult:
    buckets: int = 0
    batches: int = 0
    site_days: int = 0
    sites_today: int = 0
    skipped: bool = False
    more: bool = False


_ANALYZE_AFTER = 50_000


def rollups_refresh(
    *,
    now: datetime | None = None,
    settle: timedelta = timedelta(0),
    batch: int = 5_000,
    time_budget_s: float = 45.0,
) -> RefreshResult:
    """Recompute the marked quarter-hours and their hours and days (plain PostgreSQL; a no-op
    on TimescaleDB, whose policies refresh the continuous aggregates).

    Marks of quarter-hours that ended less than `settle` ago are left for a later run (a bucket
    still filling is cheaper to read from raw data than to recompute every minute). Each batch
    of marks is one short transaction; a run stops after `time_budget_s` with `more` set.
    """
    result = RefreshResult()
    if is_timescale(connection):
        return result
    now = now or timezone.now()
    settled = now - settle - queries.STEPS["15m"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_REFRESH_LOCK])
        if not cursor.fetchone()[0]:
            result.skipped = True
            return result
        try:
            _statistics_fit_the_backlog(cursor)
            started = time.monotonic()
            key = (0, datetime(1, 1, 1, tzinfo=UTC))
            while True:
                with transaction.atomic():
                    cursor.execute(
                        _MARKS,
                        {"sensor_id": key[0], "bucket": key[1], "settled": settled, "limit": batch},
                    )
                    marks = cursor.fetchall()
                    if not marks:
                        break
                    params = {
                        "sensor_ids": [m[0] for m in marks],
                        "buckets": [m[1] for m in marks],
                        "seqs": [m[2] for m in marks],
                    }
                    backlog = len(marks) >= _SET_BASED_FROM
                    for statement in (
                        _RECOMPUTE_15M_SET if backlog else _RECOMPUTE_15M,
                        _DERIVE_1H_SET if backlog else _DERIVE_1H,
                        _DERIVE_1D_SET if backlog else _DERIVE_1D,
                        _MARK_SITE_DAYS,
                        _DROP_SITES_TODAY,
                        _UNMARK,
                    ):
                        cursor.execute(statement, params)
                result.buckets += len(marks)
                result.batches += 1
                key = marks[-1][:2]
                if len(marks) < batch:
                    break
                if time.monotonic() - started > time_budget_s:
                    result.more = True
                    return result
            left = time_budget_s - (time.monotonic() - started)
            days = site_days_refresh(settled=settled, time_budget_s=max(left, 1.0))
            result.site_days, result.more = days.site_days, days.more
            result.sites_today = sites_today_refresh(now=now, through=ceil_to_quarter(settled))
            return result
        finally:
            if result.buckets >= _ANALYZE_AFTER:
                # After a big catch-up the planner's idea of rollup_dirty (large, or empty) is
                # stale until autovacuum comes, and a stale one made it scan whole rollup tables
                # in queries; refresh the statistics now.
                cursor.execute("ANALYZE rollup_dirty")
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_REFRESH_LOCK])


def _statistics_fit_the_backlog(cursor) -> None:
    """ANALYZE the marks when a backlog of at least _ANALYZE_AFTER waits. Statistics taken
    while the table was nearly empty, in a file still the size of an earlier backlog, made the
    planner expect a few rows and read all marks, sorted, for each batch of 5,000: 300 ms a
    batch at 3M marks, and the refresh ran at 1,700 marks/s instead of 16,000 (bench/query
    loading 10M after 1M)."""
    cursor.execute("SELECT count(*) FROM (SELECT 1 FROM rollup_dirty LIMIT %s) m", [_ANALYZE_AFTER])
    if cursor.fetchone()[0] >= _ANALYZE_AFTER:
        cursor.execute("ANALYZE rollup_dirty")


# --- per-site local days (plain PostgreSQL) ------------------------------------------------


@dataclass
class SiteDaysResult:
    site_days: int = 0
    more: bool = False


_DIRTY_SITE_DAYS = """
SELECT d.site_id, d.day, s.timezone, s.tariff_per_kwh, s.currency
FROM rollup_site_day_dirty d JOIN devices_site s ON s.id = d.site_id
ORDER BY s.timezone, d.day, d.site_id
"""


def site_days_refresh(*, settled: datetime, time_budget_s: float = 45.0) -> SiteDaysResult:
    """Recompute the `SiteDay` rows marked dirty whose local day ended before `settled` (all of
    its quarter-hours rolled up), one (time zone, day) at a time: the sites of one zone share
    the day's bounds, so one pass of the site-energy code does them all. Days not over yet stay
    marked: queries compute them from the rollups and raw data. Runs inside `rollups_refresh`,
    under its lock, which is also the only writer of the marks."""
    result = SiteDaysResult()
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(_DIRTY_SITE_DAYS)
        groups: dict[tuple[str, object], list[tuple]] = defaultdict(list)
        for site_id, day, zone, tariff, currency in cursor.fetchall():
            tz = zoneinfo.ZoneInfo(zone)
            if queries.local_midnight(day + timedelta(days=1), tz) <= settled:
                groups[zone, day].append((site_id, tariff, currency))
    for (zone, day), sites in groups.items():
        if time.monotonic() - started > time_budget_s:
            result.more = True
            break
        site_ids = [site_id for site_id, _, _ in sites]
        try:
            _site_day_store(sites=sites, zone=zone, day=day)
        except (DatabaseError, ArithmeticError, ValueError):
            # One bad day (e.g. a counter value whose cost overflows) must not stop the rest;
            # it stays marked, so queries keep computing it and the log says why.
            logger.exception("site days of %s in %s not stored; left marked", day, zone)
            continue
        result.site_days += len(site_ids)
    return result


def ceil_to_quarter(instant: datetime) -> datetime:
    return queries.ceil_to(instant, queries.STEPS["15m"])


# Each counter's last reading before `through`: what its first quarter-hour after it counts from.
_STORE_COUNTERS_TODAY = """
INSERT INTO rollup_counter_today (sensor_id, site_id, through, last)
SELECT c.sensor_id, c.site_id, %(through)s,
       (SELECT e.value FROM energy_readings e WHERE e.sensor_id = c.sensor_id
          AND e.time < %(through)s ORDER BY e.time DESC LIMIT 1)
FROM unnest(%(counters)s::bigint[], %(counter_sites)s::bigint[]) AS c(sensor_id, site_id)
"""


def sites_today_refresh(*, now: datetime, through: datetime) -> int:
    """Store every site's energy of its local day in progress from its start up to `through`
    (a quarter-hour whose readings before it are rolled up) in `rollup_site_today`, by source,
    with the digest of the site's energy plan, and the last reading before `through` of each
    of its cumulative counters in `rollup_counter_today`. The fleet view adds what came since
    (see telemetry/queries.py: `_site_energy_by_day`). Runs at the end of `rollups_refresh`,
    under its lock, after the marks before `through` were processed: the rollups it reads are
    current, and a reading arriving later marks its quarter-hour, which makes queries ignore
    the row until a refresh drops it (`_DROP_SITES_TODAY`). First, the stored days of a site
    whose energy plan changed since the last refresh are marked to be computed again
    (`_site_plans_follow`). Returns the number of sites."""
    sites = list(Site.objects.order_by("id").values_list("id", "timezone"))
    zones = dict(sites)
    by_zone: dict[str, list[int]] = defaultdict(list)
    for site_id, zone in sites:
        by_zone[zone].append(site_id)
    plan = queries.energy_plan(site_ids=None)
    keys = queries.plan_keys(plan, zones)
    rows = []
    for zone, site_ids in by_zone.items():
        tz = zoneinfo.ZoneInfo(zone)
        day = now.astimezone(tz).date()
        if through <= queries.local_midnight(day, tz):
            continue
        energy = queries.site_today_compute(
            plan=plan, site_ids=set(site_ids), zone=zone, day=day, through=through
        )
        for site_id in site_ids:
            by_source = energy.get(site_id, {})
            rows.append((site_id, day, through, keys[site_id], by_source.get("meter"),
                         by_source.get("devices")))  # fmt: skip
    names = ("ids", "days", "through", "keys", "meter", "devices")
    columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 6
    params = {"now": timezone.now(), **dict(zip(names, columns, strict=True))}
    stored = {row[0] for row in rows}
    counters = sorted(
        (sensor_id, plan.devices[plan.device_of[sensor_id]][0])
        for sensor_id, mode in plan.modes.items()
        if mode == "counter" and plan.devices[plan.device_of[sensor_id]][0] in stored
    )
    counter_params = {"through": through, "counters": [c[0] for c in counters],
                      "counter_sites": [c[1] for c in counters]}  # fmt: skip
    with transaction.atomic(), connection.cursor() as cursor:
        if changed := _site_plans_follow(cursor, keys):
            logger.info("sites made otherwise, stored days to compute again: %s", changed)
            site_days_invalidate(site_ids=changed)
        cursor.execute("DELETE FROM rollup_site_today")
        cursor.execute("DELETE FROM rollup_counter_today")
        cursor.execute(
            "INSERT INTO rollup_site_today (site_id, day, through, plan_key, meter_kwh, "
            "devices_kwh, computed_at) SELECT *, %(now)s FROM unnest(%(ids)s::bigint[], "
            "%(days)s::date[], %(through)s::timestamptz[], %(keys)s::text[], "
            "%(meter)s::float8[], %(devices)s::float8[])",
            params,
        )
        cursor.execute(_STORE_COUNTERS_TODAY, counter_params)
    return len(rows)


def _site_plans_follow(cursor, keys: dict[int, str]) -> list[int]:
    """Store each site's plan key (`rollup_site_plan`) and return the sites whose key changed
    since the last refresh: their time zone, sensors or the way one counts changed, so their
    stored days may be stale. A site seen for the first time has nothing stored to compare."""
    params = {"ids": list(keys), "keys": list(keys.values())}
    cursor.execute(
        "SELECT n.site_id FROM unnest(%(ids)s::bigint[], %(keys)s::text[]) AS n(site_id, key) "
        "JOIN rollup_site_plan AS o USING (site_id) WHERE o.plan_key <> n.key ORDER BY 1",
        params,
    )
    changed = [row[0] for row in cursor.fetchall()]
    cursor.execute("DELETE FROM rollup_site_plan")
    cursor.execute(
        "INSERT INTO rollup_site_plan (site_id, plan_key) "
        "SELECT * FROM unnest(%(ids)s::bigint[], %(keys)s::text[])",
        params,
    )
    return changed


def site_days_invalidate(*, site_ids: list[int] | None = None) -> int:
    """Mark every stored day of the given sites (None: all) to be computed again, after a
    change of what their energy is made of: a time zone, a device moved or deleted, a meter
    added, a sensor's kind or unit. Queries compute marked days from the rollups at once; the
    refresh stores them again. Returns the number of days marked."""
    with connection.cursor() as cursor:
        for table in ("rollup_site_today", "rollup_counter_today"):
            cursor.execute(
                f"DELETE FROM {table} WHERE %(all)s OR site_id = ANY(%(ids)s)",
                {"all": site_ids is None, "ids": site_ids or []},
            )
        cursor.execute(
            "INSERT INTO rollup_site_day_dirty (site_id, day) SELECT site_id, day "
            "FROM rollup_site_day WHERE %(all)s OR site_id = ANY(%(ids)s) "
            "ORDER BY 1, 2 ON CONFLICT DO NOTHING",
            {"all": site_ids is None, "ids": site_ids or []},
        )
        return cursor.rowcount


def _site_day_store(*, sites: list[tuple], zone: str, day) -> None:
    site_ids = [site_id for site_id, _, _ in sites]
    energy = queries.site_days_compute(site_ids=site_ids, zone=zone, day=day)
    now = timezone.now()
    rows = []
    for site_id, tariff, currency in sites:
        source, kwh = energy.get(site_id, ("", 0.0))
        rows.append(
            SiteDay(site_id=site_id, day=day, energy_kwh=kwh, source=source,
                    cost=queries.money(kwh, tariff), currency=currency, computed_at=now)
        )  # fmt: skip
    with transaction.atomic():
        SiteDay.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["site", "day"],
            update_fields=["energy_kwh", "source", "cost", "currency", "computed_at"],
        )
        SiteDayDirty.objects.filter(site_id__in=site_ids, day=day).delete()


# --- raw retention (plain PostgreSQL) -----------------------------------------------------

_DELETE_OLD = """
DELETE FROM energy_readings WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM energy_readings WHERE sensor_id = %s AND time < %s LIMIT %s))
"""


@dataclass
class RetentionResult:
    cutoff: datetime | None = None
    deleted: int = 0
    more: bool = False


def retention_cutoff(*, now: datetime) -> datetime | None:
    """Readings before this instant may be deleted; None keeps everything."""
    if not settings.READINGS_RETENTION:
        return None
    with connection.cursor() as cursor:
        retention_s = _interval_seconds(cursor, settings.READINGS_RETENTION)
        cursor.execute("SELECT min(bucket) FROM rollup_dirty")
        oldest_mark = cursor.fetchone()[0]
    cutoff = now - max(timedelta(seconds=retention_s), LATE_WINDOW)
    return cutoff if oldest_mark is None else min(cutoff, oldest_mark)


def readings_retention_run(
    *, now: datetime | None = None, batch: int = 10_000, time_budget_s: float = 45.0
) -> RetentionResult:
    """Delete raw readings older than READINGS_RETENTION (plain PostgreSQL; TimescaleDB drops
    chunks by policy). Per sensor, `batch` rows a statement, each statement its own
    transaction; stops after `time_budget_s` with `more` set, to be run again."""
    result = RetentionResult()
    if is_timescale(connection):
        return result
    result.cutoff = retention_cutoff(now=now or timezone.now())
    if result.cutoff is None:
        return result
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM devices_sensor ORDER BY id")
        sensor_ids = [row[0] for row in cursor.fetchall()]
        for sensor_id in sensor_ids:
            while True:
                with transaction.atomic():
                    cursor.execute(_DELETE_OLD, [sensor_id, result.cutoff, batch])
                    deleted = cursor.rowcount
                result.deleted += deleted
                if time.monotonic() - started > time_budget_s:
                    result.more = True
                    return result
                if deleted < batch:
                    break
        for table in (*queries.TABLES.values(), "rollup_dirty"):
            cursor.execute(
                f"DELETE FROM {table} r WHERE NOT EXISTS "
                "(SELECT 1 FROM devices_sensor s WHERE s.id = r.sensor_id)"
            )
    logger.info("retention deleted %d readings older than %s", result.deleted, result.cutoff)
    return result


# --- site and room metrics ----------------------------------------------------------------

METRICS_SITES_PER_QUERY = 200


def _metric_fields(*, day, power, energy_kwh, tariff, currency, peak, now) -> dict:
    power_at, power_w = power if power else (None, None)
    peak_at, peak_w = peak if peak else (None, None)
    return {
        "day": day,
        "power_w": power_w,
        "power_at": power_at,
        "energy_kwh": energy_kwh,
        "cost": queries.money(energy_kwh, tariff),
        "currency": currency,
        "peak_w": peak_w,
        "peak_at": peak_at,
        "computed_at": now,
    }


def _sum_power(items) -> tuple[datetime, float] | None:
    items = list(items)
    if not items:
        return None
    return max(t for t, _ in items), sum(w for _, w in items)


def area_metrics_refresh(*, now: datetime | None = None) -> int:
    """Recompute every site's and room's dashboard figures (see `AreaMetrics`); returns the
    number of sites. Sites are taken a few hundred at a time, grouped by time zone."""
    now = now or timezone.now()
    sites = list(Site.objects.order_by("id").values("id", "timezone", "tariff_per_kwh", "currency"))
    by_zone: dict[str, list[dict]] = defaultdict(list)
    for site in sites:
        by_zone[site["timezone"]].append(site)
    for zone, zone_sites in by_zone.items():
        for i in range(0, len(zone_sites), METRICS_SITES_PER_QUERY):
            _metrics_for(zone=zone, sites=zone_sites[i : i + METRICS_SITES_PER_QUERY], now=now)
    return len(sites)


def _metrics_for(*, zone: str, sites: list[dict], now: datetime) -> None:
    tz = zoneinfo.ZoneInfo(zone)
    local_day = now.astimezone(tz).date()
    lo = datetime.combine(local_day, datetime.min.time(), tz).astimezone(UTC)
    site_ids = [site["id"] for site in sites]
    plan = queries.energy_plan(site_ids=site_ids)
    rooms = queries.rooms_of(site_ids=site_ids)

    site_kwh: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    room_kwh: dict[int, float] = defaultdict(float)
    for _period, device_id, mode, kwh in queries.energy_by_device(
        plan=plan, lo=lo, hi=now, tz=zone, unit="day"
    ):
        site_id, room_id = plan.devices[device_id]
        site_kwh[site_id]["meter" if mode == "meter" else "devices"] += kwh
        if mode != "meter" and room_id is not None:
            room_kwh[room_id] += kwh

    quarter_site: dict[tuple[int, datetime], float] = defaultdict(float)
    quarter_room: dict[tuple[int, datetime], float] = defaultdict(float)
    for quarter, device_id, watts in queries.power_by_quarter(plan=plan, lo=lo, hi=now):
        site_id, room_id = plan.devices[device_id]
        quarter_site[site_id, quarter] += watts
        if room_id is not None:
            quarter_room[room_id, quarter] += watts
    site_peak: dict[int, tuple[datetime, float]] = {}
    for (site_id, quarter), watts in quarter_site.items():
        if site_id not in site_peak or watts > site_peak[site_id][1]:
            site_peak[site_id] = (quarter, watts)
    room_peak: dict[int, tuple[datetime, float]] = {}
    for (room_id, quarter), watts in quarter_room.items():
        if room_id not in room_peak or watts > room_peak[room_id][1]:
            room_peak[room_id] = (quarter, watts)

    latest = queries.latest_power(plan=plan, now=now)
    site_power: dict[int, list] = defaultdict(list)
    room_power: dict[int, list] = defaultdict(list)
    for device_id, reading in latest.items():
        site_id, room_id = plan.devices[device_id]
        site_power[site_id].append(reading)
        if room_id is not None:
            room_power[room_id].append(reading)

    site_rows, room_rows = [], []
    for site in sites:
        kwh = site_kwh.get(site["id"], {})
        source = "meter" if "meter" in kwh else "devices"
        common = {"tariff": site["tariff_per_kwh"], "currency": site["currency"], "now": now}
        site_rows.append(
            SiteMetrics(
                site_id=site["id"],
                energy_source=source,
                **_metric_fields(
                    day=local_day,
                    power=_sum_power(site_power.get(site["id"], [])),
                    energy_kwh=kwh.get(source, 0.0),
                    peak=site_peak.get(site["id"]),
                    **common,
                ),
            )
        )
        for room_id in rooms.get(site["id"], []):
            room_rows.append(
                RoomMetrics(
                    room_id=room_id,
                    site_id=site["id"],
                    **_metric_fields(
                        day=local_day,
                        power=_sum_power(room_power.get(room_id, [])),
                        energy_kwh=room_kwh.get(room_id, 0.0),
                        peak=room_peak.get(room_id),
                        **common,
                    ),
                )
            )
    fields = [f.name for f in SiteMetrics._meta.concrete_fields if not f.primary_key]
    room_fields = [f.name for f in RoomMetrics._meta.concrete_fields if not f.primary_key]
    with transaction.atomic():
        SiteMetrics.objects.bulk_create(
            site_rows, update_conflicts=True, unique_fields=["site"], update_fields=fields
        )
        RoomMetrics.objects.bulk_create(
            room_rows, update_conflicts=True, unique_fields=["room"], update_fields=room_fields
        )
