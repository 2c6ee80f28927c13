"""Stored per-site local days (`SiteDay`): kept by the rollup refresh, used by the fleet view
only while current, so its answers equal the computation from rollups and raw data."""

import io
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from django.core.management import CommandError, call_command

from devices import services as device_services
from telemetry import queries, rollups
from telemetry.models import SiteDay, SiteDayDirty
from tests.telemetry.test_history_apis import insert, meter_of, quarter_hours

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def grid_kwh(day: date, now: datetime = NOW) -> dict[str, float]:
    answer = queries.grid_energy(period_kind="day", day=day, now=now)
    return {site["name"]: site["energy_kwh"] for site in answer["top_sites"]}


def history_kwh(site, day: date) -> float:
    return sum(
        p["energy_kwh"]
        for p in queries.site_energy(site=site, start=day, end=day + timedelta(days=1))
    )


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

    # when the refresh commits just before the query looks at the waiting readings (after
    # the stored rows, were they read first)
    pending = queries._pending_site_days

    def refresh_in_between(**kwargs):
        rollups.rollups_refresh(now=NOW)
        return pending(**kwargs)

    monkeypatch.setattr(queries, "_pending_site_days", refresh_in_between)

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
