"""The demand-response API at /api/v1/: programs, events and their cancel and report,
invitations and their answers, and sites' auto-responses. Who sees and changes what, the shapes,
the 400s naming their field, and the query counts of the lists."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from django.utils import timezone

from demand_response import services
from demand_response.models import (
    Event,
    EventStatus,
    Invitation,
    Program,
    SettlementResult,
    SettlementStatus,
)

API = "/api/v1/"


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def clients(api_client_for, alice, bob, operator, admin_user):
    return {
        "alice": api_client_for(alice),
        "bob": api_client_for(bob),
        "operator": api_client_for(operator),
        "staff": api_client_for(admin_user),
    }


@pytest.fixture
def homes(alice_home, bob_home):
    return {"alice": alice_home["site"], "bob": bob_home["site"]}


@pytest.fixture
def soon():
    """An hour from now, on the whole minute: past the program's 30-minute notice."""
    return (timezone.now() + timedelta(hours=1)).replace(second=0, microsecond=0)


def body(program, start, /, **given) -> dict:
    return {
        "program": program.pk,
        "start": iso(start),
        "end": iso(start + timedelta(hours=2)),
        "signal": {"type": "level", "value": 2},
        "targets": {
            "sites": [],
            "feeders": list(program.eligible_feeders.values_list("pk", flat=True)),
        },
        "randomization_s": 0,
    } | given


def errors_of(response) -> dict:
    assert response.status_code == 400, response.content
    return response.json()["errors"]


@pytest.fixture
def event(program, homes, soon):
    """A level-2 event of the program on both homes' feeder, an hour from now."""
    return services.event_create(
        program_id=program.pk,
        start=soon,
        end=soon + timedelta(hours=2),
        signal_type="level",
        signal_value=Decimal(2),
        target_feeders=[homes["alice"].feeder_id],
    )


# --- dr/events/ ---------------------------------------------------------------------------------


def test_an_operator_creates_an_event_and_the_feeders_sites_are_invited(
    clients, program, homes, soon
):
    response = clients["operator"].post(f"{API}dr/events/", body(program, soon), format="json")

    assert response.status_code == 201, response.content
    created = response.json()
    assert {k: v for k, v in created.items() if k not in ("id", "created_at", "updated_at")} == {
        "program": program.pk,
        "start": iso(soon),
        "end": iso(soon + timedelta(hours=2)),
        "signal": {"type": "level", "value": 2},
        "targets": {"sites": [], "feeders": [homes["alice"].feeder_id]},
        "randomization_s": 0,
        "status": "scheduled",
        "source": None,  # called by an operator, not a utility's VTN
    }
    invited = Invitation.objects.filter(event_id=created["id"]).values_list("site_id", flat=True)
    assert sorted(invited) == sorted([homes["alice"].pk, homes["bob"].pk])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"end": "start"}, "end"),
        ({"start": "past"}, "start"),
        ({"signal": {"type": "level", "value": 4}}, "signal"),
        ({"signal": {"type": "wind", "value": 1}}, "signal"),
        ({"targets": {"sites": [999999], "feeders": []}}, "targets"),
        ({"randomization_s": -1}, "randomization_s"),
        ({"program": 999999}, "program"),
    ],
)
def test_bad_event_input_is_a_400_naming_the_field(clients, program, homes, soon, change, field):
    given = dict(change)
    if given.get("end") == "start":
        given["end"] = iso(soon - timedelta(minutes=1))
    if given.get("start") == "past":
        given["start"] = iso(timezone.now() - timedelta(hours=1))

    response = clients["operator"].post(
        f"{API}dr/events/", body(program, soon, **given), format="json"
    )

    assert field in errors_of(response)
    assert not Event.objects.exists()


def test_a_resident_may_not_create_an_event(clients, program, homes, soon):
    response = clients["alice"].post(f"{API}dr/events/", body(program, soon), format="json")

    assert response.status_code == 403
    assert not Event.objects.exists()


def test_a_resident_sees_only_events_that_invited_their_sites(clients, program, homes, soon):
    # given an event inviting Bob's home alone, and one inviting both homes
    bobs = services.event_create(
        program_id=program.pk, start=soon, end=soon + timedelta(hours=1), signal_type="level",
        signal_value=Decimal(1), target_sites=[homes["bob"].pk],
    )  # fmt: skip
    both = services.event_create(
        program_id=program.pk, start=soon, end=soon + timedelta(hours=1), signal_type="level",
        signal_value=Decimal(1), target_feeders=[homes["bob"].feeder_id],
    )  # fmt: skip

    listed = clients["alice"].get(f"{API}dr/events/").json()["results"]

    assert [e["id"] for e in listed] == [both.pk]
    assert clients["alice"].get(f"{API}dr/events/{bobs.pk}/").status_code == 404
    assert clients["bob"].get(f"{API}dr/events/{bobs.pk}/").status_code == 200


def test_an_event_changes_before_its_start_and_its_invitations_follow(clients, event, homes):
    response = clients["operator"].patch(
        f"{API}dr/events/{event.pk}/",
        {"targets": {"sites": [homes["alice"].pk], "feeders": []}, "randomization_s": 300},
        format="json",
    )

    assert response.status_code == 200, response.content
    assert response.json()["targets"] == {"sites": [homes["alice"].pk], "feeders": []}
    assert response.json()["randomization_s"] == 300
    assert list(event.invitations.values_list("site_id", flat=True)) == [homes["alice"].pk]


def test_an_event_that_started_no_longer_changes(clients, event):
    services.event_transition(event_id=event.pk, now=event.start)

    response = clients["operator"].patch(
        f"{API}dr/events/{event.pk}/", {"randomization_s": 60}, format="json"
    )

    assert "status" in errors_of(response)


def test_an_events_program_does_not_change(clients, event):
    other = Program.objects.create(
        name="Other", reward_per_kwh=1, currency="EUR", notification_lead_time=timedelta(0)
    )

    response = clients["operator"].patch(
        f"{API}dr/events/{event.pk}/", {"program": other.pk}, format="json"
    )

    assert "program" in errors_of(response)


def test_cancel_moves_the_event_to_cancelled_and_a_resident_may_not(clients, event):
    assert clients["alice"].post(f"{API}dr/events/{event.pk}/cancel/").status_code == 403

    response = clients["operator"].post(f"{API}dr/events/{event.pk}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert list(event.status_changes.values_list("status", flat=True)) == [
        "scheduled",
        "cancelled",
    ]


def test_a_completed_event_cannot_be_cancelled(clients, event):
    services.event_transition(event_id=event.pk, now=event.end)

    assert "status" in errors_of(clients["operator"].post(f"{API}dr/events/{event.pk}/cancel/"))


def test_the_event_list_costs_the_same_queries_for_many_events(
    clients, program, homes, soon, django_assert_num_queries
):
    for hour in range(12):
        services.event_create(
            program_id=program.pk, start=soon + timedelta(hours=hour),
            end=soon + timedelta(hours=hour, minutes=30), signal_type="level",
            signal_value=Decimal(1), target_sites=[homes["alice"].pk, homes["bob"].pk],
            target_feeders=[homes["alice"].feeder_id],
        )  # fmt: skip

    # token, operator group, count, page, and the prefetched target sites and feeders
    with django_assert_num_queries(6):
        response = clients["operator"].get(f"{API}dr/events/")
    assert response.json()["count"] == 12
    # a resident's list adds no query (their filter is a subquery)
    with django_assert_num_queries(6):
        assert clients["alice"].get(f"{API}dr/events/").json()["count"] == 12


# --- the report ---------------------------------------------------------------------------------


def test_the_report_before_settlement_is_empty_and_says_so(clients, event):
    response = clients["operator"].get(f"{API}dr/events/{event.pk}/report/")

    assert response.status_code == 200
    assert response.json() == {
        "event": event.pk,
        "status": "scheduled",
        "settled": False,
        "sites": [],
        "totals": {"sites": 0, "sites_paid": 0, "delivered_kwh": "0.0000", "rewards": []},
        "commands": [],
    }


def test_the_report_after_settlement_shows_each_site_and_a_resident_only_theirs(
    clients, event, homes
):
    # given both homes opted in, the event run through its end and settled without history
    for invitation in event.invitations.all():
        services.invitation_respond(invitation_id=invitation.pk, response="opt_in", by="resident")
    services.event_transition(event_id=event.pk, now=event.end)
    services.event_settle(event_id=event.pk)

    report = clients["operator"].get(f"{API}dr/events/{event.pk}/report/").json()
    alices = clients["alice"].get(f"{API}dr/events/{event.pk}/report/").json()

    assert (report["status"], report["settled"]) == ("completed", True)
    assert [(r["site"], r["status"], r["reward"]) for r in report["sites"]] == [
        (homes["alice"].pk, "insufficient_baseline", "0.00"),
        (homes["bob"].pk, "insufficient_baseline", "0.00"),
    ]
    assert report["totals"] == {
        "sites": 2,
        "sites_paid": 0,
        "delivered_kwh": "0.0000",
        "rewards": [{"currency": "EUR", "amount": "0.00"}],
    }
    assert [r["site"] for r in alices["sites"]] == [homes["alice"].pk]


def test_the_reports_rewards_are_in_the_currencys_minor_unit(clients, event, homes):
    # given an event settled with a reward for alice (as `event_settle` writes it)
    services.event_transition(event_id=event.pk, now=event.end)
    SettlementResult.objects.create(
        event=event,
        site=homes["alice"],
        status=SettlementStatus.OK,
        delivered_kwh=Decimal("1.2"),
        reward=Decimal("0.29"),
        currency="EUR",
        settled_at=event.end,
    )

    report = clients["operator"].get(f"{API}dr/events/{event.pk}/report/").json()

    assert [(r["site"], r["reward"], r["currency"]) for r in report["sites"]] == [
        (homes["alice"].pk, "0.29", "EUR")
    ]
    assert report["totals"]["rewards"] == [{"currency": "EUR", "amount": "0.29"}]


# --- dr/invitations/ ----------------------------------------------------------------------------


def test_a_resident_lists_only_their_own_sites_invitations(clients, event, homes):
    listed = clients["alice"].get(f"{API}dr/invitations/").json()["results"]
    everyone = clients["operator"].get(f"{API}dr/invitations/").json()["results"]

    assert [(i["event"], i["site"], i["status"]) for i in listed] == [
        (event.pk, homes["alice"].pk, "pending")
    ]
    assert len(everyone) == 2


def test_a_resident_answers_their_invitation(clients, event, homes, alice):
    invitation = event.invitations.get(site=homes["alice"])

    response = clients["alice"].post(
        f"{API}dr/invitations/{invitation.pk}/respond/", {"response": "opt_in"}, format="json"
    )

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["answered_by"]) == ("opted_in", "resident")
    invitation.refresh_from_db()
    assert (invitation.status, invitation.responder) == ("opted_in", alice)


def test_anothers_invitation_is_a_404_exactly_as_a_missing_one(clients, event, homes):
    bobs = event.invitations.get(site=homes["bob"])
    missing = Invitation.objects.order_by("-pk").first().pk + 1000

    other = clients["alice"].post(
        f"{API}dr/invitations/{bobs.pk}/respond/", {"response": "opt_in"}, format="json"
    )
    absent = clients["alice"].post(
        f"{API}dr/invitations/{missing}/respond/", {"response": "opt_in"}, format="json"
    )

    assert (other.status_code, other.json()) == (absent.status_code, absent.json())
    assert other.status_code == 404
    assert bobs.__class__.objects.get(pk=bobs.pk).status == "pending"


def test_an_answer_other_than_in_or_out_is_a_400_naming_response(clients, event, homes):
    invitation = event.invitations.get(site=homes["alice"])

    response = clients["alice"].post(
        f"{API}dr/invitations/{invitation.pk}/respond/", {"response": "maybe"}, format="json"
    )

    assert "response" in errors_of(response)


def test_an_opt_in_once_active_is_refused(clients, event, homes):
    invitation = event.invitations.get(site=homes["alice"])
    services.event_transition(event_id=event.pk, now=event.start)

    response = clients["alice"].post(
        f"{API}dr/invitations/{invitation.pk}/respond/", {"response": "opt_in"}, format="json"
    )

    assert "response" in errors_of(response)


def test_the_invitation_list_costs_the_same_queries_for_many(
    clients, program, homes, soon, django_assert_num_queries
):
    for hour in range(10):
        services.event_create(
            program_id=program.pk, start=soon + timedelta(hours=hour),
            end=soon + timedelta(hours=hour, minutes=30), signal_type="level",
            signal_value=Decimal(1), target_feeders=[homes["alice"].feeder_id],
        )  # fmt: skip

    with django_assert_num_queries(4):  # token, operator group, count, page
        assert clients["operator"].get(f"{API}dr/invitations/").json()["count"] == 20


# --- dr/programs/ -------------------------------------------------------------------------------


def test_staff_create_a_program_operators_read_it_residents_not(clients, homes):
    response = clients["staff"].post(
        f"{API}dr/programs/",
        {
            "name": "Summer",
            "reward_per_kwh": "0.5000",
            "currency": "EUR",
            "notification_lead_time": "PT1H",
            "eligible_sites": [homes["alice"].pk],
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    program_id = response.json()["id"]
    assert clients["operator"].get(f"{API}dr/programs/{program_id}/").json() == {
        "id": program_id,
        "name": "Summer",
        "reward_per_kwh": "0.5000",
        "currency": "EUR",
        "baseline_method": "10in10",
        "notification_lead_time": "PT1H",
        "eligible_sites": [homes["alice"].pk],
        "eligible_feeders": [],
    }
    assert (
        clients["operator"]
        .patch(f"{API}dr/programs/{program_id}/", {"name": "x"}, format="json")
        .status_code
        == 403
    )
    assert clients["alice"].get(f"{API}dr/programs/").status_code == 403


def test_a_program_with_events_is_not_deleted(clients, event, program):
    assert clients["staff"].delete(f"{API}dr/programs/{program.pk}/").status_code == 409


def test_the_program_list_costs_the_same_queries_for_many(
    clients, feeder, homes, django_assert_num_queries
):
    for n in range(8):
        program = Program.objects.create(
            name=f"P{n}", reward_per_kwh=1, currency="EUR", notification_lead_time=timedelta(0)
        )
        program.eligible_feeders.add(feeder)
        program.eligible_sites.add(homes["alice"])

    with django_assert_num_queries(5):  # token, count, page, eligible sites, eligible feeders
        assert clients["staff"].get(f"{API}dr/programs/").json()["count"] == 8


# --- sites/{id}/auto-response/ ------------------------------------------------------------------


def test_a_resident_sets_their_sites_auto_response(clients, homes, program, soon):
    url = f"{API}sites/{homes['alice'].pk}/auto-response/"
    assert clients["alice"].get(url).json() == {
        "site": homes["alice"].pk,
        "mode": None,
        "max_level": None,
    }

    response = clients["alice"].put(
        url, {"mode": "accept_up_to_level", "max_level": 2}, format="json"
    )

    assert response.json() == {
        "site": homes["alice"].pk,
        "mode": "accept_up_to_level",
        "max_level": 2,
    }
    # a new level-2 invitation is answered at once
    event = services.event_create(
        program_id=program.pk, start=soon, end=soon + timedelta(hours=1), signal_type="level",
        signal_value=Decimal(2), target_sites=[homes["alice"].pk],
    )  # fmt: skip
    assert event.invitations.get().status == "opted_in"


def test_anothers_sites_auto_response_is_a_404_staff_set_any(clients, homes):
    url = f"{API}sites/{homes['bob'].pk}/auto-response/"

    assert clients["alice"].get(url).status_code == 404
    assert clients["alice"].put(url, {"mode": "accept_all"}, format="json").status_code == 404
    assert clients["operator"].put(url, {"mode": "accept_all"}, format="json").status_code == 403
    response = clients["staff"].put(url, {"mode": "decline_all"}, format="json")
    assert response.json()["mode"] == "decline_all"


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"mode": "accept_up_to_level"}, "max_level"),
        ({"mode": "accept_all", "max_level": 1}, "max_level"),
        ({"mode": "accept_up_to_level", "max_level": 4}, "max_level"),
        ({"mode": "whenever"}, "mode"),
    ],
)
def test_bad_auto_response_is_a_400_naming_the_field(clients, homes, given, field):
    url = f"{API}sites/{homes['alice'].pk}/auto-response/"

    assert field in errors_of(clients["alice"].put(url, given, format="json"))


def test_mode_null_lets_the_resident_answer_again(clients, homes):
    url = f"{API}sites/{homes['alice'].pk}/auto-response/"
    clients["alice"].put(url, {"mode": "accept_all"}, format="json")

    response = clients["alice"].put(url, {"mode": None}, format="json")

    assert response.json()["mode"] is None
    assert response.status_code == 200


def test_an_event_in_the_list_shows_its_status_after_a_transition(clients, event):
    services.event_transition(event_id=event.pk, now=event.start)

    listed = clients["operator"].get(f"{API}dr/events/?status=active").json()["results"]

    assert [(e["id"], e["status"]) for e in listed] == [(event.pk, EventStatus.ACTIVE)]
