"""The demo fleet's simulator (pi_agent/simulate.py): devices that follow their demo profile live,
so their readings continue the history the portal seeded, and obey mains, relay and curtail."""

import random
import zlib
import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest

from pi_agent import demo_profiles
from pi_agent.energy_pi_agent import Curtailment, OutageSimulator, SimulatorSource
from pi_agent.simulate import ProfileSource, device_source

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
WINTER_EVENING = datetime(2026, 12, 2, 19, 30, 5, tzinfo=UTC)  # cold: the heat pump runs
SUMMER_NOON = datetime(2026, 6, 17, 12, 40, tzinfo=UTC)


def profile_w(uid: str, profile: str, at: datetime) -> float:
    """What the seeded history holds for this device at this instant."""
    instant = demo_profiles.instants([at], LISBON)[0]
    return demo_profiles.PROFILES[profile](zlib.crc32(uid.encode()), instant)


def heat_pump(**kwargs) -> ProfileSource:
    return ProfileSource(
        "hp-0005",
        profile="heat_pump",
        sensors=["power_w", "energy_kwh", "outdoor_temp_c"],
        flexible_w=3000.0,
        timezone="Europe/Lisbon",
        **kwargs,
    )


def test_live_readings_continue_the_seeded_history():
    # given the heat pump the demo seeded 90 days of history for
    source = heat_pump()
    # when it reads live at several instants
    for minutes in range(0, 120, 7):
        at = WINTER_EVENING + timedelta(minutes=minutes)
        values = source.read(at)
        # then each power value is the history's value at that instant, and it reports the same
        # synthetic weather the history holds
        assert values["power_w"] == pytest.approx(profile_w("hp-0005", "heat_pump", at), abs=0.05)
        temp = demo_profiles.instants([at], LISBON)[0].temp_c
        assert values["outdoor_temp_c"] == pytest.approx(temp, abs=0.05)
    assert set(values) == {"power_w", "energy_kwh", "outdoor_temp_c"}


def test_the_energy_counter_adds_up_what_was_drawn():
    source = heat_pump()
    first = source.read(WINTER_EVENING)
    watts = first["power_w"]
    second = source.read(WINTER_EVENING + timedelta(seconds=60))
    assert second["energy_kwh"] - first["energy_kwh"] == pytest.approx(watts * 60 / 3.6e6, abs=1e-5)
    assert first["energy_kwh"] < 20_000  # below the seeded history's counters: read as a reset


@pytest.mark.parametrize(("level", "left"), [(1, 2 / 3), (2, 1 / 3), (3, 0.0)])
def test_a_curtailment_sheds_a_dedicated_appliance_by_level(level, left):
    source = heat_pump()
    full = profile_w("hp-0005", "heat_pump", WINTER_EVENING)
    assert 300 < full < 3000  # a cold evening: running, and all of it flexible
    source.load.curtailment = Curtailment(1, level, WINTER_EVENING + timedelta(hours=1))
    assert source.read(WINTER_EVENING)["power_w"] == pytest.approx(full * left, abs=0.1)
    # and it ends by itself at its `until`
    later = WINTER_EVENING + timedelta(hours=1, seconds=1)
    expected = profile_w("hp-0005", "heat_pump", later)
    assert source.read(later)["power_w"] == pytest.approx(expected, abs=0.1)


def test_a_home_sheds_only_its_flexible_share_up_to_its_flexible_watts():
    source = ProfileSource(
        "pi-0001", profile="household", sensors=["power_w"], flexible_w=2000.0,
        timezone="Europe/Lisbon",
    )  # fmt: skip
    full = profile_w("pi-0001", "household", WINTER_EVENING)
    source.load.curtailment = Curtailment(1, 3, WINTER_EVENING + timedelta(hours=1))
    shed = full - source.read(WINTER_EVENING)["power_w"]
    assert shed == pytest.approx(min(2000.0, 0.4 * full), abs=0.1)


def test_an_open_relay_leaves_only_standby():
    source = heat_pump()
    source.load.relay_on = False
    assert 0 <= source.read(WINTER_EVENING)["power_w"] <= 3.0


def test_a_mains_cut_zeroes_power_and_voltage_and_stops_the_counter():
    mains = OutageSimulator(random.Random(1), rate_per_hour=0)
    source = ProfileSource(
        "pi-0005", profile="household", sensors=["power_w", "voltage_v", "energy_kwh"],
        timezone="Europe/Lisbon", outages=mains,
    )  # fmt: skip
    before = source.read(WINTER_EVENING)
    assert before["power_w"] > 0 and 225 <= before["voltage_v"] <= 235
    mains.cut(WINTER_EVENING + timedelta(seconds=1), 600)
    cut = source.read(WINTER_EVENING + timedelta(seconds=1))
    later = source.read(WINTER_EVENING + timedelta(seconds=301))
    assert cut["power_w"] == later["power_w"] == 0.0
    assert cut["voltage_v"] == later["voltage_v"] == 0.0
    assert later["energy_kwh"] == cut["energy_kwh"]


def test_the_pv_inverter_generates_by_day_and_not_at_night():
    source = ProfileSource(
        "pv-0008", profile="pv", sensors=["pv_w", "pv_energy_kwh"], timezone="Europe/Lisbon"
    )
    noon = source.read(SUMMER_NOON)
    assert noon["pv_w"] > 1000
    assert noon["pv_w"] == pytest.approx(profile_w("pv-0008", "pv", SUMMER_NOON), abs=0.05)
    after = source.read(SUMMER_NOON + timedelta(minutes=1))
    assert after["pv_energy_kwh"] > noon["pv_energy_kwh"]
    assert source.read(datetime(2026, 6, 17, 23, 0, tzinfo=UTC))["pv_w"] == 0.0


def test_a_tokens_file_entry_chooses_the_source():
    mains = OutageSimulator(random.Random(1), rate_per_hour=0)
    token, source = device_source("pi-9", "secret", mains)
    assert token == "secret" and isinstance(source, SimulatorSource)
    entry = {"token": "t2", "profile": "ev", "sensors": ["power_w", "energy_kwh"]}
    token, source = device_source("ev-9", entry, mains)
    assert token == "t2" and isinstance(source, ProfileSource) and source.profile == "ev"
    with pytest.raises(ValueError, match="unknown profile 'boiler'"):
        device_source("x", {"token": "t", "profile": "boiler"}, mains)
    with pytest.raises(ValueError, match="expected a token"):
        device_source("x", {"profile": "ev"}, mains)


def test_energy_counters_go_on_from_the_values_given():
    source = heat_pump(counters={"energy_kwh": 31234.5})
    assert source.read(WINTER_EVENING)["energy_kwh"] == 31234.5
