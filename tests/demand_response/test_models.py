"""The database itself refuses demand-response rows that break the rules, whatever writes them."""

from datetime import timedelta
from decimal import Decimal

import pytest

from django.db import IntegrityError, transaction

from demand_response.models import (
    Event,
    EventStatusChange,
    Invitation,
    SettlementResult,
    SiteAutoResponse,
)
from tests.demand_response.conftest import NOW


def refused(make) -> bool:
    try:
        with transaction.atomic():
            make()
    except IntegrityError:
        return True
    return False


def event_of(program, **fields):
    values = {
        "program": program,
        "start": NOW,
        "end": NOW + timedelta(hours=1),
        "signal_type": "level",
        "signal_value": Decimal(1),
    } | fields
    return Event.objects.create(**values)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"end": NOW}, True),
        ({"end": NOW - timedelta(minutes=1)}, True),
        ({"signal_value": Decimal(4)}, True),
        ({"signal_value": Decimal("1.5")}, True),
        ({"signal_value": Decimal(-1)}, True),
        ({"signal_value": Decimal(3)}, False),
        ({"signal_value": Decimal(0)}, False),
        ({"signal_type": "target_kw", "signal_value": Decimal(0)}, True),
        ({"signal_type": "target_kw", "signal_value": Decimal("1.5")}, False),
        ({"signal_type": "price", "signal_value": Decimal("0.31")}, False),
        ({"signal_type": "volume"}, True),
        ({"status": "paused"}, True),
    ],
)
def test_an_event_must_end_after_its_start_and_carry_a_sound_signal(program, fields, bad):
    assert refused(lambda: event_of(program, **fields)) is bad


@pytest.mark.django_db
def test_an_event_reaches_each_status_once(program):
    event = event_of(program)
    EventStatusChange.objects.create(event=event, status="active", at=NOW)
    assert refused(lambda: EventStatusChange.objects.create(event=event, status="active", at=NOW))


@pytest.mark.django_db
def test_a_site_is_invited_once_and_an_answer_says_who_and_when(program, alice_home):
    event, site = event_of(program), alice_home["site"]
    Invitation.objects.create(event=event, site=site)
    assert refused(lambda: Invitation.objects.create(event=event, site=site))
    other = event_of(program)
    assert refused(lambda: Invitation.objects.create(event=other, site=site, status="opted_in"))
    assert refused(
        lambda: Invitation.objects.create(
            event=other, site=site, answered_by="auto", answered_at=NOW
        )
    )
    assert not refused(
        lambda: Invitation.objects.create(
            event=other, site=site, status="opted_out", answered_by="auto", answered_at=NOW
        )
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("mode", "max_level", "bad"),
    [
        ("accept_up_to_level", None, True),
        ("accept_up_to_level", 4, True),
        ("accept_up_to_level", 0, False),
        ("accept_up_to_level", 3, False),
        ("accept_all", 2, True),
        ("decline_all", None, False),
        ("accept_some", None, True),
    ],
)
def test_a_level_goes_with_accept_up_to_level_only(alice_home, mode, max_level, bad):
    make = lambda: SiteAutoResponse.objects.create(  # noqa: E731
        site=alice_home["site"], mode=mode, max_level=max_level
    )
    assert refused(make) is bad


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "reward", "delivered", "bad"),
    [
        ("ok", Decimal("0.29"), Decimal("1.2"), False),
        ("insufficient_baseline", Decimal("0.29"), Decimal(0), True),
        ("insufficient_actual", Decimal(0), Decimal(0), False),
        ("ok", Decimal(0), Decimal("-0.1"), True),
    ],
)
def test_only_a_sound_settlement_pays_and_nothing_is_delivered_below_zero(
    program, alice_home, status, reward, delivered, bad
):
    make = lambda: SettlementResult.objects.create(  # noqa: E731
        event=event_of(program),
        site=alice_home["site"],
        status=status,
        reward=reward,
        delivered_kwh=delivered,
        currency="EUR",
        settled_at=NOW,
    )
    assert refused(make) is bad


@pytest.mark.django_db
def test_the_admin_lists_every_demand_response_model(client, admin_user, schedule, alice_home):
    # given an event with its invitation and history
    schedule()
    client.force_login(admin_user)
    for name in (
        "program",
        "event",
        "invitation",
        "siteautoresponse",
        "settlementresult",
    ):
        response = client.get(f"/admin/demand_response/{name}/")
        assert response.status_code == 200, name
    event = Event.objects.get()
    assert client.get(f"/admin/demand_response/event/{event.pk}/change/").status_code == 200
