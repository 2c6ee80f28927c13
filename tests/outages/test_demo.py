"""The demo's outage data (outages/demo.py via `manage.py seed_demo_outages`): a default policy
that pays within minutes and a short history of past cuts, seeded once."""

from decimal import Decimal
from io import StringIO

import pytest

from django.core.management import call_command

from devices.demo import demo_seed
from devices.models import Site
from outages import selectors
from outages.models import CreditEntry, CreditPolicy, Outage, PowerEvent


def seed_demo_outages() -> str:
    out = StringIO()
    call_command("seed_demo_outages", stdout=out)
    return out.getvalue()


def balance(site_name: str) -> dict[str, Decimal]:
    return selectors.credit_balance([Site.objects.get(name=site_name).pk])


@pytest.mark.django_db
def test_the_demo_policy_becomes_the_default_and_pays_ofgem_like_steps_in_minutes():
    demo_seed(rotate_tokens=False)

    seed_demo_outages()

    policy = selectors.credit_policy_for_site(Site.objects.get(name="Alice's flat"))
    assert policy.name == "Demo (3-minute threshold)"
    assert policy.currency == "EUR"  # the demo sites'
    assert str(policy.threshold) == "0:03:00"
    assert policy.tiers == [{"after": "PT3M", "period": "PT2M", "amount": "0.45"}]


@pytest.mark.django_db
def test_an_operators_default_policy_is_left_alone(ofgem):
    demo_seed(rotate_tokens=False)

    output = seed_demo_outages()

    assert CreditPolicy.objects.get(is_default=True) == ofgem
    assert "another policy is the default" in output


@pytest.mark.django_db
def test_past_outages_are_seeded_with_their_credits_and_only_once():
    demo_seed(rotate_tokens=False)

    seed_demo_outages()
    counts = (PowerEvent.objects.count(), Outage.objects.count(), CreditEntry.objects.count())
    output = seed_demo_outages()

    # Alice: 47 min (0.95 + 22 whole further 2 min x 0.45 = 10.85), 90 s (momentary: nothing),
    # 11 min (0.95 + 4 x 0.45 = 2.75). Bob: 47 min (10.85), 2 h 15 min (0.95 + 66 x 0.45 =
    # 30.65), 11 min (2.75).
    assert balance("Alice's flat") == {"EUR": Decimal("13.60")}
    assert balance("Bob's house") == {"EUR": Decimal("44.25")}
    alice = Outage.objects.filter(site__name="Alice's flat").order_by("started_at")
    assert [outage.momentary for outage in alice] == [False, True, False]
    assert all(outage.status == "ended" for outage in Outage.objects.all())
    # A lost and a restored per device per cut: 8 devices (FD-101's homes and Bob's), Alice's 2
    # twice more, 7 (FD-102's homes), Alice's and Bob's 4, 5 (FD-103's), Carol's 2: 28 x 2.
    # 17 site outages (16 paid, Alice's 90 s is momentary) and a feeder outage of each feeder.
    assert counts == (56, 17 + 3, 16)
    feeders = Outage.objects.filter(kind="feeder").order_by("feeder__code")
    assert [(o.feeder.code, o.members.count()) for o in feeders] == [
        ("FD-101", 4),
        ("FD-102", 4),
        ("FD-103", 4),
    ]
    assert (PowerEvent.objects.count(), Outage.objects.count(), CreditEntry.objects.count()) == (
        counts
    )
    assert "already have a history" in output
