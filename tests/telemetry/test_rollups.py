"""Rollups equal a direct computation on the raw readings, however readings arrive (late,
out of order, twice), at every level, before and after the refresh job; local days across
clock changes; raw retention; dashboard metrics; the TimescaleDB continuous aggregates."""

import math
import random
import zoneinfo
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django.db import connection, transaction

from devices import services as device_services
from devices.models import Room
from telemetry import queries, rollups
from telemetry.models import RoomMetrics, SiteMetrics
from telemetry.services import readings_insert
from tests.timescale.conftest import timescale_server, url_for_database  # noqa: F401

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
# Two days and a bit around the spring clock change in Lisbon (2026-03-29 01:00 UTC).
T0 = datetime(2026, 3, 28, 21, 0, tzinfo=UTC)
NOW = datetime(2026, 4, 2, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(ts: datetime) -> int:
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def insert(rows: list[tuple[int, datetime, float]]) -> int:
    """Write readings the way the batch writer does."""
    with transaction.atomic():
        return readings_insert(
            sensor_ids=[r[0] for r in rows], times_us=[_us(r[1]) for r in rows],
            values=[float(r[2]) for r in rows],
        )  # fmt: skip


def raw_rows(sensor_ids) -> list[tuple[int, datetime, float]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sensor_id, time, value FROM energy_readings WHERE sensor_id = ANY(%s) "
            "ORDER BY sensor_id, time",
            [list(sensor_ids)],
        )
        return cursor.fetchall()


def bucket_of(ts: datetime, level: str, tz=None) -> datetime:
    if tz is None or level == "15m":
        return queries.floor_to(ts, queries.STEPS[level])
    local = ts.astimezone(tz)
    if level == "1h":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    return datetime.combine(local.date(), datetime.min.time(), tz).astimezone(UTC)


def direct(rows, level: str, tz=None, start=None, end=None) -> dict:
    """(sensor, bucket) -> (sum, count, min, max, last), straight from raw rows."""
    groups = defaultdict(list)
    for sensor_id, ts, value in rows:
        if (start is None or ts >= start) and (end is None or ts < end):
            groups[sensor_id, bucket_of(ts, level, tz)].append((ts, value))
    return {
        key: (
            sum(v for _, v in items),
            len(items),
            min(v for _, v in items),
            max(v for _, v in items),
            max(items)[1],
        )
        for key, items in groups.items()
    }


def stored(level: str, sensor_ids) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sensor_id, bucket, sum, count, min, max, last "  # noqa: S608
            f"FROM {queries.TABLES[level]} WHERE sensor_id = ANY(%s)",
            [list(sensor_ids)],
        )
        return {(row[0], row[1]): row[2:] for row in cursor.fetchall()}


def assert_same(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for key, want in expected.items():
        got = actual[key]
        assert got[1] == want[1], (what, key)
        for a, b in zip(got, want, strict=True):
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (what, key, got, want)


def answered(sensor_id: int, level: str, start, end, tz=None) -> dict:
    rows = queries.aggregates(sensor_id=sensor_id, start=start, end=end, bucket=level, tz=tz)
    for row in rows:
        assert math.isclose(row["avg"], row["sum"] / row["count"])
    return {
        (sensor_id, row["bucket"]): (row["sum"], row["count"], row["min"], row["max"])
        for row in rows
    }


def without_last(expected: dict) -> dict:
    return {key: value[:4] for key, value in expected.items()}


def marks(sensor_ids) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM rollup_dirty WHERE sensor_id = ANY(%s)", [sensor_ids])
        return cursor.fetchone()[0]


@pytest.fixture
def sensors(alice_home) -> list[int]:
    device = alice_home["device"]
    return [device.sensors.get(key="power_w").id, device.sensors.get(key="voltage_v").id]


# --- property: rollups = direct computation -------------------------------------------------

reading = st.tuples(
    st.integers(0, 1),  # which sensor
    st.integers(0, 3000),  # minutes after T0: 50 hours, across the clock change
    st.sampled_from([0, 1, 59]),  # seconds: several readings per minute, and duplicates
    st.integers(-500, 500),  # value
)
batches = st.lists(
    st.tuples(st.lists(reading, min_size=1, max_size=40), st.booleans()), min_size=1, max_size=6
)


@pytest.mark.django_db
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=batches, data=st.data())
@pytest.mark.parametrize("set_based_from", [1, 10**9], ids=["set-based", "per-mark"])
def test_rollups_equal_direct_computation_whatever_the_arrival_order(
    sensors, batches, data, set_based_from, monkeypatch
):
    # both ways of recomputing a batch of marks: set-based (a backlog) and one mark at a time
    monkeypatch.setattr(rollups, "_SET_BASED_FROM", set_based_from)
    with transaction.atomic():
        # given readings written in batches (late, out of order, repeated), the refresh job
        # running between some of them
        for batch, refresh_after in batches:
            rows = [
                (sensors[s], T0 + timedelta(minutes=m, seconds=sec), v / 4)
                for s, m, sec, v in batch
            ]
            insert(rows)
            if refresh_after:
                rollups.rollups_refresh(now=NOW)
        raw = raw_rows(sensors)
        start = T0 + timedelta(minutes=data.draw(st.integers(0, 3000)), seconds=7)
        end = start + timedelta(minutes=data.draw(st.integers(1, 3000)), seconds=11)

        # then queries answer from rollups + marked buckets exactly what raw data says
        def check_queries(when: str) -> None:
            for level in ("15m", "1h", "1d"):
                for tz in (None, LISBON):
                    expected = direct(raw, level, tz, start, end)
                    for sensor_id in sensors:
                        got = answered(sensor_id, level, start, end, tz)
                        mine = {k: v for k, v in expected.items() if k[0] == sensor_id}
                        assert_same(got, without_last(mine), f"{when} {level} {tz}")
            for sensor_id in sensors:
                mine = [r for r in raw if r[0] == sensor_id and start <= r[1] < end]
                result = queries.stats(sensor_id=sensor_id, start=start, end=end)
                assert result["count"] == len(mine), when
                if mine:
                    assert math.isclose(result["sum"], sum(r[2] for r in mine), abs_tol=1e-9)
                    assert result["min"] == min(r[2] for r in mine)
                    assert result["max"] == max(r[2] for r in mine)

        check_queries("before the last refresh")
        # when the refresh job has caught up
        rollups.rollups_refresh(now=NOW)
        # then every bucket of every level equals the direct computation, and no mark is left
        assert marks(sensors) == 0
        for level in ("15m", "1h", "1d"):
            assert_same(stored(level, sensors), direct(raw, level), f"stored {level}")
        check_queries("after the refresh")
        transaction.set_rollback(True)


# --- marks ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_duplicate_marks_nothing_and_a_late_reading_marks_its_own_quarter_hour(sensors):
    insert([(sensors[0], T0, 1.0), (sensors[0], T0 + timedelta(hours=3), 2.0)])
    rollups.rollups_refresh(now=NOW)
    assert marks(sensors) == 0
    # a duplicate of an instant already stored (another value): dropped, nothing to recompute
    assert insert([(sensors[0], T0, 99.0)]) == 0
    assert marks(sensors) == 0
    # a late reading between the two: only its quarter-hour is marked
    insert([(sensors[0], T0 + timedelta(minutes=70), 5.0)])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sensor_id, bucket FROM rollup_dirty WHERE sensor_id = ANY(%s)", [sensors]
        )
        assert cursor.fetchall() == [(sensors[0], T0 + timedelta(minutes=60))]
    result = rollups.rollups_refresh(now=NOW)
    assert result.buckets == 1
    assert stored("1h", sensors)[sensors[0], T0 + timedelta(hours=1)] == (5.0, 1, 5.0, 5.0, 5.0)


@pytest.mark.django_db
def test_a_bucket_re_marked_after_the_job_read_it_stays_marked(sensors):
    # given a mark as the job read it
    insert([(sensors[0], T0, 1.0)])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sensor_id, bucket, seq FROM rollup_dirty WHERE sensor_id = ANY(%s)", [sensors]
        )
        [(sensor_id, bucket, seq)] = cursor.fetchall()
        # when a writer adds a reading to the same quarter-hour before the job unmarks it
        insert([(sensors[0], T0 + timedelta(minutes=1), 2.0)])
        params = {"sensor_ids": [sensor_id], "buckets": [bucket], "seqs": [seq]}
        cursor.execute(rollups._UNMARK, params)
        # then the mark survives for the next run
        assert cursor.rowcount == 0
    assert marks(sensors) == 1


@pytest.mark.django_db
def test_the_quarter_hour_still_filling_is_left_marked_and_read_from_raw(sensors):
    now = T0 + timedelta(minutes=20)
    insert([(sensors[0], T0 + timedelta(minutes=2), 1.0), (sensors[0], now, 3.0)])
    rollups.rollups_refresh(now=now)
    assert marks(sensors) == 1  # the quarter-hour of `now`
    got = answered(sensors[0], "1h", T0, T0 + timedelta(hours=1))
    assert got == {(sensors[0], T0): (4.0, 2, 1.0, 3.0)}


@pytest.mark.django_db
def test_a_year_of_local_days_across_both_clock_changes_equals_the_direct_sums(sensors):
    # given a reading every 40 minutes (so hours and days hold different counts) from
    # December 2025 to December 2026 in Lisbon: winter days (UTC+0), summer days (UTC+1), and
    # the two clock changes
    rng = random.Random(7)
    start = datetime(2025, 12, 30, 22, 13, tzinfo=UTC)
    end = datetime(2026, 12, 2, 3, 31, tzinfo=UTC)
    rows, t = [], start
    while t < end:
        rows.append((sensors[0], t, rng.randint(-50, 500) / 10))
        t += timedelta(minutes=40)
    insert(rows)
    lisbon = zoneinfo.ZoneInfo("Europe/Lisbon")
    expected = without_last(direct(raw_rows(sensors[:1]), "1d", lisbon, start, end))
    assert len(expected) == 338
    for refreshed in (False, True):
        if refreshed:
            rollups.rollups_refresh(now=end + timedelta(days=1))

        # when
        actual = answered(sensors[0], "1d", start, end, lisbon)

        # then every local day (23 and 25 hours on the change days) equals the direct sums
        assert_same(actual, expected, f"days, refreshed={refreshed}")


@pytest.mark.django_db
def test_a_refresh_finding_a_backlog_refreshes_the_planner_s_statistics_first(sensors, monkeypatch):
    # given a backlog of 33 marks, none settled yet (so the refresh processes none of them)
    monkeypatch.setattr(rollups, "_ANALYZE_AFTER", 20)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO rollup_dirty (sensor_id, bucket) SELECT %s, b FROM generate_series("
            "%s::timestamptz, %s::timestamptz, interval '15 minutes') b",
            [sensors[0], T0, T0 + timedelta(hours=8)],
        )

    # when
    result = rollups.rollups_refresh(now=T0 + timedelta(hours=8), settle=timedelta(days=1))

    # then the marks' statistics count them
    assert result.buckets == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'rollup_dirty'")
        assert cursor.fetchone()[0] == 33


@pytest.mark.django_db
def test_a_refresh_already_running_makes_another_skip(sensors):
    # a second session holds the lock
    other = psycopg.connect(_url(), autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [rollups._REFRESH_LOCK])
        assert rollups.rollups_refresh(now=NOW).skipped
        other.execute("SELECT pg_advisory_unlock(%s)", [rollups._REFRESH_LOCK])
    finally:
        other.close()
    assert not rollups.rollups_refresh(now=NOW).skipped


def _url() -> str:
    s = connection.settings_dict
    return f"postgresql://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


# --- local days and site energy ---------------------------------------------------------------


@pytest.fixture
def lisbon_site(alice_home):
    """Alice's Lisbon site with a utility meter (kWh per quarter-hour) and a Pi counter."""
    site = alice_home["site"]
    meter, _ = device_services.device_create(
        uid=f"meter-{site.id}", site=site, kind="meter",
        sensors=[{"key": "energy_kwh", "kind": "energy", "unit": "kWh"}],
    )  # fmt: skip
    pi = alice_home["device"]
    counter = device_services.sensor_create(device=pi, key="energy_kwh", kind="energy", unit="kWh")
    return {
        "site": site,
        "meter": meter.sensors.get().id,
        "counter": counter.id,
        "power": pi.sensors.get(key="power_w").id,
        "room": alice_home["room"],
    }


def _quarter_hours(day_before: date, days: int):
    start = datetime.combine(day_before, datetime.min.time(), LISBON).astimezone(UTC)
    end = start + timedelta(days=days)
    t = start
    while t < end:
        yield t
        t += timedelta(minutes=15)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25), (date(2026, 6, 1), 24)]
)
def test_a_local_day_holds_the_energy_of_exactly_its_own_readings(lisbon_site, day, hours):
    # given a meter reading every quarter-hour from the day before to the day after
    rng = random.Random(day.toordinal())
    rows = [
        (lisbon_site["meter"], t, rng.randint(0, 400) / 100)
        for t in _quarter_hours(day - timedelta(days=1), 3)
    ]
    insert(rows)
    mine = [v for _, t, v in rows if t.astimezone(LISBON).date() == day]
    assert len(mine) == hours * 4
    site = lisbon_site["site"]
    for refreshed in (False, True):
        if refreshed:
            rollups.rollups_refresh(now=NOW.replace(year=2027))
        # when
        [day_total] = queries.site_energy(site=site, start=day, end=day + timedelta(days=1))
        by_hour = queries.site_energy(
            site=site, start=day, end=day + timedelta(days=1), unit="hour"
        )
        # then
        assert day_total["start"] == datetime.combine(day, datetime.min.time(), LISBON)
        assert math.isclose(day_total["energy_kwh"], sum(mine))
        assert day_total["source"] == "meter"
        assert float(day_total["cost"]) == pytest.approx(sum(mine) * 0.2, abs=1e-4)
        assert day_total["currency"] == "EUR"
        assert len(by_hour) == hours
        assert math.isclose(sum(h["energy_kwh"] for h in by_hour), sum(mine))
        # and the API's local-day bucket agrees
        lo = datetime.combine(day, datetime.min.time(), LISBON).astimezone(UTC)
        [api_day] = queries.aggregates(
            sensor_id=lisbon_site["meter"], start=lo, end=lo + timedelta(hours=hours),
            bucket="1d", tz=LISBON,
        )  # fmt: skip
        assert api_day["count"] == hours * 4
        assert math.isclose(api_day["sum"], sum(mine))


@pytest.mark.django_db
def test_a_counter_counts_its_increase_and_a_reset_does_not_count_backwards(lisbon_site):
    site = lisbon_site["site"]
    day = date(2026, 5, 10)
    lo = datetime.combine(day, datetime.min.time(), LISBON).astimezone(UTC)
    counter = lisbon_site["counter"]
    insert(
        [
            (counter, lo - timedelta(minutes=5), 100.0),  # the day before
            (counter, lo + timedelta(minutes=5), 100.5),
            (counter, lo + timedelta(hours=2), 101.5),
            (counter, lo + timedelta(hours=2, minutes=20), 3.0),  # device restarted: reset
            (counter, lo + timedelta(hours=2, minutes=25), 3.25),
            (counter, lo + timedelta(hours=5), 4.0),
            (counter, lo + timedelta(days=1, minutes=1), 4.5),  # the next day
        ]
    )
    for _ in range(2):
        [total] = queries.site_energy(site=site, start=day, end=day + timedelta(days=1))
        # 0.5 + 1.0 + (3.25 - 3.0 after the reset) + 0.75
        assert math.isclose(total["energy_kwh"], 2.5)
        assert total["source"] == "devices"
        assert total["devices"] == {site.devices.get(kind="pi").id: pytest.approx(2.5)}
        rollups.rollups_refresh(now=NOW.replace(year=2027))


# --- retention ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_retention_deletes_old_raw_data_in_batches_and_keeps_rollups(sensors, settings):
    settings.READINGS_RETENTION = "30 days"
    now = datetime(2026, 11, 20, tzinfo=UTC)
    old = now - timedelta(days=500)
    late_window = now - timedelta(days=300)  # older than 30 days, but late data may still come
    insert([(sensors[0], old + timedelta(minutes=i), float(i)) for i in range(25)])
    insert([(sensors[0], late_window, 7.0)])
    rollups.rollups_refresh(now=now)
    before = answered(sensors[0], "1d", old - timedelta(days=1), old + timedelta(days=1))

    result = rollups.readings_retention_run(now=now, batch=10)

    assert result.deleted == 25
    assert result.cutoff == now - rollups.LATE_WINDOW
    assert [r[1] for r in raw_rows(sensors)] == [late_window]
    assert answered(sensors[0], "1d", old - timedelta(days=1), old + timedelta(days=1)) == before


@pytest.mark.django_db
def test_retention_never_deletes_readings_of_a_bucket_still_to_roll_up(sensors, settings):
    settings.READINGS_RETENTION = "30 days"
    now = datetime(2026, 11, 20, tzinfo=UTC)
    old = now - timedelta(days=500)
    insert([(sensors[0], old, 1.0), (sensors[0], old + timedelta(days=10), 2.0)])
    rollups.rollups_refresh(now=now)
    insert([(sensors[0], old + timedelta(days=10, minutes=1), 3.0)])  # marked, not rolled up

    rollups.readings_retention_run(now=now)

    assert [r[2] for r in raw_rows(sensors)] == [2.0, 3.0]
    rollups.rollups_refresh(now=now)
    day = old + timedelta(days=10)
    assert answered(sensors[0], "1d", day - timedelta(days=1), day + timedelta(days=1))[
        sensors[0], queries.floor_to(day, timedelta(days=1))
    ] == (5.0, 2, 2.0, 3.0)


def test_continuous_aggregates_are_never_refreshed_where_retention_dropped_raw_data():
    day = timedelta(days=1).total_seconds()
    for retention_days in (3, 30, 400, 730, 3650):
        start = rollups.refresh_start(retention_s=retention_days * day)
        assert start <= timedelta(days=retention_days - 1)
    assert rollups.refresh_start(retention_s=None) == rollups.LATE_WINDOW
    with pytest.raises(ValueError, match="too short"):
        rollups.refresh_start(retention_s=2 * day)


# --- site and room metrics ----------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_give_power_now_energy_and_cost_today_and_the_peak(lisbon_site, bob_home):
    site = lisbon_site["site"]
    now = datetime(2026, 7, 1, 14, 7, tzinfo=UTC)  # 15:07 in Lisbon
    midnight = datetime(2026, 7, 1, tzinfo=LISBON).astimezone(UTC)
    power, counter = lisbon_site["power"], lisbon_site["counter"]
    insert(
        [
            (counter, midnight - timedelta(minutes=1), 50.0),
            (counter, midnight + timedelta(hours=3), 51.0),
            (counter, now - timedelta(minutes=1), 53.5),
            (power, midnight + timedelta(hours=9), 2000.0),
            (power, midnight + timedelta(hours=9, minutes=5), 4000.0),  # 3 kW over 09:00-09:15
            (power, now - timedelta(minutes=2), 800.0),
            (power, now - timedelta(minutes=1), 900.0),
        ]
    )
    rollups.rollups_refresh(now=now)

    assert rollups.area_metrics_refresh(now=now) == 2

    metrics = SiteMetrics.objects.get(site=site)
    assert metrics.day == date(2026, 7, 1)
    assert metrics.power_w == 900.0
    assert metrics.power_at == now - timedelta(minutes=1)
    assert metrics.energy_kwh == pytest.approx(3.5)
    assert metrics.cost == Decimal("0.7000")
    assert metrics.currency == "EUR"
    assert metrics.peak_w == 3000.0
    assert metrics.peak_at == midnight + timedelta(hours=9)
    room = RoomMetrics.objects.get(room=lisbon_site["room"])
    assert (room.energy_kwh, room.power_w, room.peak_w) == (pytest.approx(3.5), 900.0, 3000.0)
    empty = SiteMetrics.objects.get(site=bob_home["site"])
    assert (empty.energy_kwh, empty.power_w, empty.peak_w) == (0.0, None, None)


@pytest.mark.django_db
def test_metrics_use_the_meter_when_it_has_data_for_the_day(lisbon_site):
    now = datetime(2026, 7, 1, 14, 7, tzinfo=UTC)
    midnight = datetime(2026, 7, 1, tzinfo=LISBON).astimezone(UTC)
    insert(
        [
            (lisbon_site["counter"], midnight + timedelta(minutes=1), 10.0),
            (lisbon_site["counter"], midnight + timedelta(hours=2), 20.0),
            (lisbon_site["meter"], midnight, 0.75),
            (lisbon_site["meter"], midnight + timedelta(minutes=15), 0.5),
        ]
    )
    rollups.area_metrics_refresh(now=now)
    metrics = SiteMetrics.objects.get(site=lisbon_site["site"])
    assert (metrics.energy_source, metrics.energy_kwh) == ("meter", 1.25)
    # the room has no meter: its devices' energy
    assert RoomMetrics.objects.get(room=lisbon_site["room"]).energy_kwh == pytest.approx(10.0)


@pytest.mark.django_db
def test_a_power_only_device_has_its_power_integrated(alice_home):
    site = alice_home["site"]
    room = Room.objects.create(site=site, name="Attic")
    heater, _ = device_services.device_create(
        uid="hvac-1", site=site, room=room, kind="hvac",
        sensors=[{"key": "power_kw", "kind": "power", "unit": "kW"}],
    )  # fmt: skip
    sensor_id = heater.sensors.get().id
    day = date(2026, 7, 2)
    lo = datetime.combine(day, datetime.min.time(), LISBON).astimezone(UTC)
    # 2 kW for the first hour, sampled every 5 minutes
    insert([(sensor_id, lo + timedelta(minutes=5 * i), 2.0) for i in range(12)])
    [total] = queries.site_energy(site=site, start=day, end=day + timedelta(days=1))
    assert total["energy_kwh"] == pytest.approx(2.0)
    assert total["rooms"] == {room.id: pytest.approx(2.0)}


# --- TimescaleDB: the same answers from continuous aggregates --------------------------------


@pytest.fixture
def timescale(timescale_server, monkeypatch):  # noqa: F811
    """A PGlite TimescaleDB with `energy_readings` as a hypertable and the rollups as continuous
    aggregates, and the query module pointed at it."""
    with psycopg.connect(timescale_server, autocommit=True) as admin:
        name = f"rollups_{random.randrange(10**9)}"
        admin.execute(f"CREATE DATABASE {name}")
    conn = psycopg.connect(url_for_database(timescale_server, name), autocommit=True)
    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    conn.execute(
        "CREATE TABLE energy_readings (sensor_id bigint NOT NULL, time timestamptz NOT NULL, "
        "value double precision NOT NULL, PRIMARY KEY (sensor_id, time))"
    )
    conn.execute(
        "SELECT create_hypertable('energy_readings', 'time', "
        "chunk_time_interval => interval '1 day')"
    )
    for statement in rollups._CAGGS:
        conn.execute(statement)
    monkeypatch.setattr(queries, "is_timescale", lambda _connection: True)
    monkeypatch.setattr(queries, "_fetch", lambda sql, params: conn.execute(sql, params).fetchall())
    yield conn
    conn.close()


def _ts_insert(conn, rows) -> None:
    conn.execute(
        "INSERT INTO energy_readings SELECT * FROM unnest(%s::bigint[], %s::timestamptz[], "
        "%s::float8[]) ON CONFLICT DO NOTHING",
        [[r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]],
    )


def refresh_all(conn) -> None:
    """What the policies do, bottom up: each level reads the one below."""
    for level in ("15m", "1h", "1d"):
        conn.execute(f"CALL refresh_continuous_aggregate('{queries.TABLES[level]}', NULL, NULL)")


def _ts_raw(conn):
    return conn.execute("SELECT sensor_id, time, value FROM energy_readings").fetchall()


def test_timescale_continuous_aggregates_answer_like_raw_data(timescale):
    # given readings, some in buckets materialized before late readings arrived
    rng = random.Random(5)
    rows = [(1, T0 + timedelta(minutes=rng.randrange(3000), seconds=rng.choice([0, 30])),
             rng.randint(-100, 100) / 4) for _ in range(400)]  # fmt: skip
    _ts_insert(timescale, rows)
    start, end = T0 + timedelta(minutes=7), T0 + timedelta(hours=49, minutes=3)

    def check() -> None:
        raw = _ts_raw(timescale)
        for level in ("15m", "1h", "1d"):
            for tz in (None, LISBON):
                expected = direct(raw, level, tz, start, end)
                assert_same(answered(1, level, start, end, tz), without_last(expected), level)
        result = queries.stats(sensor_id=1, start=start, end=end)
        assert result["count"] == len([r for r in raw if start <= r[1] < end])

    # real time: nothing materialized yet
    check()
    refresh_all(timescale)
    timescale.execute(
        "ALTER MATERIALIZED VIEW rollup_1d SET (timescaledb.materialized_only = true)"
    )
    assert timescale.execute("SELECT count(*) FROM rollup_1d").fetchone()[0] == 3
    timescale.execute(
        "ALTER MATERIALIZED VIEW rollup_1d SET (timescaledb.materialized_only = false)"
    )
    check()
    # late readings below the watermark show once their buckets are refreshed (the policy)
    _ts_insert(timescale, [(1, T0 + timedelta(minutes=m, seconds=13), 1000.0) for m in (1, 700)])
    refresh_all(timescale)
    check()


def test_timescale_refresh_policies_start_after_raw_retention(timescale, settings):
    settings.READINGS_RETENTION = "730 days"

    class Connection:  # what continuous_aggregate_policies_apply needs of a connection
        def cursor(self):
            return timescale.cursor()

    rollups.continuous_aggregate_policies_apply(Connection())
    jobs = timescale.execute(
        "SELECT hypertable_name, config FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_refresh_continuous_aggregate'"
    ).fetchall()
    assert len(jobs) == 3
    for _name, config in jobs:
        start = timescale.execute("SELECT %s::interval", [config["start_offset"]]).fetchone()[0]
        assert start < timedelta(days=730)
        assert start >= rollups.LATE_WINDOW - timedelta(days=1)
