"""Scheduling, changing, moving and cancelling events; invitations and their answers."""

from datetime import timedelta
from decimal import Decimal

import pytest

from django.core.exceptions import ValidationError

from demand_response import services
from demand_response.models import Event, EventStatusChange, Invitation
from tests.demand_response.conftest import NOW, at_once


def invitations(event) -> dict[str, tuple[str, str]]:
    return {
        i.site.name: (i.status, i.answered_by)
        for i in Invitation.objects.filter(event=event).select_related("site")
    }


def history(event) -> list[tuple[str, object]]:
    return list(EventStatusChange.objects.filter(event=event).values_list("status", "at"))


def error_fields(call) -> set[str]:
    with pytest.raises(ValidationError) as raised:
        call()
    return set(raised.value.message_dict)


# --- create -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_event_invites_the_eligible_sites_of_its_feeders_and_auto_responses_answer(
    schedule, alice_home, bob_home, outsider
):
    # given Alice accepts everything, Bob has no auto-response
    services.site_auto_response_set(site_id=alice_home["site"].pk, mode="accept_all")
    # when
    event = schedule()
    # then
    assert event.status == "scheduled"
    assert invitations(event) == {"Alice home": ("opted_in", "auto"), "Bob home": ("pending", "")}
    assert Invitation.objects.get(event=event, site=alice_home["site"]).answered_at == NOW
    assert history(event) == [("scheduled", NOW)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("signal_type", "value", "expected"),
    [
        ("level", 1, "opted_in"),
        ("level", 2, "opted_in"),
        ("level", 3, "opted_out"),
        ("target_kw", Decimal("1.5"), "pending"),
        ("price", Decimal("0.4"), "pending"),
    ],
)
def test_accept_up_to_level_answers_level_signals_and_leaves_others_to_the_resident(
    schedule, alice_home, signal_type, value, expected
):
    services.site_auto_response_set(
        site_id=alice_home["site"].pk, mode="accept_up_to_level", max_level=2
    )
    event = schedule(signal_type=signal_type, signal_value=value)
    assert invitations(event)["Alice home"][0] == expected


@pytest.mark.django_db
def test_decline_all_opts_out_at_once(schedule, alice_home):
    services.site_auto_response_set(site_id=alice_home["site"].pk, mode="decline_all")
    assert invitations(schedule())["Alice home"] == ("opted_out", "auto")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"end": NOW + timedelta(hours=1)}, "end"),  # = start
        ({"end": NOW + timedelta(minutes=30)}, "end"),
        ({"start": NOW - timedelta(minutes=1)}, "start"),
        ({"start": NOW + timedelta(minutes=29)}, "start"),  # inside the 30-minute lead time
        ({"signal_value": 4}, "signal"),
        ({"signal_value": Decimal("1.5")}, "signal"),
        ({"signal_value": -1}, "signal"),
        ({"signal_type": "target_kw", "signal_value": 0}, "signal"),
        ({"signal_type": "volume"}, "signal"),
        ({"randomization_s": -1}, "randomization_s"),
        ({"target_sites": [999_999]}, "targets"),
        ({"target_feeders": [999_999]}, "targets"),
        ({"target_sites": [], "target_feeders": []}, "targets"),
        ({"program_id": 999_999}, "program"),
    ],
)
def test_bad_input_is_refused_naming_the_field(schedule, alice_home, given, field):
    assert error_fields(lambda: schedule(**given)) == {field}
    assert not Event.objects.exists()


@pytest.mark.django_db
def test_a_site_outside_the_program_cannot_be_targeted(schedule, alice_home, outsider):
    message = "not eligible"
    with pytest.raises(ValidationError, match=message) as raised:
        schedule(target_sites=[alice_home["site"].pk, outsider.pk])
    assert set(raised.value.message_dict) == {"targets"}


@pytest.mark.django_db
def test_a_listed_site_is_invited_alone_and_a_site_eligible_by_name_is_accepted(
    schedule, program, alice_home, bob_home, outsider
):
    program.eligible_sites.add(outsider)
    event = schedule(target_sites=[outsider.pk, alice_home["site"].pk])
    assert set(invitations(event)) == {"Elsewhere", "Alice home"}


@pytest.mark.django_db
def test_start_exactly_at_the_lead_time_is_accepted(schedule, alice_home):
    event = schedule(start=NOW + timedelta(minutes=30))
    assert event.start == NOW + timedelta(minutes=30)


# --- update -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_update_before_the_start_re_answers_auto_answers_and_keeps_a_residents(
    schedule, alice, alice_home, bob, bob_home
):
    # given both accept up to level 2; Bob then opts out himself
    for home in (alice_home, bob_home):
        services.site_auto_response_set(
            site_id=home["site"].pk, mode="accept_up_to_level", max_level=2
        )
    event = schedule()
    bob_invitation = Invitation.objects.get(event=event, site=bob_home["site"])
    services.invitation_respond(
        invitation_id=bob_invitation.pk, response="opt_out", by="resident", user=bob, now=NOW
    )
    # when the level rises to 3 and the event moves an hour later
    later = NOW + timedelta(minutes=10)
    services.event_update(
        event_id=event.pk,
        signal_value=3,
        start=event.start + timedelta(hours=1),
        end=event.end + timedelta(hours=1),
        now=later,
    )
    # then Alice's auto-response declines it now; Bob's own answer stands
    event.refresh_from_db()
    assert (event.signal_value, event.start) == (3, NOW + timedelta(hours=2))
    assert invitations(event) == {
        "Alice home": ("opted_out", "auto"),
        "Bob home": ("opted_out", "resident"),
    }
    assert Invitation.objects.get(event=event, site=alice_home["site"]).answered_at == later


@pytest.mark.django_db
def test_an_update_to_other_targets_drops_and_adds_invitations(
    schedule, program, alice_home, bob_home, outsider
):
    program.eligible_sites.add(outsider)
    event = schedule(target_sites=[alice_home["site"].pk])
    services.event_update(
        event_id=event.pk, target_sites=[outsider.pk, bob_home["site"].pk], now=NOW
    )
    assert set(invitations(event)) == {"Elsewhere", "Bob home"}


@pytest.mark.django_db
def test_an_event_cannot_change_once_started(schedule, alice_home):
    event = schedule()
    started = event.start
    assert error_fields(
        lambda: services.event_update(event_id=event.pk, signal_value=1, now=started)
    ) == {"status"}
    assert error_fields(
        lambda: services.event_update(
            event_id=event.pk, end=event.start, now=NOW + timedelta(minutes=5)
        )
    ) == {"end"}


# --- status -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_event_becomes_active_at_its_start_and_completed_at_its_end_once(schedule, alice_home):
    event = schedule()
    just_before = event.start - timedelta(microseconds=1)
    assert services.event_transition(event_id=event.pk, now=just_before) == []
    assert services.event_transition(event_id=event.pk, now=event.start) == ["active"]
    assert services.event_transition(event_id=event.pk, now=event.start) == []
    assert services.event_transition(event_id=event.pk, now=event.end) == ["completed"]
    assert services.event_transition(event_id=event.pk, now=event.end) == []
    event.refresh_from_db()
    assert event.status == "completed"
    assert history(event) == [
        ("scheduled", NOW),
        ("active", event.start),
        ("completed", event.end),
    ]


@pytest.mark.django_db
def test_a_worker_back_after_the_end_makes_both_moves(schedule, alice_home):
    event = schedule()
    late = event.end + timedelta(minutes=7)
    assert services.event_transition(event_id=event.pk, now=late) == ["active", "completed"]
    assert [s for s, _ in history(event)] == ["scheduled", "active", "completed"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("instant", ["start", "end"])
def test_two_workers_moving_the_event_at_once_move_it_once(schedule, alice_home, instant):
    # given (for the end) an event already active
    event = schedule()
    if instant == "end":
        services.event_transition(event_id=event.pk, now=event.start)
    now = getattr(event, instant)
    # when two workers try the same move at the same instant, on two connections
    results = at_once(
        lambda: services.event_transition(event_id=event.pk, now=now),
        lambda: services.event_transition(event_id=event.pk, now=now),
    )
    # then one made it, the other found nothing to do
    expected = "active" if instant == "start" else "completed"
    assert sorted(results, key=len) == [[], [expected]]
    assert [s for s, _ in history(event)].count(expected) == 1


@pytest.mark.django_db
@pytest.mark.parametrize("moves", [0, 1])
def test_cancel_from_scheduled_or_active_is_kept_in_the_history(schedule, alice_home, moves):
    event = schedule()
    if moves:
        services.event_transition(event_id=event.pk, now=event.start)
    when = event.start + timedelta(minutes=5)
    cancelled = services.event_cancel(event_id=event.pk, now=when)
    assert cancelled.status == "cancelled"
    assert history(event)[-1] == ("cancelled", when)
    # cancelling again changes nothing; a cancelled event never starts or completes
    assert services.event_cancel(event_id=event.pk, now=event.end).status == "cancelled"
    assert services.event_transition(event_id=event.pk, now=event.end) == []
    assert [s for s, _ in history(event)].count("cancelled") == 1


@pytest.mark.django_db
def test_a_completed_event_cannot_be_cancelled(schedule, alice_home):
    event = schedule()
    services.event_transition(event_id=event.pk, now=event.end)
    assert error_fields(lambda: services.event_cancel(event_id=event.pk, now=event.end)) == {
        "status"
    }
    event.refresh_from_db()
    assert event.status == "completed"


# --- answers ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_resident_answers_and_may_change_their_mind_before_the_start(schedule, alice, alice_home):
    event = schedule()
    invitation = Invitation.objects.get(event=event, site=alice_home["site"])
    answered = services.invitation_respond(
        invitation_id=invitation.pk, response="opt_in", by="resident", user=alice, now=NOW
    )
    assert (answered.status, answered.answered_by, answered.responder) == (
        "opted_in",
        "resident",
        alice,
    )
    later = NOW + timedelta(minutes=1)
    answered = services.invitation_respond(
        invitation_id=invitation.pk, response="opt_out", by="resident", user=alice, now=later
    )
    assert (answered.status, answered.answered_at) == ("opted_out", later)


@pytest.mark.django_db
def test_during_the_event_only_an_opt_out_is_taken_and_after_it_none(
    schedule, alice, operator, alice_home
):
    # given Alice's auto-response opted her in, and the event started
    services.site_auto_response_set(site_id=alice_home["site"].pk, mode="accept_all")
    event = schedule()
    invitation = Invitation.objects.get(event=event, site=alice_home["site"])
    services.event_transition(event_id=event.pk, now=event.start)
    during = event.start + timedelta(minutes=20)

    def answer(response, by="resident", user=alice):
        return services.invitation_respond(
            invitation_id=invitation.pk, response=response, by=by, user=user, now=during
        )

    # when / then
    assert error_fields(lambda: answer("opt_in")) == {"response"}
    assert answer("opt_out").status == "opted_out"
    assert error_fields(lambda: answer("opt_in", by="operator", user=operator)) == {"response"}
    services.event_transition(event_id=event.pk, now=event.end)
    assert error_fields(lambda: answer("opt_out", by="operator", user=operator)) == {"status"}
    invitation.refresh_from_db()
    assert (invitation.status, invitation.answered_by, invitation.answered_at) == (
        "opted_out",
        "resident",
        during,
    )


@pytest.mark.django_db
def test_an_answer_must_be_opt_in_or_opt_out(schedule, alice, alice_home):
    invitation = Invitation.objects.get(event=schedule(), site=alice_home["site"])
    assert error_fields(
        lambda: services.invitation_respond(
            invitation_id=invitation.pk, response="maybe", by="resident", user=alice
        )
    ) == {"response"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("mode", "max_level", "field"),
    [
        ("accept_up_to_level", None, "max_level"),
        ("accept_up_to_level", 4, "max_level"),
        ("accept_all", 1, "max_level"),
        ("accept_most", None, "mode"),
    ],
)
def test_auto_response_input_is_checked(alice_home, mode, max_level, field):
    assert error_fields(
        lambda: services.site_auto_response_set(
            site_id=alice_home["site"].pk, mode=mode, max_level=max_level
        )
    ) == {field}


@pytest.mark.django_db
def test_auto_response_is_replaced_and_removed(alice_home, schedule):
    site_id = alice_home["site"].pk
    services.site_auto_response_set(site_id=site_id, mode="accept_up_to_level", max_level=1)
    auto = services.site_auto_response_set(site_id=site_id, mode="decline_all")
    assert (auto.mode, auto.max_level) == ("decline_all", None)
    assert services.site_auto_response_set(site_id=site_id, mode=None) is None
    assert invitations(schedule())["Alice home"] == ("pending", "")
