"""The VEN's services against the database, without a VTN: idempotence on (connection, VTN
event id), modification numbers, explicit and implied cancels, answers by the connection's rule,
and changed answers."""

from datetime import timedelta

import pytest

from django.db import IntegrityError
from django.utils import timezone

from demand_response import services as dr_services
from demand_response.models import EventStatus, OptRule, VtnConnection, VtnEvent
from demand_response.openadr import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def connection(program, alice_home, bob_home):
    return VtnConnection.objects.create(
        vtn_url="http://127.0.0.1:8299/OpenADR2/Simple/2.0b", ven_name="v", program=program,
        target_map={"R-ALICE": {"sites": [alice_home["site"].pk]}},
    )  # fmt: skip


def distributed(event_id="ev-1", *, number=0, status="far", start=None, minutes=60, level=2,
                targets=None):  # fmt: skip
    start = start or timezone.now() + timedelta(minutes=10)
    interval = {"dtstart": start, "duration": timedelta(minutes=minutes), "signal_payload": level}
    return {
        "event_descriptor": {
            "event_id": event_id,
            "modification_number": number,
            "event_status": status,
        },
        "active_period": {"dtstart": start, "duration": timedelta(minutes=minutes)},
        "event_signals": [
            {"signal_name": "SIMPLE", "signal_type": "level", "intervals": [interval]}
        ],
        "targets": targets or [],
        "response_required": "always",
    }


def receive(connection, event, **kw):
    return services.vtn_event_receive(connection_id=connection.pk, event=event, **kw)


def test_the_same_event_again_is_one_event_and_a_mapped_target_invites_its_sites(
    connection, alice_home
):
    event = distributed(targets=[{"resource_id": "R-ALICE"}])
    assert receive(connection, event) == "optOut"  # Alice has not answered
    assert receive(connection, event) == "optOut"
    mapping = VtnEvent.objects.get()
    assert list(mapping.event.invitations.values_list("site_id", flat=True)) == [
        alice_home["site"].pk
    ]
    assert connection.program.events.count() == 1
    with pytest.raises(IntegrityError):  # the database says so too
        VtnEvent.objects.create(
            connection=connection, vtn_event_id="ev-1", event=mapping.event,
            modification_number=0, received_at=timezone.now(), updated_at=timezone.now(),
        )  # fmt: skip


def test_a_higher_modification_number_updates_and_a_lower_one_is_ignored(connection):
    start = timezone.now() + timedelta(minutes=10)
    receive(connection, distributed(start=start))
    receive(connection, distributed(number=2, start=start, minutes=90, level=3))
    receive(connection, distributed(number=1, start=start, minutes=30, level=1))  # stale
    mapping = VtnEvent.objects.select_related("event").get()
    assert mapping.modification_number == 2
    assert (mapping.event.end, mapping.event.signal_value) == (start + timedelta(minutes=90), 3)


def test_an_event_already_under_way_is_taken_and_a_modification_moves_its_end(connection):
    start = timezone.now() - timedelta(minutes=5)
    receive(connection, distributed(start=start))
    event = VtnEvent.objects.get().event
    assert event.start == start  # the VTN's notice, not the program's lead time
    dr_services.event_transition(event_id=event.pk, now=timezone.now())
    receive(connection, distributed(number=1, start=start, minutes=120))
    event.refresh_from_db()
    assert (event.status, event.end) == (EventStatus.ACTIVE, start + timedelta(minutes=120))


def test_a_cancellation_cancels_and_an_unknown_one_creates_nothing(connection):
    receive(connection, distributed())
    assert receive(connection, distributed("ev-x", status="cancelled", number=1)) == "optOut"
    receive(connection, distributed(number=1, status="cancelled"))
    assert VtnEvent.objects.get().event.status == EventStatus.CANCELLED
    assert connection.program.events.count() == 1


def test_an_event_missing_from_a_distribution_is_cancelled(connection):
    receive(connection, distributed("ev-1"))
    receive(connection, distributed("ev-2"))
    cancelled = services.vtn_events_implied_cancel(connection_id=connection.pk, present=["ev-2"])
    statuses = dict(VtnEvent.objects.values_list("vtn_event_id", "event__status"))
    assert statuses == {"ev-1": EventStatus.CANCELLED, "ev-2": EventStatus.SCHEDULED}
    assert cancelled == [VtnEvent.objects.get(vtn_event_id="ev-1").event_id]
    assert services.vtn_events_implied_cancel(connection_id=connection.pk, present=["ev-2"]) == []


def test_an_event_that_cannot_be_ours_is_answered_opt_out_and_not_kept(connection):
    bad = distributed()
    bad["event_signals"] = [{"signal_name": "BID_LOAD", "intervals": []}]
    assert receive(connection, bad) == "optOut"
    over = distributed(start=timezone.now() - timedelta(hours=2), minutes=30)
    assert receive(connection, over) == "optOut"
    assert not VtnEvent.objects.exists()


@pytest.mark.parametrize(
    ("rule", "expected"),
    [(OptRule.ANY_OPTED_IN, "optOut"), (OptRule.UNLESS_ALL_OUT, "optIn"),
     (OptRule.ALWAYS_IN, "optIn")],
)  # fmt: skip
def test_the_connection_rule_decides_an_unanswered_fleet(connection, rule, expected):
    connection.opt_rule = rule
    connection.save()
    assert receive(connection, distributed()) == expected


def test_a_changed_answer_is_found_once(connection, alice_home):
    receive(connection, distributed())
    assert services.vtn_answers_changed(connection_id=connection.pk) == []
    event = VtnEvent.objects.get().event
    invitation = event.invitations.get(site=alice_home["site"])
    dr_services.invitation_respond(invitation_id=invitation.pk, response="opt_in", by="resident")
    changed = services.vtn_answers_changed(connection_id=connection.pk)
    assert [(c.vtn_event_id, c.opt_type) for c in changed] == [("ev-1", "optIn")]
    assert services.vtn_answers_changed(connection_id=connection.pk) == []


def test_an_operator_cancel_here_opts_out_but_a_vtn_cancel_is_not_answered_again(connection):
    connection.opt_rule = OptRule.ALWAYS_IN
    connection.save()
    assert receive(connection, distributed("ev-1")) == "optIn"
    assert receive(connection, distributed("ev-2")) == "optIn"
    dr_services.event_cancel(event_id=VtnEvent.objects.get(vtn_event_id="ev-1").event_id)
    receive(connection, distributed("ev-2", number=1, status="cancelled"))
    changed = services.vtn_answers_changed(connection_id=connection.pk)
    assert [(c.vtn_event_id, c.opt_type) for c in changed] == [("ev-1", "optOut")]


def test_an_event_modified_into_one_we_cannot_take_is_cancelled_and_opted_out(connection):
    receive(connection, distributed())
    changed = distributed(number=1)
    changed["event_signals"] = [{"signal_name": "BID_LOAD", "intervals": []}]
    assert receive(connection, changed) == "optOut"
    mapping = VtnEvent.objects.select_related("event").get()
    assert (mapping.event.status, mapping.modification_number) == (EventStatus.CANCELLED, 1)
