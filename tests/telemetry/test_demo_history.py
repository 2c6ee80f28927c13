"""The demo's synthetic past (telemetry/demo_history.py): what it stores, that a second run adds
nothing, that a later run fills the gap, and that the series have the shapes they claim."""

import itertools
import statistics
import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest

from django.db.models import Count, Max, Min

from devices.demo import DEMO_SITES, demo_seed
from devices.models import Sensor
from telemetry import demo_history
from telemetry.demo_history import (
    CHUNK_ROWS,
    COUNTER_START_KWH,
    demo_history_fill,
    history_times,
)
from telemetry.models import Reading, Rollup1d, Rollup15m, RollupDirty

NOW = datetime(2026, 11, 18, 10, 7, 30, tzinfo=UTC)  # a Wednesday
LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
DAYS = 5  # the tests' past: short, so they run quickly (make run seeds 90 days)


@pytest.fixture
def few_minutes(monkeypatch):
    """Minutes for the last 6 hours instead of 2 days: a fifth of the rows to write."""
    monkeypatch.setattr(demo_history, "FINE_DAYS", 0.25)


@pytest.fixture
def two_weeks(db, few_minutes):
    """The demo with 15 days of past: two weekends, weather of several kinds."""
    demo_seed(rotate_tokens=False)
    demo_history_fill(now=NOW, days=15)


def series(uid: str, key: str) -> dict[datetime, float]:
    return dict(
        Reading.objects.filter(sensor__device__uid=uid, sensor__key=key)
        .order_by("time")
        .values_list("time", "value")
    )


def test_the_past_is_quarter_hours_then_minutes_for_the_last_two_days_up_to_now():
    times = history_times(NOW, days=90)

    assert times[0] == datetime(2026, 8, 20, 10, 15, tzinfo=UTC)  # 90 days back, next quarter
    assert times[-1] == datetime(2026, 11, 18, 10, 7, tzinfo=UTC)  # never after now
    steps = {b - a for a, b in itertools.pairwise(times)}
    assert steps == {timedelta(minutes=15), timedelta(minutes=1)}
    fine = [t for t in times if t >= datetime(2026, 11, 16, 10, 0, tzinfo=UTC)]
    assert len(fine) == 2 * 24 * 60 + 8  # two days of minutes and the 8 of this quarter-hour
    assert len(times) == (90 - 2) * 96 - 1 + len(fine)


@pytest.mark.django_db
@pytest.mark.usefixtures("few_minutes")
def test_every_demo_sensor_gets_every_instant_and_rollups_are_brought_current():
    # given
    demo_seed(rotate_tokens=False)
    sensors = Sensor.objects.filter(
        device__uid__in=[d[0] for s in DEMO_SITES for d in s["devices"]]
    )
    expected = len(history_times(NOW, days=DAYS))
    lines = []

    # when
    result = demo_history_fill(now=NOW, days=DAYS, progress=lambda *a: lines.append(a))

    # then
    counts = dict(
        Reading.objects.values_list("sensor_id").annotate(n=Count("*")).values_list("sensor", "n")
    )
    assert counts == {sensor.pk: expected for sensor in sensors}
    assert result.readings == expected * sensors.count() and result.sensors == sensors.count()
    # rollups current: no mark left but the quarter-hour not over at `now` (read from raw)
    assert set(RollupDirty.objects.values_list("bucket", flat=True)) <= {
        datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
    }
    assert Rollup15m.objects.count() == result.buckets
    days = Rollup1d.objects.filter(sensor__key="power_w", sensor__device__uid="pi-0001")
    assert days.count() == DAYS + 1  # the days touched, partial first and last included
    # progress: readings as they are written, in chunks, then the rollups
    readings = [done for phase, done, total in lines if phase == "readings"]
    assert readings == sorted(readings) and readings[-1] == result.readings
    assert len(readings) >= result.readings // CHUNK_ROWS
    assert lines[-1][0] == "rollups"


@pytest.mark.django_db
@pytest.mark.usefixtures("few_minutes")
def test_a_second_run_adds_nothing_and_a_later_one_fills_only_the_gap():
    demo_seed(rotate_tokens=False)
    demo_history_fill(now=NOW, days=DAYS)
    before = Reading.objects.count()
    last_counter = series("pi-0003", "energy_kwh")

    again = demo_history_fill(now=NOW, days=DAYS)

    assert again.readings == 0 and again.sensors == 0
    assert Reading.objects.count() == before

    # when three hours later
    later = demo_history_fill(now=NOW + timedelta(hours=3), days=DAYS)

    # then each sensor gets the 180 minutes since, nothing before, nothing twice
    sensors = Sensor.objects.filter(readings__time__gt=NOW).distinct().count()
    assert later.readings == 180 * sensors and later.sensors == sensors
    assert Reading.objects.count() == before + later.readings
    new = Reading.objects.filter(time__gt=NOW).aggregate(first=Min("time"), last=Max("time"))
    assert new == {
        "first": NOW.replace(second=0) + timedelta(minutes=1),
        "last": NOW.replace(second=0) + timedelta(hours=3),
    }
    # the energy counter goes on from where it stood
    counter = series("pi-0003", "energy_kwh")
    assert counter[min(t for t in counter if t > NOW)] >= max(last_counter.values())
    assert list(counter.values()) == sorted(counter.values())


@pytest.mark.django_db
@pytest.mark.usefixtures("few_minutes")
def test_the_same_instant_gets_the_same_values_whoever_fills_it():
    # given one fill in one go, and one in two steps (whose minutes start 5 hours earlier)
    demo_seed(rotate_tokens=False)
    demo_history_fill(now=NOW, days=DAYS)
    whole = {key: series("pi-0001", key) for key in ("power_w", "voltage_v")}
    Reading.objects.all().delete()

    demo_history_fill(now=NOW - timedelta(hours=5), days=DAYS)
    demo_history_fill(now=NOW, days=DAYS)

    # then every instant both have holds the same values
    for key in ("power_w", "voltage_v"):
        stepped = series("pi-0001", key)
        common = stepped.keys() & whole[key].keys()
        assert len(common) > (DAYS - 1) * 96
        assert {t: stepped[t] for t in common} == {t: whole[key][t] for t in common}
    counter = list(series("pi-0001", "energy_kwh").values())
    assert counter == sorted(counter) and counter[0] >= COUNTER_START_KWH  # above any Pi's


@pytest.mark.usefixtures("two_weeks")
def test_the_pv_home_imports_below_zero_at_noon_and_nothing_at_night():
    grid, panels = series("pi-0008", "power_w"), series("pv-0008", "pv_w")
    noons = [t for t in grid if (t.hour, t.minute) == (12, 30)]
    assert len(noons) >= 14
    assert sum(grid[t] < 0 for t in noons) >= 0.8 * len(noons)
    assert all(panels[t] > 800 for t in noons)
    midnights = [t for t in panels if (t.hour, t.minute) == (0, 0)]
    assert midnights and all(panels[t] == 0 and grid[t] > 0 for t in midnights)
    # the import counter never runs backwards while the home exports
    counter = list(series("pi-0008", "energy_kwh").values())
    assert counter == sorted(counter)


@pytest.mark.usefixtures("two_weeks")
def test_the_heat_pump_follows_the_weather_and_homes_differ_weekday_from_weekend():
    # heat pump: more power on the colder days
    temp, power = series("hp-0005", "outdoor_temp_c"), series("hp-0005", "power_w")
    by_day: dict = {}
    for t, celsius in temp.items():
        by_day.setdefault(t.astimezone(LISBON).date(), []).append((celsius, power[t]))
    days = sorted(
        (statistics.mean(c for c, _ in v), statistics.mean(w for _, w in v))
        for v in by_day.values()
        if len(v) >= 96
    )
    cold, warm = days[: len(days) // 3], days[-len(days) // 3 :]
    assert statistics.mean(w for _, w in cold) > 1.3 * statistics.mean(w for _, w in warm)
    # households: home at midday at the weekend, out on weekdays
    midday = {True: [], False: []}
    for uid in ("pi-0006", "pi-0010", "pi-0012"):
        for t, watts in series(uid, "power_w").items():
            local = t.astimezone(LISBON)
            if 11 <= local.hour < 15:
                midday[local.weekday() >= 5].append(watts)
    assert statistics.mean(midday[True]) > 1.5 * statistics.mean(midday[False])
    # and a home's counter counts what a home uses in a day, a heat pump's what it uses in autumn
    for uid, least, most in (("pi-0006", 4, 20), ("hp-0005", 3, 60)):
        counter = series(uid, "energy_kwh")
        day = [v for t, v in counter.items() if timedelta(days=7) < NOW - t <= timedelta(days=8)]
        assert least < day[-1] - day[0] < most, uid


@pytest.mark.django_db
@pytest.mark.usefixtures("few_minutes")
def test_a_cut_darkens_the_site_and_stops_its_counters():
    demo_seed(rotate_tokens=False)
    alice = Sensor.objects.get(device__uid="pi-0001", key="power_w").device.site_id
    cut = (NOW - timedelta(days=2, hours=3), NOW - timedelta(days=2, hours=2))

    demo_history_fill(now=NOW, days=DAYS, dark={alice: [cut]})

    inside = [t for t in series("pi-0001", "power_w") if cut[0] <= t < cut[1]]
    assert len(inside) == 4  # the quarter-hours within the hour
    for key in ("power_w", "voltage_v"):
        assert {series("pi-0001", key)[t] for t in inside} == {0.0}
    counter = series("pi-0001", "energy_kwh")
    assert len({counter[t] for t in inside}) == 1
    # other sites' and other times' readings are not dark
    assert series("pi-0003", "power_w")[inside[0]] > 0
    after = min(t for t in series("pi-0001", "voltage_v") if t >= cut[1])
    assert series("pi-0001", "voltage_v")[after] > 220
