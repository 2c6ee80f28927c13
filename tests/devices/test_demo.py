"""The demo's devices (devices/demo.py) as the simulated fleet gets them: every one, with a token
that opens its socket and the sensors and profile its live readings follow."""

import pytest

from devices.demo import DEMO_SITES, demo_seed
from devices.models import Device
from devices.selectors import device_by_token
from pi_agent.demo_profiles import PROFILES
from pi_agent.simulate import FLEXIBLE_SHARE, ProfileSource

pytestmark = pytest.mark.django_db


def test_every_demo_device_is_handed_to_the_simulated_fleet_with_a_working_token():
    # when the demo is seeded for `make run`
    simulated = demo_seed(rotate_tokens=True).simulated
    # then every device, appliances included, is simulated live
    uids = {spec[0] for site in DEMO_SITES for spec in site["devices"]}
    assert set(simulated) == uids
    assert {"hp-0005", "pv-0008", "ev-0009", "hp-0011"} <= set(simulated)
    for device in Device.objects.prefetch_related("sensors").select_related("site"):
        entry = simulated[device.uid]
        # with a token that authenticates it, its own sensors and its history's profile
        assert device_by_token(token=entry["token"]) == device
        assert sorted(entry["sensors"]) == sorted(s.key for s in device.sensors.all())
        assert entry["profile"] in PROFILES
        assert entry["timezone"] == device.site.timezone
        expected = float(device.flexible_kw) * 1000 if device.controllable else 0.0
        assert entry["flexible_w"] == expected


def test_a_second_seed_rotates_every_token():
    first = demo_seed(rotate_tokens=True).simulated
    second = demo_seed(rotate_tokens=True).simulated
    assert set(first) == set(second)
    for uid in first:
        assert first[uid]["token"] != second[uid]["token"]
        assert device_by_token(token=first[uid]["token"]) is None
        assert device_by_token(token=second[uid]["token"]).uid == uid


def test_every_controllable_demo_device_has_something_to_shed():
    simulated = demo_seed(rotate_tokens=True).simulated
    for uid, entry in simulated.items():
        source = ProfileSource(uid, **{k: v for k, v in entry.items() if k != "token"})
        if entry["flexible_w"]:
            assert FLEXIBLE_SHARE.get(source.profile, 0) > 0, uid
