"""Demand-response data for the demo (`make run`): a program open to the demo feeders with a
minute's notice, so an operator can call an event and watch the simulated Pis shed load, and
the demo sites' standing answers (Alice accepts every event, Bob up to level 2)."""

from datetime import timedelta
from decimal import Decimal

from django.db import transaction

from demand_response import services
from demand_response.models import Program, SiteAutoResponse
from devices.models import Feeder, Site

DEMO_PROGRAM = {
    "name": "Demo peak saver",
    "reward_per_kwh": Decimal("0.3000"),
    "currency": "EUR",
    "notification_lead_time": timedelta(minutes=1),
}
DEMO_FEEDERS = ("FD-101", "FD-102", "FD-103")
# site name: (auto-response mode, max level); a site whose resident already chose keeps it.
DEMO_AUTO_RESPONSES = {
    "Alice's flat": ("accept_all", None),
    "Bob's house": ("accept_up_to_level", 2),
}


@transaction.atomic
def demo_program_ensure() -> tuple[Program, bool]:
    """Create the demo program if missing (eligible: the demo feeders) and give the demo sites
    without an auto-response theirs; returns the program and whether it was created now. Run
    again, it changes nothing an operator or resident has changed since."""
    program = Program.objects.filter(name=DEMO_PROGRAM["name"]).first()
    created = program is None
    if created:
        program = Program(**DEMO_PROGRAM)
        program.full_clean()
        program.save()
        program.eligible_feeders.set(Feeder.objects.filter(code__in=DEMO_FEEDERS))
    answered = SiteAutoResponse.objects.values("site_id")
    for site in Site.objects.filter(name__in=DEMO_AUTO_RESPONSES).exclude(pk__in=answered):
        mode, max_level = DEMO_AUTO_RESPONSES[site.name]
        services.site_auto_response_set(site_id=site.pk, mode=mode, max_level=max_level)
    return program, created
