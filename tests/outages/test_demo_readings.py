"""The demo's readings and its outages tell one story (outages/demo.py `demo_readings_seed`):
no power while a recorded outage lasts, enough clean weekdays for every demo home's
demand-response baseline, and `seed_demo_readings` reports its progress."""

import json
import zoneinfo
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest

from django.core.management import call_command

from demand_response import baseline
from demand_response.selectors import baseline_excluded_dates, site_quarter_energy
from devices.demo import demo_seed
from devices.models import Site
from outages.demo import demo_history_seed, demo_readings_seed
from outages.models import Outage
from pi_agent.simulate import ProfileSource
from telemetry import demo_history
from telemetry.models import Reading

NOW = datetime(2026, 11, 18, 10, 7, 30, tzinfo=UTC)  # a Wednesday
LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")


@pytest.fixture(autouse=True)
def few_minutes(monkeypatch):
    """Minutes for the last 6 hours instead of 2 days: a fifth of the rows to write."""
    monkeypatch.setattr(demo_history, "FINE_DAYS", 0.25)


@pytest.mark.django_db
def test_readings_are_dark_while_each_recorded_outage_lasts_and_only_then():
    demo_seed(rotate_tokens=False)
    demo_history_seed(now=NOW)

    demo_readings_seed(now=NOW, days=4)

    # the 47-minute cut two days ago at every FD-101 home (and Bob's)
    cut = Outage.objects.get(
        kind="site", site__name="Carol's house", started_at__gt=NOW - timedelta(days=3)
    )
    power = Reading.objects.filter(sensor__key="power_w", sensor__device__uid="pi-0005")
    inside = power.filter(time__gte=cut.started_at, time__lt=cut.ended_at)
    assert inside.count() == 3  # its quarter-hours
    assert set(inside.values_list("value", flat=True)) == {0.0}
    before = power.filter(time__lt=cut.started_at).latest("time")
    after = power.filter(time__gte=cut.ended_at).earliest("time")
    assert before.value > 0 and after.value > 0
    assert after.time - before.time == timedelta(minutes=60)


@pytest.mark.django_db
def test_every_demo_home_has_a_ten_in_ten_baseline_despite_its_outages():
    # given the demo's outages and 21 days of readings: 16 weekdays, Alice's flat had 3 cuts
    demo_seed(rotate_tokens=False)
    demo_history_seed(now=NOW)
    demo_readings_seed(now=NOW, days=21)
    sites = list(Site.objects.all())
    assert len(sites) == 12
    # when an event tomorrow from 18:00 to 20:00 is baselined
    start = datetime(2026, 11, 19, 18, tzinfo=LISBON)
    end = start + timedelta(hours=2)
    lo = datetime(2026, 10, 1, tzinfo=UTC)
    energy = site_quarter_energy(site_ids=[site.pk for site in sites], lo=lo, hi=end)
    excluded = baseline_excluded_dates(sites=sites, start=lo, end=end, event_id=0)

    for site in sites:
        result = baseline.ten_in_ten(
            energy=energy[site.pk], start=start, end=end, tz=LISBON, excluded=excluded[site.pk]
        )
        # then ten clean weekdays are found and none of them had an outage
        assert result.sufficient, site.name
        assert not set(result.days_used) & excluded[site.pk]
        assert all(day.weekday() < 5 for day in result.days_used)
        assert result.kwh > 0
    assert excluded[Site.objects.get(name="Alice's flat").pk]  # its outages were left out


@pytest.mark.django_db
def test_the_command_shows_its_progress_and_what_it_stored():
    demo_seed(rotate_tokens=False)
    out = StringIO()

    call_command("seed_demo_readings", "--days", "2", stdout=out)

    text = out.getvalue()
    assert "\r  demo history: " in text and "readings (100%)" in text
    assert "rolling up" in text
    final = text.rsplit("\r", 1)[-1]
    stored = Reading.objects.count()
    assert final.startswith(f"  demo history: {stored:,} new readings for 52 sensors")


@pytest.mark.django_db
def test_the_simulated_fleet_is_told_where_each_energy_counter_stopped(tmp_path):
    # given the simulated fleet's file as `make run` writes it before the history
    fleet = tmp_path / "fleet.json"
    call_command("seed_demo", "--tokens-file", str(fleet), stdout=StringIO())
    tokens = {uid: entry["token"] for uid, entry in json.loads(fleet.read_text()).items()}

    # when the history is filled with that file
    call_command(
        "seed_demo_readings", "--days", "1", "--tokens-file", str(fleet), stdout=StringIO()
    )

    # then every device's counters are the last stored values, its token untouched
    entries = json.loads(fleet.read_text())
    assert {uid: entry["token"] for uid, entry in entries.items()} == tokens
    counters = Reading.objects.filter(sensor__key__in=["energy_kwh", "pv_energy_kwh"])
    for uid, entry in entries.items():
        for key, value in entry["counters"].items():
            last = counters.filter(sensor__device__uid=uid, sensor__key=key).latest("time")
            assert value == pytest.approx(last.value, abs=1e-9)
    assert set(entries["pv-0008"]["counters"]) == {"pv_energy_kwh"}
    assert set(entries["hp-0005"]["counters"]) == {"energy_kwh"}
    # and a live device goes on from there
    source = ProfileSource(
        "hp-0005", **{k: v for k, v in entries["hp-0005"].items() if k != "token"}
    )
    assert source.read(NOW)["energy_kwh"] == pytest.approx(
        entries["hp-0005"]["counters"]["energy_kwh"], abs=1e-5
    )
