"""Stored per-site local days (`SiteDay`): kept by the rollup refresh, used by the fleet view
only while current, so its answers equal the computation from rollups and raw data."""

import io
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from devices import services as device_services
from devices.models import Sensor, Site
from telemetry import queries, rollups
from telemetry.models import SiteDay, SiteDayDirty
from tests.telemetry.test_history_apis import insert, meter_of, quarter_hours

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def grid_kwh(day: date, now: datetime = NOW) -> dict[str, float]:
    answer = queries.grid_energy(period_kind="day", day=day, now=now)
    return {site["name"]: float(site["energy_kwh"]) for site in answer["top_sites"]}


def history_kwh(site, day: date) -> float:
    """The site's energy of the day, rounded once as the grid shows it."""
    exact = sum(
        p["energy_kwh"]
        for p in queries.site_energy(site=site, start=day, end=day + timedelta(days=1))
    )
    return float(queries.shown_kwh(exact))


@pytest.fixture
def metered(alice_home):
    site = alice_home["site"]
    site.tariff_per_kwh = Decimal("0.2000")
    site.save()
    return {"site": site, "meter": meter_of(site)}


@pytest.fixture
def counting(bob_home):
    """Bob's site has no meter: his Pi counts kWh."""
    device = bob_home["device"]
    sensor = device_services.sensor_create(
        device=device, key="energy_kwh", kind="energy", unit="kWh"
    )
    return {"site": bob_home["site"], "counter": sensor.id}


@pytest.mark.django_db
def test_refresh_stores_the_days_that_are_over_with_energy_and_cost(metered):
    # given the meter's quarter-hours from 17 to 20 November (today, at NOW)
    insert([(metered["meter"], t, 0.25) for t in quarter_hours(date(2026, 11, 17), 4)])

    # when
    result = rollups.rollups_refresh(now=NOW)

    # then the three past days are stored, today is not
    days = {row.day: row for row in SiteDay.objects.filter(site=metered["site"])}
    assert sorted(days) == [date(2026, 11, 17), date(2026, 11, 18), date(2026, 11, 19)]
    assert result.site_days == 3
    row = days[date(2026, 11, 18)]
    assert (row.energy_kwh, row.source, row.cost) == (pytest.approx(24.0), "meter", Decimal("4.8"))
    assert list(SiteDayDirty.objects.values_list("day", flat=True)) == [date(2026, 11, 20)]


@pytest.mark.django_db
def test_a_day_without_readings_is_stored_empty_and_not_counted(metered, counting):
    insert([(metered["meter"], t, 0.25) for t in quarter_hours(date(2026, 11, 18), 1)])
    insert([(counting["counter"], datetime(2026, 11, 19, 9, tzinfo=UTC), 3.0)])
    rollups.rollups_refresh(now=NOW)

    # Bob's 19th is marked by his reading, Alice's is not; the 18th is Alice's only
    assert grid_kwh(date(2026, 11, 18)) == {metered["site"].name: pytest.approx(24.0)}
    stored = SiteDay.objects.get(site=counting["site"], day=date(2026, 11, 19))
    assert (stored.source, stored.energy_kwh) == ("devices", 0.0)  # one counter value: no delta


@pytest.mark.django_db
def test_the_fleet_view_reads_stored_days_and_only_while_they_are_current(metered):
    # given a stored past day
    insert([(metered["meter"], t, 0.25) for t in quarter_hours(date(2026, 11, 18), 1)])
    rollups.rollups_refresh(now=NOW)
    name = metered["site"].name
    SiteDay.objects.filter(site=metered["site"]).update(energy_kwh=99.0)

    # then the view answers from it (tampered on purpose to tell the paths apart)
    assert grid_kwh(date(2026, 11, 18)) == {name: 99.0}

    # when a late reading arrives for that day, the view is current before any refresh
    insert([(metered["meter"], datetime(2026, 11, 18, 12, 7, tzinfo=UTC), 1.0)])
    assert grid_kwh(date(2026, 11, 18)) == {name: pytest.approx(25.0)}

    # and after the refresh the stored day is recomputed
    rollups.rollups_refresh(now=NOW)
    assert SiteDay.objects.get(site=metered["site"]).energy_kwh == pytest.approx(25.0)
    assert not SiteDayDirty.objects.exists()
    assert grid_kwh(date(2026, 11, 18)) == {name: pytest.approx(25.0)}


@pytest.mark.django_db
def test_a_late_counter_reading_changes_the_day_of_its_next_reading(counting):
    # given a counter read on the 16th and the 18th only, rolled up and stored
    site, counter = counting["site"], counting["counter"]
    insert([(counter, datetime(2026, 11, 16, 12, tzinfo=UTC), 10.0),
            (counter, datetime(2026, 11, 18, 12, tzinfo=UTC), 20.0)])  # fmt: skip
    rollups.rollups_refresh(now=NOW)
    assert grid_kwh(date(2026, 11, 18)) == {site.name: pytest.approx(10.0)}

    # when a late reading fills the gap on the 17th
    insert([(counter, datetime(2026, 11, 17, 12, tzinfo=UTC), 16.0)])

    # then the 18th counts from it, before and after the refresh, as the site's history does
    for refreshed in (False, True):
        if refreshed:
            rollups.rollups_refresh(now=NOW)
        assert grid_kwh(date(2026, 11, 17)) == {site.name: pytest.approx(6.0)}
        assert grid_kwh(date(2026, 11, 18)) == {site.name: pytest.approx(4.0)}
        assert history_kwh(site, date(2026, 11, 18)) == pytest.approx(4.0)
    assert SiteDay.objects.get(site=site, day=date(2026, 11, 18)).energy_kwh == pytest.approx(4.0)


@pytest.mark.django_db
def test_week_with_stored_days_and_today_sums_both(metered):
    # given the meter all week up to NOW; the days before today stored
    first = date(2026, 11, 16)
    insert([(metered["meter"], t, 0.25) for t in quarter_hours(first, 5) if t < NOW])
    rollups.rollups_refresh(now=NOW)

    # then the week is four stored days and today's 12 hours so far
    answer = queries.grid_energy(period_kind="week", day=first, now=NOW)
    assert answer["energy_kwh"] == pytest.approx(24.0 * 4 + 12.0)
    assert SiteDay.objects.count() == 4


@pytest.mark.django_db
def test_a_day_is_stored_by_a_refresh_that_finds_no_new_marks(metered):
    # given the 18th's readings rolled up while the day was not over
    insert([(metered["meter"], t, 0.25) for t in quarter_hours(date(2026, 11, 18), 1)])
    rollups.rollups_refresh(now=datetime(2026, 11, 19, 0, 1, tzinfo=UTC))
    assert not SiteDay.objects.exists()

    # when the next run, after midnight, finds no marks at all
    result = rollups.rollups_refresh(now=datetime(2026, 11, 19, 0, 30, tzinfo=UTC))

    # then it still stores the day that ended
    assert result.buckets == 0
    assert SiteDay.objects.get(site=metered["site"]).energy_kwh == pytest.approx(24.0)


@pytest.mark.django_db
def test_a_site_without_readings_does_not_send_the_others_back_to_raw_data(
    metered, counting, monkeypatch
):
    # given Alice's stored week (tampered, to tell the paths apart) and Bob with no data at all
    first = date(2026, 11, 9)
    insert([(metered["meter"], t, 0.25) for t in quarter_hours(first, 7)])
    rollups.rollups_refresh(now=NOW)
    SiteDay.objects.filter(site=metered["site"]).update(energy_kwh=1.0)

    # then the week is read from the stored days only
    computed = []
    monkeypatch.setattr(queries, "_zone_energy_by_day", lambda **kw: computed.append(kw) or {})
    answer = queries.grid_energy(period_kind="week", day=first, now=NOW)
    assert answer["energy_kwh"] == pytest.approx(7.0)
    assert computed == []


@pytest.mark.django_db
def test_a_refresh_between_the_querys_reads_never_lets_a_stale_day_through(metered, monkeypatch):
    # given a stored day, then a late reading for it waiting in the marks
    insert([(metered["meter"], t, 0.25) for t in quarter_hours(date(2026, 11, 18), 1)])
    rollups.rollups_refresh(now=NOW)
    insert([(metered["meter"], datetime(2026, 11, 18, 12, 7, tzinfo=UTC), 1.0)])

    # when the refresh commits just before the query reads what is stored and marked
    stored_state = queries._stored_site_days

    def refresh_in_between(**kwargs):
        rollups.rollups_refresh(now=NOW)
        return stored_state(**kwargs)

    monkeypatch.setattr(queries, "_stored_site_days", refresh_in_between)

    # then the answer has the late reading
    assert grid_kwh(date(2026, 11, 18)) == {metered["site"].name: pytest.approx(25.0)}


@pytest.mark.django_db
def test_a_day_that_cannot_be_stored_stays_marked_and_the_others_are_stored(counting, metered):
    # given a counter that jumps so far that the day's cost does not fit, and a normal day
    insert([(counting["counter"], datetime(2026, 11, 17, 1, tzinfo=UTC), 0.0),
            (counting["counter"], datetime(2026, 11, 17, 2, tzinfo=UTC), 1e11)])  # fmt: skip
    insert([(metered["meter"], t, 0.25) for t in quarter_hours(date(2026, 11, 18), 1)])

    # when
    rollups.rollups_refresh(now=NOW)

    # then the 17th stays marked (computed by queries) and the 18th is stored
    assert list(SiteDayDirty.objects.values_list("day", flat=True)) == [date(2026, 11, 17)]
    assert SiteDay.objects.get(day=date(2026, 11, 18)).site == metered["site"]
    assert grid_kwh(date(2026, 11, 17)) == {counting["site"].name: pytest.approx(1e11)}


@pytest.mark.django_db
def test_rebuild_command_has_stored_days_computed_again(metered, counting):
    # given stored days, one of them stale after a configuration change (here: tampered)
    insert([(metered["meter"], t, 0.25) for t in quarter_hours(date(2026, 11, 18), 1)])
    insert([(counting["counter"], datetime(2026, 11, 18, h, tzinfo=UTC), h) for h in (1, 5)])
    rollups.rollups_refresh(now=NOW)
    SiteDay.objects.update(energy_kwh=99.0)

    # when
    out = io.StringIO()
    call_command("rebuild_site_days", "--site", str(metered["site"].id), stdout=out)

    # then the site's days are computed at once, and stored again by the next refresh
    assert "1 stored site days marked" in out.getvalue()
    assert grid_kwh(date(2026, 11, 18))[metered["site"].name] == pytest.approx(24.0)
    rollups.rollups_refresh(now=NOW)
    assert SiteDay.objects.get(site=metered["site"]).energy_kwh == pytest.approx(24.0)
    assert SiteDay.objects.get(site=counting["site"]).energy_kwh == 99.0  # not asked for
    with pytest.raises(CommandError, match="No site with id 999999"):
        call_command("rebuild_site_days", "--site", "999999")


# --- the day in progress: its stored beginning (rollup_site_today) plus what came since ---------


def today_answer(site, day: date, now: datetime) -> tuple[str, float] | None:
    """(source, kWh) of one site's day as the fleet view has it, None without data."""
    days = queries._site_energy_by_day(zones={site.id: site.timezone},
                                       period=queries.period_containing(kind="day", day=day),
                                       now=now)  # fmt: skip
    return days.get((site.id, day))


def stored_today(site) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT day, through, meter_kwh, devices_kwh FROM rollup_site_today WHERE site_id = %s",
            [site.id],
        )
        return cursor.fetchone()


def tamper_today(site, **values) -> None:
    """Change a stored beginning of today, so tests can tell whether an answer used it."""
    sets = ", ".join(f"{name} = %({name})s" for name in values)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE rollup_site_today SET {sets} WHERE site_id = %(site)s",  # noqa: S608
            {**values, "site": site.id},
        )


@pytest.fixture
def powered(make_user, feeder):
    """Carol's site: a Pi measuring power only, integrated into energy."""
    site = Site.objects.create(name="Carol home", timezone="Europe/Lisbon", feeder=feeder)
    device, _ = device_services.device_create(
        uid="pi-c1", site=site, sensors=[{"key": "power_w", "kind": "power", "unit": "W"}]
    )
    return {"site": site, "power": device.sensors.get().id}


def day_so_far(first: date, until: datetime, tz=LISBON):
    return [t for t in quarter_hours(first, 1, tz) if t < until]


@pytest.mark.django_db
def test_today_is_its_stored_beginning_plus_what_came_since_for_every_kind_of_site(
    metered, counting, powered
):
    # given the three kinds of site reporting since midnight, a refresh at 11:00 UTC, and
    # readings after it (the current quarter-hours, not rolled up yet)
    today = date(2026, 11, 20)
    refreshed = datetime(2026, 11, 20, 11, 0, tzinfo=UTC)
    times = day_so_far(today, NOW)
    insert([(metered["meter"], t, 0.25) for t in times])
    insert([(counting["counter"], t + timedelta(minutes=7), 100 + n * 0.3)
            for n, t in enumerate(times)])  # fmt: skip
    insert([(powered["power"], t + timedelta(minutes=m), 400.0 + 10 * n + m)
            for n, t in enumerate(times) for m in (0, 5, 10)])  # fmt: skip
    rollups.rollups_refresh(now=refreshed)

    # then the beginning of today is stored up to the quarter-hour the refresh rolled up
    sites = (metered["site"], counting["site"], powered["site"])
    for site in sites:
        day, through, _meter, _devices = stored_today(site)
        assert (day, through) == (today, datetime(2026, 11, 20, 10, 45, tzinfo=UTC))

    # and the fleet view's today equals the direct computation from the quarter-hours
    expected = {site.name: history_kwh(site, today) for site in sites}
    assert all(kwh > 0 for kwh in expected.values())
    answer = grid_kwh(today)
    assert answer == {name: pytest.approx(kwh) for name, kwh in expected.items()}
    assert today_answer(metered["site"], today, NOW)[0] == "meter"
    assert today_answer(counting["site"], today, NOW)[0] == "devices"

    # and it reads the stored beginning (tampered on purpose to tell the paths apart)
    tamper_today(metered["site"], meter_kwh=1000.0)
    tamper_today(counting["site"], devices_kwh=1000.0)
    tampered = grid_kwh(today)
    assert tampered[metered["site"].name] > 1000 and tampered[counting["site"].name] > 1000


@pytest.mark.django_db
def test_a_late_reading_before_the_stored_beginning_of_today_is_counted_at_once(metered, counting):
    # given today so far, rolled up and its beginning stored
    today = date(2026, 11, 20)
    times = day_so_far(today, NOW)
    insert([(metered["meter"], t, 0.25) for t in times])
    insert([(counting["counter"], t, 100 + n) for n, t in enumerate(times) if n % 4 == 0])
    rollups.rollups_refresh(now=NOW)
    before = grid_kwh(today)
    assert before == {metered["site"].name: pytest.approx(12.0),
                      counting["site"].name: pytest.approx(44.0)}  # fmt: skip
    tamper_today(metered["site"], meter_kwh=1000.0)
    tamper_today(counting["site"], devices_kwh=1000.0)

    # when late readings arrive for the morning: a second meter value in a quarter-hour, and a
    # counter reading between two others (its increase is split, the total stays)
    insert([(metered["meter"], datetime(2026, 11, 20, 3, 7, tzinfo=UTC), 1.0),
            (counting["counter"], datetime(2026, 11, 20, 2, 30, tzinfo=UTC), 110.5)])  # fmt: skip

    # then the stored beginnings are not used until the refresh, and the answer is current
    expected = {metered["site"].name: pytest.approx(13.0),
                counting["site"].name: pytest.approx(44.0)}  # fmt: skip
    assert grid_kwh(today) == expected
    rollups.rollups_refresh(now=NOW)
    assert grid_kwh(today) == expected
    assert stored_today(metered["site"])[2] == pytest.approx(11.75 + 1.0)  # up to 11:45


@pytest.mark.django_db
def test_a_late_counter_reading_of_yesterday_changes_the_first_increase_of_today(counting):
    # given a counter read at 23:00 yesterday and through today, today's beginning stored
    site, counter = counting["site"], counting["counter"]
    today = date(2026, 11, 20)
    insert([(counter, datetime(2026, 11, 19, 23, tzinfo=UTC), 10.0)])
    insert([(counter, t, 20.0 + n / 4) for n, t in enumerate(day_so_far(today, NOW)) if n % 4 == 0])
    rollups.rollups_refresh(now=NOW)
    assert grid_kwh(today) == {site.name: pytest.approx(21.0)}  # 10 from 23:00, then 11 hours

    # when a reading of yesterday 23:30 arrives late: today's first increase counts from it
    insert([(counter, datetime(2026, 11, 19, 23, 30, tzinfo=UTC), 16.0)])

    # then today has it before and after the refresh, as the site's history has
    for refreshed in (False, True):
        if refreshed:
            rollups.rollups_refresh(now=NOW)
        assert grid_kwh(today) == {site.name: pytest.approx(15.0)}
        assert history_kwh(site, today) == pytest.approx(15.0)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("day", "hours"), [(date(2026, 10, 25), 25), (date(2026, 3, 29), 23)], ids=["25h", "23h"]
)
def test_a_clock_change_day_in_progress_equals_the_direct_computation(
    metered, counting, powered, day, hours
):
    # given a clock-change day in Lisbon, every site reporting until late evening
    now = queries.local_midnight(day, LISBON) + timedelta(hours=hours - 2, minutes=10)
    times = day_so_far(day, now)
    assert len(list(quarter_hours(day, 1))) == 4 * hours
    insert([(metered["meter"], t, 0.25) for t in times])
    insert([(counting["counter"], t, 5.0 + 0.5 * n) for n, t in enumerate(times)])
    insert([(powered["power"], t + timedelta(minutes=1), 1000.0) for t in times])

    # when the refresh stores its beginning
    rollups.rollups_refresh(now=now)
    assert stored_today(metered["site"])[:2] == (day, now - timedelta(minutes=10))

    # then the fleet view's day equals the site history's, hour by hour summed
    sites = (metered["site"], counting["site"], powered["site"])
    assert grid_kwh(day, now) == {s.name: pytest.approx(history_kwh(s, day)) for s in sites}
    assert grid_kwh(day, now)[powered["site"].name] == pytest.approx(len(times) * 0.25)


@pytest.mark.django_db
def test_a_refresh_has_the_stored_days_of_a_site_made_otherwise_computed_again(metered, counting):
    # given stored days of two sites, Alice's from her Pi's power alone
    site = metered["site"]
    power = site.devices.get(uid="pi-a1").sensors.get(key="power_w").id
    insert([(power, t, 2000.0) for t in quarter_hours(date(2026, 11, 18), 1)])
    insert([(counting["counter"], datetime(2026, 11, 18, h, tzinfo=UTC), h) for h in (1, 5)])
    rollups.rollups_refresh(now=NOW)
    assert SiteDay.objects.get(site=site).energy_kwh == pytest.approx(48.0)
    bob = SiteDay.objects.get(site=counting["site"])

    # when her power sensor's unit is changed behind the services' back (admin, shell): kW
    Sensor.objects.filter(id=power).update(unit="kW")
    rollups.rollups_refresh(now=NOW)

    # then her stored days are computed at once, and stored again by the next refresh; Bob's
    # are left as they were
    assert grid_kwh(date(2026, 11, 18))[site.name] == pytest.approx(48_000.0)
    rollups.rollups_refresh(now=NOW)
    assert SiteDay.objects.get(site=site).energy_kwh == pytest.approx(48_000.0)
    assert not SiteDayDirty.objects.exists()
    assert SiteDay.objects.get(site=counting["site"]).computed_at == bob.computed_at


@pytest.mark.django_db
def test_a_refresh_marks_no_stored_day_when_no_site_changed(metered, counting):
    insert([(metered["meter"], t, 0.25) for t in quarter_hours(date(2026, 11, 18), 1)])
    rollups.rollups_refresh(now=NOW)
    rollups.rollups_refresh(now=NOW)  # the first refresh had no keys to compare with
    stored = {day.site_id: day.computed_at for day in SiteDay.objects.all()}

    rollups.rollups_refresh(now=NOW + timedelta(minutes=1))

    assert not SiteDayDirty.objects.exists()
    assert {day.site_id: day.computed_at for day in SiteDay.objects.all()} == stored


@pytest.mark.django_db
def test_a_stored_beginning_of_today_is_ignored_once_the_site_is_made_otherwise(metered):
    # given today's beginning stored from Alice's Pi only (its power integrated)
    site = metered["site"]
    power = site.devices.get(uid="pi-a1").sensors.get(key="power_w").id
    SiteDay.objects.all().delete()
    times = day_so_far(date(2026, 11, 20), NOW)
    insert([(power, t, 2000.0) for t in times])
    rollups.rollups_refresh(now=NOW)
    assert grid_kwh(date(2026, 11, 20)) == {site.name: pytest.approx(0.5 * len(times))}

    # when the power sensor's unit changes to kW (what its values mean is another energy)
    Sensor.objects.filter(id=power).update(unit="kW")

    # then today is computed again from the quarter-hours, not from the stored figure
    assert grid_kwh(date(2026, 11, 20)) == {site.name: pytest.approx(500 * len(times))}


@pytest.mark.django_db
def test_a_query_between_a_refresh_s_batches_and_its_end_never_sees_a_stale_today(
    metered, monkeypatch
):
    # given today's beginning stored, then a late morning reading waiting in the marks
    today = date(2026, 11, 20)
    insert([(metered["meter"], t, 0.25) for t in day_so_far(today, NOW)])
    rollups.rollups_refresh(now=NOW)
    insert([(metered["meter"], datetime(2026, 11, 20, 8, 7, tzinfo=UTC), 1.0)])

    # when a refresh has rolled it up (its mark is gone) but not yet stored today again
    monkeypatch.setattr(rollups, "sites_today_refresh", lambda **kwargs: 0)
    rollups.rollups_refresh(now=NOW)

    # then the answer has the late reading once
    assert stored_today(metered["site"]) is None
    assert grid_kwh(today) == {metered["site"].name: pytest.approx(13.0)}


@pytest.mark.django_db
def test_the_rest_of_today_from_the_readings_equals_the_rollups_even_mid_refresh(
    metered, counting, powered, monkeypatch
):
    # given today so far with its beginning stored up to 10:45 UTC (a refresh at 11:00), then
    # a refresh that rolled up the next hour but has not stored a later beginning (mid-run)
    today = date(2026, 11, 20)
    times = day_so_far(today, NOW)
    insert(
        [(metered["meter"], t + timedelta(minutes=3), 0.25 + n / 100) for n, t in enumerate(times)]
    )
    insert([(counting["counter"], t + timedelta(minutes=m), 100 + n * 0.3 + m / 100)
            for n, t in enumerate(times) for m in (2, 9)])  # fmt: skip
    insert([(powered["power"], t + timedelta(minutes=m), 400.0 + 10 * n + m)
            for n, t in enumerate(times) for m in (0, 5, 10)])  # fmt: skip
    rollups.rollups_refresh(now=datetime(2026, 11, 20, 11, 0, tzinfo=UTC))
    with monkeypatch.context() as patched:
        patched.setattr(rollups, "sites_today_refresh", lambda **kwargs: 0)
        rollups.rollups_refresh(now=NOW)
    sites = (metered["site"], counting["site"], powered["site"])
    assert {stored_today(site)[1] for site in sites} == {datetime(2026, 11, 20, 10, 45, tzinfo=UTC)}

    # when the fleet's today sums what came after it from the readings, and from the rollups
    answers, statements = {}, {}
    for limit in (timedelta(hours=2), timedelta(0)):
        monkeypatch.setattr(queries, "RAW_REST_MAX", limit)
        with CaptureQueriesContext(connection) as captured:
            answers[limit] = grid_kwh(today)
        statements[limit] = captured[-1]["sql"]

    # then it took each path, and both equal the direct computation
    assert "rollup_15m" not in statements[timedelta(hours=2)]
    assert "rollup_15m" in statements[timedelta(0)]
    expected = {site.name: pytest.approx(history_kwh(site, today)) for site in sites}
    assert answers[timedelta(hours=2)] == expected
    assert answers[timedelta(0)] == expected


@pytest.mark.django_db
def test_a_later_beginning_of_today_stored_while_the_query_runs_is_not_taken_unchecked(
    metered, monkeypatch
):
    # given today so far and its beginning stored up to 10:45
    today = date(2026, 11, 20)
    insert([(metered["meter"], t, 0.25) for t in day_so_far(today, NOW)])
    rollups.rollups_refresh(now=datetime(2026, 11, 20, 11, 0, tzinfo=UTC))

    # when, after the query read the latest stored end (10:45, which bounds the marks it
    # reads), a refresh stores today up to 11:45 and then a late reading of 11:07 arrives
    fetch_each = queries._fetch_each

    def refresh_in_between(statements):
        results = fetch_each(statements)
        if any("max(through)" in sql for sql, _ in statements):
            rollups.rollups_refresh(now=NOW)
            insert([(metered["meter"], datetime(2026, 11, 20, 11, 7, tzinfo=UTC), 1.0)])
        return results

    monkeypatch.setattr(queries, "_fetch_each", refresh_in_between)

    # then the answer has the late reading: the beginning stored past the bound is not used
    assert grid_kwh(today) == {metered["site"].name: pytest.approx(13.0)}


# --- counters: their last reading before the stored beginning of today (rollup_counter_today) --


def stored_counters() -> dict[int, tuple[datetime, float | None]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT sensor_id, through, last FROM rollup_counter_today")
        return {sensor_id: (through, last) for sensor_id, through, last in cursor.fetchall()}


def last_before(sensor_id: int, instant: datetime) -> float | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT value FROM energy_readings WHERE sensor_id = %s AND time < %s "
            "ORDER BY time DESC LIMIT 1",
            [sensor_id, instant],
        )
        row = cursor.fetchone()
        return row[0] if row else None


@pytest.mark.django_db
def test_the_counters_last_readings_are_stored_with_today_and_counted_from(counting, metered):
    # given a counter reporting at 7 past every quarter-hour, a second one (on Alice's Pi)
    # that never reported, and today's beginning stored up to 10:45
    today = date(2026, 11, 20)
    site, counter = counting["site"], counting["counter"]
    silent = device_services.sensor_create(
        device=metered["site"].devices.get(uid="pi-a1"), key="energy_kwh", kind="energy",
        unit="kWh",
    ).id  # fmt: skip
    insert([(counter, t + timedelta(minutes=7), 100 + n * 0.3)
            for n, t in enumerate(day_so_far(today, NOW))])  # fmt: skip
    through = datetime(2026, 11, 20, 10, 45, tzinfo=UTC)
    rollups.rollups_refresh(now=datetime(2026, 11, 20, 11, 0, tzinfo=UTC))

    # then each counter's last reading before 10:45 is stored (None: it has none)
    assert stored_counters() == {
        counter: (through, pytest.approx(last_before(counter, through))),
        silent: (through, None),
    }
    assert stored_counters()[counter][1] == pytest.approx(100 + 42 * 0.3)  # the 10:37 reading

    # and today counts its first quarter-hour after 10:45 from it (tampered: 5 kWh lower)
    expected = history_kwh(site, today)
    assert grid_kwh(today)[site.name] == pytest.approx(expected)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE rollup_counter_today SET last = last - 5 WHERE sensor_id = %s",
                       [counter])  # fmt: skip
    assert grid_kwh(today)[site.name] == pytest.approx(expected + 5)


@pytest.mark.django_db
def test_a_late_reading_before_the_stored_last_counter_reading_is_counted_at_once(counting):
    # given a counter read yesterday at 20:00, then today only from 11:00 on, and today's
    # beginning stored up to 10:45, so its first increase today counts from yesterday's value
    today = date(2026, 11, 20)
    site, counter = counting["site"], counting["counter"]
    insert([(counter, datetime(2026, 11, 19, 20, tzinfo=UTC), 10.0)])
    insert([(counter, datetime(2026, 11, 20, 11, 15 * n, tzinfo=UTC), 20.0 + n) for n in range(4)])
    rollups.rollups_refresh(now=datetime(2026, 11, 20, 11, 0, tzinfo=UTC))
    assert stored_counters()[counter][1] == 10.0
    assert grid_kwh(today) == {site.name: pytest.approx(13.0)}

    # when a reading of yesterday 23:00 arrives late: its next reading is after 10:45, so
    # nothing stored of today is wrong but the counter's last reading before it
    insert([(counter, datetime(2026, 11, 19, 23, tzinfo=UTC), 15.0)])

    # then today counts from it, before and after the refresh, as the site's history does
    for refreshed in (False, True):
        if refreshed:
            rollups.rollups_refresh(now=NOW)
        assert grid_kwh(today) == {site.name: pytest.approx(8.0)}
        assert history_kwh(site, today) == pytest.approx(8.0)


@pytest.mark.django_db
def test_a_refresh_drops_the_stored_counters_with_their_site_s_beginning_of_today(
    counting, metered, monkeypatch
):
    # given today's beginning stored for both sites, then a late reading of Bob's counter
    today = date(2026, 11, 20)
    counter = counting["counter"]
    insert([(counter, t, 100 + n) for n, t in enumerate(day_so_far(today, NOW))])
    insert([(metered["meter"], t, 0.25) for t in day_so_far(today, NOW)])
    rollups.rollups_refresh(now=NOW)
    assert set(stored_counters()) == {counter}
    insert([(counter, datetime(2026, 11, 20, 8, 7, tzinfo=UTC), 132.5)])

    # when a refresh rolls it up but has not stored today again
    monkeypatch.setattr(rollups, "sites_today_refresh", lambda **kwargs: 0)
    rollups.rollups_refresh(now=NOW)

    # then Bob's counters went with his row; Alice's row stays
    assert stored_counters() == {}
    assert stored_today(counting["site"]) is None
    assert stored_today(metered["site"]) is not None
    assert grid_kwh(today)[counting["site"].name] == pytest.approx(
        history_kwh(counting["site"], today)
    )


# Property: whatever arrives when (late, out of order, a counter reset), with refreshes at any
# quarter-hour of today in between, the fleet's today equals the site history's computation and
# every stored counter reading is the counter's last reading before its `through`.
counter_reading = st.tuples(
    st.integers(0, 4 * 13),  # quarter-hours since yesterday 23:00 UTC, up to NOW
    st.sampled_from([0, 7, 14]),  # minutes into it
    st.integers(0, 400),  # value / 4: ups and downs (resets)
)
arrivals = st.lists(
    st.tuples(
        st.lists(counter_reading, min_size=1, max_size=12),
        st.lists(st.tuples(st.integers(0, 4 * 13), st.integers(0, 14)), max_size=6),  # meter
        st.one_of(st.none(), st.integers(1, 4 * 12)),  # a refresh at that quarter-hour of today
    ),
    min_size=1,
    max_size=5,
)


@pytest.mark.django_db
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(arrivals=arrivals)
def test_the_fleet_s_today_equals_the_direct_computation_whatever_arrives_when(
    counting, metered, arrivals
):
    today = date(2026, 11, 20)
    start = datetime(2026, 11, 19, 23, 0, tzinfo=UTC)
    sites = (counting["site"], metered["site"])
    with transaction.atomic():
        for counters, meters, refresh_at in arrivals:
            at = {start + timedelta(minutes=15 * q + m): v / 4 for q, m, v in counters}
            insert([(counting["counter"], t, v) for t, v in at.items() if t < NOW])
            times = {start + timedelta(minutes=15 * q + m) for q, m in meters}
            insert([(metered["meter"], t, 0.25) for t in times if t < NOW])
            if refresh_at is not None:
                rollups.rollups_refresh(
                    now=queries.local_midnight(today, LISBON) + timedelta(minutes=15 * refresh_at)
                )
                # (a later arrival may make one stale: its mark keeps the site's stored today
                # out of use until the next refresh drops both)
                for sensor_id, (through, last) in stored_counters().items():
                    assert last == last_before(sensor_id, through)
            for site in sites:
                answer = today_answer(site, today, NOW)
                kwh = answer[1] if answer else 0.0
                assert kwh == pytest.approx(history_kwh(site, today), abs=1e-9)
        transaction.set_rollback(True)


@pytest.mark.django_db
def test_the_energy_plan_is_made_again_when_what_it_is_made_of_changes(metered):
    # given the plan of every site, asked twice with nothing changed: the plan made first
    site = metered["site"]
    power = site.devices.get(uid="pi-a1").sensors.get(key="power_w").id
    first = queries.energy_plan(site_ids=None)
    assert queries.energy_plan(site_ids=None) is first
    keys = queries.plan_keys(first, {site.id: site.timezone})
    assert queries.plan_keys(first, {site.id: site.timezone}) is keys

    # when a sensor's unit changes (its values are kW now)
    Sensor.objects.filter(id=power).update(unit="kW")

    # then the plan is made again, with the new factor and another key for the site
    second = queries.energy_plan(site_ids=None)
    assert (first.factors[power], second.factors[power]) == (1.0, 1000.0)
    assert queries.plan_keys(second, {site.id: site.timezone})[site.id] != keys[site.id]


@pytest.mark.django_db
def test_the_fleet_view_reads_the_grid_and_plan_rows_again_only_when_they_changed(metered):
    # given today's meter readings rolled up, and the fleet view asked once
    today = date(2026, 11, 20)
    site = metered["site"]
    insert([(metered["meter"], t, 0.25) for t in day_so_far(today, NOW)])
    rollups.rollups_refresh(now=NOW)
    first = queries.grid_energy(period_kind="day", day=today, now=NOW)
    with CaptureQueriesContext(connection) as unchanged:
        again = queries.grid_energy(period_kind="day", day=today, now=NOW)

    # when the site is renamed and its meter counts Wh from now on
    Site.objects.filter(id=site.id).update(name="Renamed home")
    Sensor.objects.filter(id=metered["meter"]).update(unit="Wh")
    with CaptureQueriesContext(connection) as changed:
        answer = queries.grid_energy(period_kind="day", day=today, now=NOW)

    # then the unchanged call read the fleet's version only, and the changed one the rows too
    assert again == first
    assert len(changed) == len(unchanged) + 2
    assert [(row["name"], row["energy_kwh"]) for row in answer["top_sites"]] == [
        ("Renamed home", pytest.approx(first["energy_kwh"] / 1000))
    ]
