"""The demo's demand-response data (demand_response/demo.py via `manage.py seed_demo_dr`): a
program on the demo feeders with a minute's notice and the sites' auto-responses, seeded once
and never overriding what people changed since."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest

from django.core.management import call_command
from django.utils import timezone

from demand_response import services
from demand_response.models import Invitation, Program, SiteAutoResponse
from devices.demo import demo_seed
from devices.models import Site


def seed_demo_dr() -> str:
    out = StringIO()
    call_command("seed_demo_dr", stdout=out)
    return out.getvalue()


MINE = ("Alice's flat", "Bob's house")


@pytest.mark.django_db
def test_the_demo_program_lets_an_operator_call_the_demo_sites_within_minutes():
    demo_seed(rotate_tokens=False)
    output = seed_demo_dr()

    program = Program.objects.get()
    assert "Demo peak saver" in output and "created" in output
    assert (program.reward_per_kwh, program.currency) == (Decimal("0.3000"), "EUR")
    feeders = sorted(program.eligible_feeders.values_list("code", flat=True))
    assert feeders == ["FD-101", "FD-102", "FD-103"]
    # an event two minutes from now at level 3: Alice accepts all, Bob only up to level 2
    now = timezone.now()
    event = services.event_create(
        program_id=program.pk,
        start=now + timedelta(minutes=2),
        end=now + timedelta(minutes=12),
        signal_type="level",
        signal_value=Decimal(3),
        target_feeders=list(program.eligible_feeders.values_list("pk", flat=True)),
    )
    answers = dict(Invitation.objects.filter(event=event).values_list("site__name", "status"))
    assert (answers["Alice's flat"], answers["Bob's house"]) == ("opted_in", "opted_out")
    # and the other demo homes, with no standing answer, are invited and wait for theirs
    others = {name: status for name, status in answers.items() if name not in MINE}
    assert len(others) == 10 and set(others.values()) == {"pending"}


@pytest.mark.django_db
def test_seeding_again_changes_nothing_and_keeps_a_residents_choice():
    demo_seed(rotate_tokens=False)
    seed_demo_dr()
    alice = Site.objects.get(name="Alice's flat")
    services.site_auto_response_set(site_id=alice.pk, mode="decline_all")
    Program.objects.update(reward_per_kwh=Decimal("0.5"))

    output = seed_demo_dr()

    assert "already there" in output
    assert Program.objects.get().reward_per_kwh == Decimal("0.5")
    assert SiteAutoResponse.objects.get(site=alice).mode == "decline_all"
