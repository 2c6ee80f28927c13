"""`manage.py demo_outage`: a demo cut on a feeder, issued as simulate_mains commands."""

from datetime import timedelta
from io import StringIO

import pytest

from django.core.management import CommandError, call_command
from django.utils import timezone

from devices.demo import demo_seed
from devices.models import Command, Feeder, Site


def demo_outage(*args: str) -> str:
    out = StringIO()
    call_command("demo_outage", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_demo_outage_cuts_every_device_of_every_site_on_the_feeder_until_the_cut_ends():
    # given the demo: on FD-101 Alice's two Pis, Carol's Pi (and heat pump, an appliance that
    # runs no simulator) and one Pi in each flat of Rua de Ramalde 90; Bob's on FD-102
    demo_seed(rotate_tokens=False)
    before = timezone.now()

    # when
    output = demo_outage("--feeder", "FD-101", "--minutes", "5")

    # then
    commands = Command.objects.order_by("device__uid")
    assert [c.device.uid for c in commands] == [
        "pi-0001",
        "pi-0002",
        "pi-0005",
        "pi-0006",
        "pi-0007",
    ]
    for command in commands:
        assert (command.name, command.args) == ("simulate_mains", {"state": "lost", "minutes": 5})
        assert before + timedelta(minutes=5) <= command.expires_at
        assert command.expires_at <= timezone.now() + timedelta(minutes=5)
        assert f"command {command.id} pending" in output
    assert "pi-0001" in output and "Alice's flat" in output and "pi-0003" not in output


@pytest.mark.django_db
def test_demo_outage_on_an_unknown_feeder_names_the_known_ones():
    demo_seed(rotate_tokens=False)

    known = r"No feeder 'FD-999'; known feeders: FD-101, FD-102, FD-103\."
    with pytest.raises(CommandError, match=known):
        demo_outage("--feeder", "FD-999")

    assert not Command.objects.exists()


@pytest.mark.django_db
def test_demo_outage_on_a_feeder_without_devices_says_so():
    demo_seed(rotate_tokens=False)
    empty = Feeder.objects.create(
        code="FD-199", name="Empty", transformer=Feeder.objects.get(code="FD-101").transformer
    )
    Site.objects.create(name="No Pi yet", feeder=empty, timezone="Europe/Lisbon")

    with pytest.raises(CommandError, match="Feeder FD-199 has no Pis"):
        demo_outage("--feeder", "FD-199")


@pytest.mark.django_db
def test_demo_outage_refuses_a_length_the_devices_would_refuse():
    demo_seed(rotate_tokens=False)

    with pytest.raises(CommandError, match="simulate_mains takes"):
        demo_outage("--feeder", "FD-101", "--minutes", "0")

    assert not Command.objects.exists()
