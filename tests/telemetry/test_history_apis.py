"""GET /api/v1/sites/<id>/energy/ (a site's history) and /api/v1/analytics/… (operators): local
hours and days across clock changes, previous period, breakdowns, CSV, scoping, bad input and
query counts."""

import csv
import io
import math
import random
import zoneinfo
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices import services as device_services
from devices.models import Device, Feeder, Room, Site, Transformer
from telemetry import queries, rollups
from telemetry.services import readings_insert

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
METER = [{"key": "energy_kwh", "kind": "energy", "unit": "kWh"}]


def _us(ts: datetime) -> int:
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def insert(rows: list[tuple[int, datetime, float]]) -> None:
    """Write readings the way the batch writer does."""
    with transaction.atomic():
        readings_insert(
            sensor_ids=[r[0] for r in rows],
            times_us=[_us(r[1]) for r in rows],
            values=[float(r[2]) for r in rows],
        )


def quarter_hours(first: date, days: int, tz=LISBON):
    t = queries.local_midnight(first, tz)
    end = queries.local_midnight(first + timedelta(days=days), tz)
    while t < end:
        yield t
        t += timedelta(minutes=15)


def meter_of(site: Site) -> int:
    meter, _ = device_services.device_create(
        uid=f"meter-{site.id}", site=site, kind="meter", sensors=METER
    )
    return meter.sensors.get().id


def energy_url(site_id: int, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"/api/v1/sites/{site_id}/energy/?{query}"


@pytest.fixture
def alice_api(alice, api_client_for):
    return api_client_for(alice)


@pytest.fixture
def operator_api(operator, api_client_for):
    return api_client_for(operator)


@pytest.fixture
def home(alice_home):
    """Alice's Lisbon home: a utility meter (kWh per quarter-hour), her Pi in the kitchen
    counting kWh, and a heater in the attic that only measures power (kW)."""
    site = alice_home["site"]
    pi = alice_home["device"]
    attic = Room.objects.create(site=site, name="Attic")
    heater, _ = device_services.device_create(
        uid="heater-1", name="Heater", site=site, room=attic, kind="hvac",
        sensors=[{"key": "power_kw", "kind": "power", "unit": "kW"}],
    )  # fmt: skip
    counter = device_services.sensor_create(device=pi, key="energy_kwh", kind="energy", unit="kWh")
    return {
        "site": site,
        "meter": meter_of(site),
        "counter": counter.id,
        "heater": heater.sensors.get().id,
        "pi": pi,
        "heater_device": heater,
        "kitchen": alice_home["room"],
        "attic": attic,
    }


# --- a day across the clock changes -------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("day", "hours"), [(date(2026, 10, 25), 25), (date(2026, 3, 29), 23), (date(2026, 6, 1), 24)]
)
def test_day_view_has_one_entry_per_local_hour_with_its_sum(home, alice_api, day, hours):
    # given a meter reading every quarter-hour from the day before to the day after
    rng = random.Random(day.toordinal())
    rows = [
        (home["meter"], t, rng.randint(1, 400) / 100)
        for t in quarter_hours(day - timedelta(days=1), 3)
    ]
    insert(rows)
    expected = defaultdict(float)
    for _, t, value in rows:
        local = t.astimezone(LISBON)
        if local.date() == day:
            expected[t - timedelta(minutes=t.minute)] += value
    assert len(expected) == hours

    for refreshed in (False, True):
        if refreshed:
            rollups.rollups_refresh()
        # when
        response = alice_api.get(energy_url(home["site"].id, period="day", date=day.isoformat()))

        # then one entry per local hour, in order, each the sum of its four quarter-hours
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["unit"] == "hour"
        results = body["results"]
        assert len(results) == hours
        starts = [datetime.fromisoformat(r["start"]) for r in results]
        assert starts == sorted(expected)
        for result, start in zip(results, starts, strict=True):
            assert result["energy_kwh"] == pytest.approx(expected[start], abs=1e-6)
            assert result["source"] == "meter"
            assert Decimal(result["cost"]) == queries.shown_cost(
                expected[start], tariff=Decimal("0.2"), currency="EUR"
            )
        total = sum(expected.values())
        assert body["energy_kwh"] == pytest.approx(total, abs=1e-6)
        assert Decimal(body["cost"]) == sum(Decimal(r["cost"]) for r in results)
        assert body["start"] == datetime.combine(day, datetime.min.time(), LISBON).isoformat()


@pytest.mark.django_db
def test_hours_are_labelled_in_local_time_and_the_repeated_hour_by_its_zone(home, alice_api):
    autumn = alice_api.get(energy_url(home["site"].id, period="day", date="2026-10-25")).json()
    spring = alice_api.get(energy_url(home["site"].id, period="day", date="2026-03-29")).json()

    assert [r["label"] for r in autumn["results"][:4]] == [
        "00:00", "01:00 WEST", "01:00 WET", "02:00",
    ]  # fmt: skip
    assert autumn["results"][-1]["label"] == "23:00"
    assert [r["label"] for r in spring["results"][:3]] == ["00:00", "02:00", "03:00"]
    assert spring["results"][0]["name"] == "00:00 WET\N{EN DASH}02:00 WEST"
    assert [r["name"] for r in autumn["results"][:4]] == [
        "00:00\N{EN DASH}01:00",
        "01:00 WEST\N{EN DASH}01:00 WET",
        "01:00\N{EN DASH}02:00 WET",
        "02:00\N{EN DASH}03:00",
    ]
    # slots without readings are there, empty
    assert {r["energy_kwh"] for r in autumn["results"]} == {None}
    assert autumn["energy_kwh"] == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("period", "day", "count", "first", "unit"),
    [
        ("week", "2026-10-28", 7, "2026-10-26", "day"),  # a Wednesday: its Monday
        ("month", "2026-10-25", 31, "2026-10-01", "day"),
        ("month", "2026-02-10", 28, "2026-02-01", "day"),
        ("year", "2026-10-25", 12, "2026-01-01", "month"),
    ],
)
def test_week_month_and_year_views_have_a_slot_per_local_day_or_month(
    home, alice_api, period, day, count, first, unit
):
    body = alice_api.get(energy_url(home["site"].id, period=period, date=day)).json()

    assert body["unit"] == unit
    assert body["date"] == first
    assert len(body["results"]) == count
    assert body["results"][0]["start"].startswith(first + "T00:00:00")


@pytest.mark.django_db
def test_month_view_sums_local_days_across_the_clock_change(home, alice_api):
    # given the meter reading 0.25 kWh every quarter-hour through October
    insert([(home["meter"], t, 0.25) for t in quarter_hours(date(2026, 9, 30), 33)])
    rollups.rollups_refresh()

    body = alice_api.get(energy_url(home["site"].id, period="month", date="2026-10-01")).json()

    by_day = {r["start"][:10]: r["energy_kwh"] for r in body["results"]}
    assert by_day["2026-10-24"] == pytest.approx(24.0)
    assert by_day["2026-10-25"] == pytest.approx(25.0)  # 25 hours of 1 kWh
    assert body["energy_kwh"] == pytest.approx(31 * 24 + 1)
    # the year view holds October as one month of the same total
    year = alice_api.get(energy_url(home["site"].id, period="year", date="2026-10-01")).json()
    assert year["results"][9]["label"] == "Oct"
    assert year["results"][9]["energy_kwh"] == pytest.approx(31 * 24 + 1)


# --- comparison and breakdown -----------------------------------------------------------------


@pytest.mark.django_db
def test_a_past_period_is_compared_with_the_whole_previous_one(home, alice_api):
    # given 1 kWh an hour on 1 June, 1.5 kWh an hour on 2 June
    insert([(home["meter"], t, 0.25) for t in quarter_hours(date(2026, 6, 1), 1)])
    insert([(home["meter"], t, 0.375) for t in quarter_hours(date(2026, 6, 2), 1)])

    body = alice_api.get(energy_url(home["site"].id, period="day", date="2026-06-02")).json()

    assert body["energy_kwh"] == pytest.approx(36.0)
    assert body["previous"]["date"] == "2026-06-01"
    assert body["previous"]["energy_kwh"] == pytest.approx(24.0)
    assert body["previous"]["cost"] == "4.80"
    assert len(body["previous"]["results"]) == 24
    assert body["comparison"] == {"basis": "whole", "previous_kwh": 24.0, "change_pct": 50.0}
    assert body["in_progress"] is False


@pytest.mark.django_db
def test_a_period_in_progress_is_compared_up_to_the_same_slot(home):
    # given the meter at 1 kWh an hour yesterday and until 06:00 today; now 05:30 local
    site = home["site"]
    insert([(home["meter"], t, 0.25) for t in quarter_hours(date(2026, 6, 1), 1)])
    today = [t for t in quarter_hours(date(2026, 6, 2), 1)][:24]
    insert([(home["meter"], t, 0.25) for t in today])
    now = datetime(2026, 6, 2, 5, 30, tzinfo=LISBON)
    period = queries.period_containing(kind="day", day=date(2026, 6, 2))

    history = queries.site_history(site=site, period=period, now=now)

    assert history["in_progress"] is True
    assert history["energy_kwh"] == pytest.approx(6.0)
    assert history["previous"]["energy_kwh"] == pytest.approx(24.0)
    # yesterday's 00:00 to 06:00: the same six hours
    assert history["comparison"]["basis"] == "to_date"
    assert history["comparison"]["previous_kwh"] == pytest.approx(6.0)
    assert history["comparison"]["change_pct"] == pytest.approx(0.0)


@pytest.mark.django_db
def test_breakdown_by_device_and_room_with_the_meters_rest(home, alice_api):
    # given on 10 May: the meter 10 kWh in all, the kitchen Pi counting 3 kWh, the attic heater
    # at 2 kW for one hour
    day = date(2026, 5, 10)
    lo = queries.local_midnight(day, LISBON)
    insert([(home["meter"], lo + timedelta(hours=h), 10 / 24) for h in range(24)])
    insert(
        [
            (home["counter"], lo - timedelta(minutes=5), 100.0),
            (home["counter"], lo + timedelta(hours=8), 101.0),
            (home["counter"], lo + timedelta(hours=20), 103.0),
            *[(home["heater"], lo + timedelta(hours=9, minutes=5 * i), 2.0) for i in range(12)],
        ]
    )

    body = alice_api.get(energy_url(home["site"].id, period="day", date="2026-05-10")).json()

    # 24 hours of 0.41666… kWh, each shown as 0.417: the total is the sum of what is shown
    assert body["energy_kwh"] == pytest.approx(10.008)
    devices = [(d["uid"], d["room"], d["energy_kwh"], d["cost"]) for d in body["devices"]]
    assert devices == [("pi-a1", "Kitchen", 3.0, "0.60"), ("heater-1", "Attic", 2.0, "0.40")]
    assert body["devices"][1]["kind"] == "HVAC"
    assert body["devices"][0]["share_pct"] == pytest.approx(100 * 3 / 10.008, abs=0.01)
    assert [(r["name"], r["energy_kwh"]) for r in body["rooms"]] == [
        ("Kitchen", 3.0),
        ("Attic", 2.0),
    ]
    assert body["unattributed_kwh"] == pytest.approx(5.008)
    assert body["unattributed_cost"] == "1.00"


# --- CSV ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_csv_holds_the_slots_shown(home, alice_api):
    day = date(2026, 10, 25)
    insert([(home["meter"], t, 0.5) for t in quarter_hours(day, 1)])

    response = alice_api.get(
        energy_url(home["site"].id, period="day", date="2026-10-25", format="csv")
    )

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert 'filename="energy-site' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == 25
    assert list(rows[0]) == ["start", "end", "energy_kwh", "cost", "currency", "source"]
    assert rows[0]["start"] == "2026-10-25T00:00:00+01:00"
    assert rows[2]["start"] == "2026-10-25T01:00:00+00:00"  # the second 01:00
    assert {(r["energy_kwh"], r["cost"], r["currency"]) for r in rows} == {("2.0", "0.40", "EUR")}


@pytest.mark.django_db
def test_csv_errors_are_json(home, alice_api):
    response = alice_api.get(energy_url(home["site"].id, period="fortnight", format="csv"))

    assert response.status_code == 400
    assert "fortnight" in response.json()["errors"]["period"][0]


# --- who sees what, and bad input -----------------------------------------------------------------


@pytest.mark.django_db
def test_a_resident_gets_404_for_a_site_not_theirs_and_an_operator_sees_any(
    alice_api, operator_api, alice_home, bob_home
):
    bob_site = bob_home["site"].id

    mine = alice_api.get(energy_url(alice_home["site"].id, period="day"))
    theirs = alice_api.get(energy_url(bob_site, period="day"))
    missing = alice_api.get(energy_url(999_999, period="day"))
    huge = alice_api.get(energy_url(10**30, period="day"))
    operator = operator_api.get(energy_url(bob_site, period="day"))

    assert mine.status_code == 200
    assert theirs.status_code == 404
    assert "not one of yours" in theirs.json()["detail"]
    assert missing.status_code == 404
    assert huge.status_code == 404
    assert operator.status_code == 200
    assert operator.json()["site"]["name"] == "Bob home"


@pytest.mark.django_db
def test_anonymous_callers_get_401(client, alice_home):
    assert client.get(energy_url(alice_home["site"].id)).status_code == 401
    assert client.get("/api/v1/analytics/energy/").status_code == 401
    assert client.get("/api/v1/analytics/not-reporting/").status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ("period=fortnight", "period", "use day, week, month or year"),
        ("period=day&date=2026-13-01", "date", "not a day of the calendar"),
        ("period=day&date=2026-02-30", "date", "not a day of the calendar"),
        ("period=day&date=yesterday", "date", "use YYYY-MM-DD"),
        ("period=day&date=20261025", "date", "use YYYY-MM-DD"),
        ("period=day&date=%00", "date", "use YYYY-MM-DD"),
        ("period=year&date=1999-12-31", "date", "between 2000-01-01 and 2099-12-31"),
        ("period=year&date=9999-12-31", "date", "between 2000-01-01 and 2099-12-31"),
    ],
)
def test_bad_period_or_date_is_a_400_that_says_what_to_send(
    alice_api, alice_home, query, field, says
):
    response = alice_api.get(f"/api/v1/sites/{alice_home['site'].id}/energy/?{query}")

    assert response.status_code == 400
    assert says in response.json()["errors"][field][0]


@pytest.mark.django_db
def test_without_a_date_it_is_todays_period_in_the_sites_time(home, alice_api):
    today = timezone.now().astimezone(LISBON).date()

    body = alice_api.get(energy_url(home["site"].id)).json()

    assert (body["period"], body["date"], body["in_progress"]) == ("day", today.isoformat(), True)
    assert body["comparison"]["basis"] == "to_date"


@pytest.mark.django_db
@pytest.mark.parametrize("devices", [1, 12])
def test_site_energy_query_count_does_not_grow_with_devices(
    home, alice_api, django_assert_max_num_queries, devices
):
    room = Room.objects.create(site=home["site"], name="Garage")
    for n in range(devices):
        device, _ = device_services.device_create(
            uid=f"plug-{n}", site=home["site"], room=room, kind="plug",
            sensors=[{"key": "energy_kwh", "kind": "energy", "unit": "kWh"}],
        )  # fmt: skip
        lo = queries.local_midnight(date(2026, 5, 10), LISBON)
        insert([(device.sensors.get().id, lo + timedelta(hours=h), float(h)) for h in range(5)])

    with django_assert_max_num_queries(8):
        response = alice_api.get(energy_url(home["site"].id, period="week", date="2026-05-10"))
    assert response.status_code == 200
    assert len(response.json()["devices"]) == devices


# --- analytics: energy by feeder and transformer, top sites ---------------------------------------


@pytest.fixture
def grid(feeder, make_user):
    """Two transformers; TR-1 feeds FD-1 and FD-2, TR-2 feeds FD-3. Sites with meters:
    three on FD-1, one on FD-2, one on FD-3, one without a feeder, and one in New York."""
    tr1 = Transformer.objects.get(pk=feeder.transformer_id)
    tr2 = Transformer.objects.create(
        code="TR-2", name="T2", substation=tr1.substation, capacity_kva=Decimal("630")
    )
    fd2 = Feeder.objects.create(code="FD-2", name="F2", transformer=tr1)
    fd3 = Feeder.objects.create(code="FD-3", name="F3", transformer=tr2)
    layout = [
        ("S1", feeder, "Europe/Lisbon", 1.0),
        ("S2", feeder, "Europe/Lisbon", 2.0),
        ("S3", feeder, "Europe/Lisbon", 0.5),
        ("S4", fd2, "Europe/Lisbon", 4.0),
        ("S5", fd3, "Europe/Lisbon", 3.0),
        ("S6", None, "Europe/Lisbon", 0.25),
        ("NY", fd3, "America/New_York", 1.5),
    ]
    sites = {}
    for name, site_feeder, zone, kwh_per_hour in layout:
        site = Site.objects.create(name=name, feeder=site_feeder, timezone=zone)
        sites[name] = {"site": site, "meter": meter_of(site), "per_hour": kwh_per_hour}
    return {"sites": sites, "feeders": (feeder, fd2, fd3), "transformers": (tr1, tr2)}


def fill_meters(grid, first: date, days: int) -> None:
    rows = []
    for entry in grid["sites"].values():
        tz = zoneinfo.ZoneInfo(entry["site"].timezone)
        rows += [
            (entry["meter"], t, entry["per_hour"] / 4)
            for t in quarter_hours(first - timedelta(days=1), days + 2, tz)
        ]
    insert(rows)


@pytest.mark.django_db
def test_grid_energy_by_feeder_and_transformer_in_each_sites_local_day(grid, operator_api):
    # given every meter reading all through the days around the autumn clock change
    fill_meters(grid, date(2026, 10, 24), 3)
    rollups.rollups_refresh()

    # when
    response = operator_api.get("/api/v1/analytics/energy/?period=day&date=2026-10-25")

    # then Lisbon's day has 25 hours; New York's 25 October has 24
    assert response.status_code == 200, response.content
    body = response.json()
    feeders = {
        f["code"]: (f["sites"], f["energy_kwh"], f["transformer_code"]) for f in body["feeders"]
    }
    assert feeders == {
        "FD-1": (3, pytest.approx(3.5 * 25), "TR-1"),
        "FD-2": (1, pytest.approx(4.0 * 25), "TR-1"),
        "FD-3": (2, pytest.approx(3.0 * 25 + 1.5 * 24), "TR-2"),
        None: (1, pytest.approx(0.25 * 25), None),
    }
    assert [f["code"] for f in body["feeders"]] == ["FD-3", "FD-2", "FD-1", None]
    transformers = {
        t["code"]: (t["feeders"], t["sites"], t["energy_kwh"]) for t in body["transformers"]
    }
    assert transformers == {
        "TR-1": (2, 4, pytest.approx(7.5 * 25)),
        "TR-2": (1, 2, pytest.approx(3.0 * 25 + 1.5 * 24)),
    }
    assert body["transformers"][1]["capacity_kva"] == "630.0"
    assert body["energy_kwh"] == pytest.approx(10.75 * 25 + 1.5 * 24)
    assert (body["sites"], body["sites_with_data"]) == (7, 7)


@pytest.mark.django_db
def test_top_sites_are_the_largest_users_with_their_cost(grid, operator_api):
    fill_meters(grid, date(2026, 6, 1), 7)

    body = operator_api.get("/api/v1/analytics/energy/?period=week&date=2026-06-03&top=3").json()

    assert (body["date"], body["end_date"]) == ("2026-06-01", "2026-06-07")
    top = [(s["name"], s["energy_kwh"], s["cost"], s["feeder_code"]) for s in body["top_sites"]]
    assert top == [
        ("S4", pytest.approx(4.0 * 168), "134.40", "FD-2"),
        ("S5", pytest.approx(3.0 * 168), "100.80", "FD-3"),
        ("S2", pytest.approx(2.0 * 168), "67.20", "FD-1"),
    ]
    site_id = grid["sites"]["S4"]["site"].id
    assert (
        body["top_sites"][0]["history_url"]
        == f"/sites/{site_id}/history/?period=week&date=2026-06-01"
    )
    assert body["top_sites"][0]["source"] == "meter"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("metered_days", "sources"),
    [
        (range(7), {"meter"}),
        ([0, 1, 3, 4, 5, 6], {"meter", "devices"}),  # on Wednesday the devices count
        ([], {"devices"}),
    ],
)
def test_a_sites_grid_energy_equals_its_own_history(
    home, alice_api, operator_api, metered_days, sources
):
    # given a week (of the spring clock change) of readings from the Pi's counter (with
    # resets), the heater's power and, on some days, the meter
    first = date(2026, 3, 23)
    rng = random.Random(7)
    metered = {first + timedelta(days=n) for n in metered_days}
    meter = [
        (home["meter"], t, rng.randint(0, 100) / 100)
        for t in quarter_hours(first, 7)
        if t.astimezone(LISBON).date() in metered
    ]
    counter, value = [], 50.0
    for t in quarter_hours(first - timedelta(days=1), 9):
        value = 1.0 if rng.random() < 0.01 else value + rng.random()
        counter.append((home["counter"], t + timedelta(minutes=rng.randint(0, 14)), value))
    heater = [(home["heater"], t, rng.random() * 3) for t in quarter_hours(first, 7)]
    insert(meter + counter + heater)
    site = home["site"].id

    for refreshed in (False, True):
        if refreshed:
            rollups.rollups_refresh()
        # when
        history = alice_api.get(energy_url(site, period="week", date=first.isoformat())).json()
        grid = operator_api.get(f"/api/v1/analytics/energy/?period=week&date={first}").json()

        # then the site counts the same in both, day by day from the meter or the devices
        [mine] = [s for s in grid["top_sites"] if s["id"] == site]
        assert mine["energy_kwh"] == pytest.approx(history["energy_kwh"], abs=1e-5)
        assert set(mine["source"].split("+")) == sources
        assert {r["source"] for r in history["results"]} == sources


@pytest.mark.django_db
def test_energy_from_rollups_equals_the_quarter_hour_computation(home):
    # given meter, counter and power readings over two days across the autumn clock change
    rng = random.Random(11)
    rows = []
    for t in quarter_hours(date(2026, 10, 24), 3):
        rows.append((home["meter"], t + timedelta(minutes=rng.randint(0, 14)), rng.random()))
        rows.append((home["counter"], t + timedelta(minutes=rng.randint(0, 14)), 100 + len(rows)))
        rows.append((home["heater"], t + timedelta(minutes=rng.randint(0, 14)), rng.random() * 4))
    insert(rows)
    plan = queries.energy_plan(site_ids=[home["site"].id])
    lo = queries.local_midnight(date(2026, 10, 24), LISBON)
    hi = queries.local_midnight(date(2026, 10, 27), LISBON)

    for refreshed in (False, True):
        if refreshed:
            rollups.rollups_refresh()
        for unit in ("hour", "day"):
            # when
            fast = queries.energy_by_device_from_rollups(
                plan=plan, lo=lo, hi=hi, tz=LISBON.key, unit=unit
            )
            slow = queries.energy_by_device(plan=plan, lo=lo, hi=hi, tz=LISBON.key, unit=unit)
            # then
            assert [row[:3] for row in fast] == [row[:3] for row in slow]
            for a, b in zip(fast, slow, strict=True):
                assert math.isclose(a[3], b[3], rel_tol=1e-9, abs_tol=1e-9), (a, b)


@pytest.mark.django_db
def test_analytics_are_for_operators_only(alice_api, alice_home, admin_user, api_client_for):
    assert alice_api.get("/api/v1/analytics/energy/").status_code == 403
    assert alice_api.get("/api/v1/analytics/not-reporting/").status_code == 403
    assert api_client_for(admin_user).get("/api/v1/analytics/energy/").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("period=fortnight", "period"),
        ("date=2026-02-31", "date"),
        ("top=0", "top"),
        ("top=x", "top"),
    ],
)
def test_grid_energy_refuses_bad_input_with_400(operator_api, query, field):
    response = operator_api.get(f"/api/v1/analytics/energy/?{query}")

    assert response.status_code == 400
    assert field in response.json()["errors"]


@pytest.mark.django_db
@pytest.mark.parametrize("sites_per_feeder", [1, 8])
def test_grid_energy_query_count_does_not_grow_with_sites(
    grid, operator_api, django_assert_max_num_queries, sites_per_feeder
):
    for feeder in grid["feeders"]:
        for n in range(sites_per_feeder):
            site = Site.objects.create(name=f"{feeder.code}-{n}", feeder=feeder)
            insert([(meter_of(site), datetime(2026, 6, 2, 10, tzinfo=UTC), 1.0)])

    # 3 + 2 per time zone (Lisbon, New York) + 2 for the request's user
    with django_assert_max_num_queries(9):
        response = operator_api.get("/api/v1/analytics/energy/?period=month&date=2026-06-01")
    assert response.status_code == 200
    assert response.json()["sites"] == 7 + 3 * sites_per_feeder


# --- analytics: devices not reporting -------------------------------------------------------------


@pytest.fixture
def fleet(alice_home, bob_home):
    """Devices in every state: reporting, online but silent, offline, never heard of."""
    now = timezone.now()
    site = alice_home["site"]
    made = {}
    for uid in ("live", "silent", "gone", "never", "batch"):
        device, _ = device_services.device_create(
            uid=uid, site=site, sensors=[{"key": "power_w", "kind": "power", "unit": "W"}]
        )
        made[uid] = device.sensors.get().id
    device_services.device_create(uid="bare", site=site)  # no sensors: nothing to report
    Device.objects.filter(uid__in=["live", "silent"]).update(online=True, last_seen=now)
    Device.objects.filter(uid="gone").update(last_seen=now - timedelta(hours=3))
    insert(
        [
            (made["live"], now - timedelta(minutes=2), 1.0),
            (made["silent"], now - timedelta(hours=2), 1.0),
            (made["gone"], now - timedelta(hours=3), 1.0),
            (made["gone"], now - timedelta(hours=5), 1.0),
            (made["batch"], now - timedelta(minutes=5), 1.0),  # offline, but sends by HTTP
        ]
    )
    return now


@pytest.mark.django_db
def test_not_reporting_lists_silent_online_devices_then_offline_ones(fleet, operator_api):
    # when
    response = operator_api.get("/api/v1/analytics/not-reporting/")

    # then: the Pis of the fixtures never sent anything; "silent" is online with no reading
    assert response.status_code == 200
    body = response.json()
    listed = [(d["uid"], d["state"]) for d in body["results"]]
    assert listed == [
        ("silent", "silent"),
        ("never", "offline"),
        ("pi-a1", "offline"),
        ("pi-b1", "offline"),
        ("gone", "offline"),
    ]
    assert (body["count"], body["online_silent"], body["offline"]) == (5, 1, 4)
    gone = body["results"][-1]
    last_reading = datetime.fromisoformat(gone["last_reading"])
    assert abs(last_reading - (fleet - timedelta(hours=3))) < timedelta(milliseconds=1)
    assert gone["last_seen"] is not None
    assert body["results"][1]["last_reading"] is None
    assert gone["site"]["name"] == "Alice home"
    assert gone["feeder_code"] == "FD-1"


@pytest.mark.django_db
def test_not_reporting_window_and_limit(fleet, operator_api):
    wide = operator_api.get("/api/v1/analytics/not-reporting/?minutes=240&limit=2").json()

    assert [d["uid"] for d in wide["results"]] == ["never", "pi-a1"]
    assert wide["count"] == 3  # "silent" (2 h) and "gone" (3 h) are recent enough now


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["minutes=0", "minutes=abc", "limit=100000", "minutes=99999999"])
def test_not_reporting_refuses_bad_input_with_400(operator_api, query):
    response = operator_api.get(f"/api/v1/analytics/not-reporting/?{query}")

    assert response.status_code == 400
    assert response.json()["errors"]


@pytest.mark.django_db
@pytest.mark.parametrize("devices", [2, 30])
def test_not_reporting_is_one_query_whatever_the_fleet(
    alice_home, operator_api, django_assert_max_num_queries, devices
):
    for n in range(devices):
        device_services.device_create(
            uid=f"quiet-{n}", site=alice_home["site"],
            sensors=[{"key": "power_w", "kind": "power", "unit": "W"}],
        )  # fmt: skip

    with CaptureQueriesContext(connection) as queries_run:
        response = operator_api.get("/api/v1/analytics/not-reporting/")
    assert response.status_code == 200
    assert response.json()["count"] == devices + 1
    reading_queries = [q for q in queries_run.captured_queries if "energy_readings" in q["sql"]]
    assert len(reading_queries) == 1
    assert len(queries_run.captured_queries) <= 3


# --- figures that add up, future periods, the grid's year -----------------------------------------


@pytest.mark.django_db
def test_totals_are_the_sums_of_the_rows_as_given(home, alice_api):
    # given three hours of 1/3 kWh (each 0.333 kWh and 0.07 € as shown; exactly 1 kWh, 0.20 €)
    day = date(2026, 5, 10)
    lo = queries.local_midnight(day, LISBON)
    insert([(home["meter"], lo + timedelta(hours=h), 1 / 3) for h in range(3)])
    insert([(home["meter"], lo - timedelta(days=1) + timedelta(hours=h), 1 / 3) for h in range(3)])

    body = alice_api.get(energy_url(home["site"].id, period="day", date=day.isoformat())).json()

    rows = [r for r in body["results"] if r["energy_kwh"] is not None]
    assert [(r["energy_kwh"], r["cost"]) for r in rows] == [(0.333, "0.07")] * 3
    assert body["energy_kwh"] == 0.999  # not 1.0: the sum of the rows as given
    assert body["cost"] == "0.21"  # not 0.20
    assert body["previous"]["energy_kwh"] == 0.999
    assert body["previous"]["cost"] == "0.21"
    assert body["comparison"]["previous_kwh"] == 0.999
    assert body["comparison"]["change_pct"] == 0.0
    # the week's rows are days, each rounded once from its exact 1 kWh; the week adds them up
    week = alice_api.get(energy_url(home["site"].id, period="week", date=day.isoformat())).json()
    days = [(r["energy_kwh"], r["cost"]) for r in week["results"] if r["energy_kwh"] is not None]
    assert days == [(1.0, "0.20"), (1.0, "0.20")]
    assert (week["energy_kwh"], week["cost"]) == (2.0, "0.40")


@pytest.mark.django_db
def test_device_and_room_rows_add_up_with_the_rest_of_the_home(home, alice_api):
    # given the meter 1/3 kWh in each of three hours, the heater 1/3 kW for an hour
    day = date(2026, 5, 10)
    lo = queries.local_midnight(day, LISBON)
    insert([(home["meter"], lo + timedelta(hours=h), 1 / 3) for h in range(3)])
    insert([(home["heater"], lo + timedelta(minutes=5 * i), 1 / 3) for i in range(12)])

    body = alice_api.get(energy_url(home["site"].id, period="day", date=day.isoformat())).json()

    [heater] = body["devices"]
    shown = Decimal(str(heater["energy_kwh"])) + Decimal(str(body["unattributed_kwh"]))
    assert shown == Decimal(str(body["energy_kwh"]))
    assert [r["energy_kwh"] for r in body["rooms"]] == [heater["energy_kwh"]]


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["day", "week", "month", "year"])
def test_a_period_wholly_in_the_future_is_flagged(home, alice_api, operator_api, kind):
    today = timezone.now().astimezone(LISBON).date()
    later = today.replace(year=today.year + 1).isoformat()

    mine = alice_api.get(energy_url(home["site"].id, period=kind, date=later))
    grid = operator_api.get(f"/api/v1/analytics/energy/?period={kind}&date={later}")
    now = alice_api.get(energy_url(home["site"].id, period=kind, date=today.isoformat()))
    grid_now = operator_api.get(f"/api/v1/analytics/energy/?period={kind}")

    assert mine.status_code == grid.status_code == 200
    assert mine.json()["future"] is True
    assert {r["energy_kwh"] for r in mine.json()["results"]} == {None}
    assert grid.json()["future"] is True
    assert now.json()["future"] is False
    assert grid_now.json()["future"] is False


def test_a_period_has_begun_once_its_first_day_has_begun_somewhere():
    period = queries.period_containing(kind="day", day=date(2026, 6, 2))
    # 2 June begins at 10:00 UTC on 1 June at UTC+14, at 23:00 UTC in Lisbon (summer)
    assert period.is_future(datetime(2026, 6, 1, 9, 59, tzinfo=UTC))
    assert not period.is_future(datetime(2026, 6, 1, 10, 0, tzinfo=UTC))
    assert period.is_future(datetime(2026, 6, 1, 22, 59, tzinfo=UTC), LISBON)
    assert not period.is_future(datetime(2026, 6, 1, 23, 0, tzinfo=UTC), LISBON)


@pytest.mark.django_db
def test_grid_year_is_by_month_each_site_in_its_local_time(grid, operator_api):
    # given New York's 31 January evening (1 February in UTC) and Lisbon's 1 February night
    ny = grid["sites"]["NY"]
    s1 = grid["sites"]["S1"]
    new_york = zoneinfo.ZoneInfo("America/New_York")
    insert(
        [
            (ny["meter"], datetime(2026, 1, 31, 22, 0, tzinfo=new_york), 2.5),
            (s1["meter"], datetime(2026, 2, 1, 0, 30, tzinfo=LISBON), 1 / 3),
            (s1["meter"], datetime(2026, 2, 1, 1, 30, tzinfo=LISBON), 1 / 3),
            (s1["meter"], datetime(2026, 10, 25, 1, 30, tzinfo=LISBON), 1 / 3),
        ]
    )
    rollups.rollups_refresh()

    response = operator_api.get("/api/v1/analytics/energy/?period=year&date=2026-06-15")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["period"], body["unit"], body["date"], body["end_date"]) == (
        "year", "month", "2026-01-01", "2026-12-31",
    )  # fmt: skip
    assert [r["label"] for r in body["results"]] == [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]  # fmt: skip
    by_month = {r["date"]: r["energy_kwh"] for r in body["results"]}
    assert by_month["2026-01-01"] == 2.5  # New York's January
    assert by_month["2026-02-01"] == 0.667  # one Lisbon day of 2 x 1/3, rounded once
    assert by_month["2026-10-01"] == 0.333
    assert by_month["2026-03-01"] is None
    assert body["results"][1]["end_date"] == "2026-02-28"
    total = Decimal("3.5")
    assert Decimal(str(body["energy_kwh"])) == total
    for rows in (body["results"], body["feeders"], body["transformers"], body["top_sites"]):
        assert sum(Decimal(str(r["energy_kwh"] or 0)) for r in rows) == total
    [s1_row] = [s for s in body["top_sites"] if s["name"] == "S1"]
    assert s1_row["energy_kwh"] == 1.0  # 0.667 + 0.333: its days as given


@pytest.mark.django_db
def test_grid_week_is_by_day(grid, operator_api):
    fill_meters(grid, date(2026, 6, 1), 7)

    body = operator_api.get("/api/v1/analytics/energy/?period=week&date=2026-06-03").json()

    assert body["unit"] == "day"
    assert [r["date"] for r in body["results"]][:2] == ["2026-06-01", "2026-06-02"]
    assert len(body["results"]) == 7
    assert body["results"][0]["name"] == "Mon 1 Jun 2026"
    assert sum(Decimal(str(r["energy_kwh"])) for r in body["results"]) == Decimal(
        str(body["energy_kwh"])
    )
