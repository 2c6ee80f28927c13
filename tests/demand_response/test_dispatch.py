"""Dispatch of demand-response events to the homes' devices over their real sockets (the
project's ASGI application, the Redis channel layer, PostgreSQL): `curtail` at the start to
opted-in sites' controllable devices, `restore` on cancel, at the end and at once on a mid-event
opt-out, a curtail kept for a device offline at the start, and each command's record for the
report."""

import ast
import json
from datetime import datetime, timedelta

import pytest
from channels.db import database_sync_to_async

from django.utils import timezone

from demand_response import selectors, services
from demand_response.models import DispatchedCommand, Event
from devices.models import Command, CommandStatus, Device
from energy_portal.redis_client import sync_client
from tests.devices.test_consumers import (  # noqa: F401 (an autouse fixture)
    REDIS_PATTERNS,
    close_sync_thread_connections,
    device_socket,
    live_socket,
    settle,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clean_redis")]


@pytest.fixture
def running_event(schedule, alice_home, bob_home):
    """A level-2 event starting now-ish on the real clock; Alice's home opted in, Bob's out."""

    def make(**given) -> Event:
        start = timezone.now() + timedelta(seconds=5)
        event = schedule(
            start=start, end=start + timedelta(hours=1), now=start - timedelta(hours=1), **given
        )
        for invitation in event.invitations.all():
            answer = "opt_in" if invitation.site_id == alice_home["site"].pk else "opt_out"
            services.invitation_respond(invitation_id=invitation.pk, response=answer, by="resident")
        return event

    return make


start_event = database_sync_to_async(
    lambda event: services.event_transition(event_id=event.pk, now=event.start)
)


@pytest.mark.asyncio
async def test_an_opted_in_device_gets_curtail_at_the_start_and_restore_on_cancel(
    eager_celery, running_event, alice_home, bob_home
):
    event = await database_sync_to_async(running_event)()

    async with device_socket(alice_home["token"]) as pi, device_socket(bob_home["token"]) as bobs:
        await settle(pi)
        await settle(bobs)
        await start_event(event)
        curtail = await pi.receive_json_from(timeout=5)
        await pi.send_json_to({"type": "command_result", "id": curtail["id"], "status": "done"})
        await settle(pi)
        await database_sync_to_async(services.event_cancel)(event_id=event.pk)
        restore = await pi.receive_json_from(timeout=5)
        await pi.send_json_to({"type": "command_result", "id": restore["id"], "status": "done"})
        await settle(pi)
        assert await bobs.receive_nothing(timeout=0.2)  # Bob opted out: nothing for him

    assert (curtail["name"], curtail["args"]) == (
        "curtail",
        {"event": event.pk, "level": 2, "until": event.end.isoformat()},
    )
    assert (restore["name"], restore["args"]) == ("restore", {"event": event.pk})
    curtail_command = await database_sync_to_async(Command.objects.get)(pk=curtail["id"])
    # expires at the end (the ttl counted from the dispatch, so a few ms after it)
    assert timedelta(0) <= curtail_command.expires_at - event.end < timedelta(minutes=1)
    report = await database_sync_to_async(
        lambda: selectors.event_report(
            event=Event.objects.get(pk=event.pk), user=alice_home["site"].residents.get()
        )
    )()
    assert [(c.device_id, c.kind, c.command.status) for c in report["commands"]] == [
        (alice_home["device"].pk, "curtail", CommandStatus.DONE),
        (alice_home["device"].pk, "restore", CommandStatus.DONE),
    ]
    assert all(c.command.completed_at is not None for c in report["commands"])


@pytest.mark.asyncio
async def test_a_mid_event_opt_out_restores_the_site_at_once(
    eager_celery, running_event, alice_home
):
    event = await database_sync_to_async(running_event)()
    invitation = await database_sync_to_async(event.invitations.get)(site=alice_home["site"])

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        await start_event(event)
        curtail = await pi.receive_json_from(timeout=5)
        await database_sync_to_async(services.invitation_respond)(
            invitation_id=invitation.pk, response="opt_out", by="resident"
        )
        restore = await pi.receive_json_from(timeout=5)

    assert (curtail["name"], restore["name"]) == ("curtail", "restore")
    kinds = await database_sync_to_async(
        lambda: list(DispatchedCommand.objects.filter(event=event).values_list("kind", flat=True))
    )()
    assert sorted(kinds) == ["curtail", "restore"]


@pytest.mark.asyncio
async def test_a_device_offline_at_the_start_gets_its_curtail_on_reconnect(
    eager_celery, running_event, alice_home
):
    event = await database_sync_to_async(running_event)()
    await start_event(event)

    async with device_socket(alice_home["token"]) as pi:
        frame = await pi.receive_json_from(timeout=5)

    assert (frame["name"], frame["args"]["event"]) == ("curtail", event.pk)


@pytest.mark.asyncio
async def test_the_end_restores_and_nothing_goes_twice(eager_celery, running_event, alice_home):
    event = await database_sync_to_async(running_event)()
    await start_event(event)

    async with device_socket(alice_home["token"]) as pi:
        curtail = await pi.receive_json_from(timeout=5)
        await database_sync_to_async(services.event_transition)(event_id=event.pk, now=event.end)
        restore = await pi.receive_json_from(timeout=5)
        # a curtail or restore task run again sends nothing more
        await database_sync_to_async(services.event_sites_curtail)(
            event_id=event.pk, site_ids=[alice_home["site"].pk], now=event.start
        )
        await database_sync_to_async(services.event_restore)(event_id=event.pk)
        assert await pi.receive_nothing(timeout=0.2)

    assert (curtail["name"], restore["name"]) == ("curtail", "restore")


@pytest.mark.asyncio
async def test_a_running_amendment_curtails_again_with_the_new_level_and_end(
    eager_celery, running_event, alice_home
):
    # given: a level-2 event under way, Alice's Pi curtailed
    event = await database_sync_to_async(running_event)()
    await start_event(event)
    later = event.end + timedelta(minutes=30)
    amend = database_sync_to_async(services.event_running_amend)

    async with device_socket(alice_home["token"]) as pi:
        first = await pi.receive_json_from(timeout=5)
        # when: a VTN raises the level and moves the end while it runs
        await amend(event_id=event.pk, end=later, signal_type="level", signal_value=3,
                    now=event.start)  # fmt: skip
        again = await pi.receive_json_from(timeout=5)
        # and: the same amendment again sends nothing more
        await amend(event_id=event.pk, end=later, signal_type="level", signal_value=3,
                    now=event.start)  # fmt: skip
        assert await pi.receive_nothing(timeout=0.2)

    # then: the Pi got a second curtail with the new level and until, expiring at the new end
    assert (first["name"], first["args"]["level"]) == ("curtail", 2)
    assert again["name"] == "curtail"
    assert again["args"] == {"event": event.pk, "level": 3, "until": later.isoformat()}
    command = await Command.objects.aget(pk=again["id"])
    assert command.expires_at == later
    # and the report keeps the device's first curtail
    dispatched = [d async for d in DispatchedCommand.objects.filter(event=event)]
    assert [(d.kind, str(d.command_id)) for d in dispatched] == [("curtail", first["id"])]


def test_a_running_amendment_skips_the_devices_already_restored(running_event, alice_home):
    # given: Alice's Pi curtailed, then restored when her site opted out mid-event
    event = running_event()
    services.event_transition(event_id=event.pk, now=event.start)
    invitation = event.invitations.get(site=alice_home["site"])
    services.invitation_respond(invitation_id=invitation.pk, response="opt_out", by="resident",
                                now=event.start + timedelta(minutes=1))  # fmt: skip
    before = Command.objects.filter(device=alice_home["device"]).count()

    services.event_running_amend(event_id=event.pk, end=event.end + timedelta(minutes=30),
                                 signal_type="level", signal_value=3,
                                 now=event.start + timedelta(minutes=2))  # fmt: skip

    assert Command.objects.filter(device=alice_home["device"]).count() == before


def test_only_controllable_devices_of_opted_in_sites_are_curtailed(running_event, alice_home):
    event = running_event()
    Device.objects.filter(pk=alice_home["device"].pk).update(controllable=False)
    Event.objects.filter(pk=event.pk).update(status="active")

    assert (
        services.event_sites_curtail(
            event_id=event.pk,
            site_ids=[s.pk for s in event.target_sites.all()] + [alice_home["site"].pk],
            now=event.start,
        )
        == 0
    )


def test_each_sites_offset_is_stable_and_within_the_randomization(running_event, alice_home):
    event = running_event(randomization_s=600)
    offsets = [services.site_offset(event, site_id) for site_id in range(1, 201)]

    assert offsets == [services.site_offset(event, site_id) for site_id in range(1, 201)]
    assert all(0 <= offset <= 600 for offset in offsets)
    assert len(set(offsets)) > 100  # spread, not bunched
    event.randomization_s = 0
    assert services.site_offset(event, 1) == 0


def test_the_start_queues_each_sites_curtail_for_start_plus_its_offset(
    running_event, alice_home, bob_home
):
    # given both homes opted in to an event with a 10-minute randomization, tasks not eager
    event = running_event(randomization_s=600)
    bobs = event.invitations.get(site=bob_home["site"])
    services.invitation_respond(invitation_id=bobs.pk, response="opt_in", by="resident")

    services.event_transition(event_id=event.pk, now=event.start)

    queued = [json.loads(raw)["headers"] for raw in sync_client().lrange("celery", 0, -1)]
    eta_of_site = {
        site_id: datetime.fromisoformat(h["eta"])
        for h in queued
        if h["task"] == "demand_response.tasks.event_sites_curtail"
        for site_id in ast.literal_eval(h["argsrepr"])[1]
    }
    assert eta_of_site == {
        site.pk: event.start + timedelta(seconds=services.site_offset(event, site.pk))
        for site in (alice_home["site"], bob_home["site"])
    }


@pytest.fixture
def randomized_over_hours(schedule, alice_home, bob_home, monkeypatch):
    """A three-hour event whose start is randomized over two hours, both homes opted in, with
    the sites' offsets given (site -> seconds); and the curtail tasks queued on the broker."""

    def make(offsets: dict[int, int]) -> Event:
        start = timezone.now() + timedelta(seconds=5)
        event = schedule(
            start=start, end=start + timedelta(hours=3), now=start - timedelta(hours=1),
            randomization_s=7200,
        )  # fmt: skip
        for invitation in event.invitations.all():
            services.invitation_respond(
                invitation_id=invitation.pk, response="opt_in", by="resident"
            )
        monkeypatch.setattr(services, "site_offset", lambda event, site_id: offsets[site_id])
        return event

    return make


def curtails_queued() -> list[tuple[list[int], datetime]]:
    queued = [json.loads(raw)["headers"] for raw in sync_client().lrange("celery", 0, -1)]
    return sorted(
        (ast.literal_eval(h["argsrepr"])[1], datetime.fromisoformat(h["eta"]))
        for h in queued
        if h["task"] == "demand_response.tasks.event_sites_curtail"
    )


def test_a_start_randomized_over_hours_queues_each_curtail_only_as_it_comes_near(
    randomized_over_hours, alice_home, bob_home
):
    # given: Alice's offset a minute, Bob's an hour and a half
    alice, bob = alice_home["site"].pk, bob_home["site"].pk
    event = randomized_over_hours({alice: 60, bob: 5400})

    # when: it starts; then the beat's sweep runs an hour before Bob's curtail, and twice within
    # half an hour of it
    services.event_transition(event_id=event.pk, now=event.start)
    at_start = curtails_queued()
    services.events_transition_due(now=event.start + timedelta(minutes=30))
    an_hour_before = curtails_queued()
    for minutes in (61, 62):
        services.events_transition_due(now=event.start + timedelta(minutes=minutes))

    # then: Alice's curtail was queued at the start, Bob's only once it came near, once (a task
    # held past the broker's one-hour visibility timeout would be handed out again every hour)
    alices = ([alice], event.start + timedelta(seconds=60))
    bobs = ([bob], event.start + timedelta(seconds=5400))
    assert (at_start, an_hour_before) == ([alices], [alices])
    assert curtails_queued() == [alices, bobs]


def test_a_curtail_whose_moment_passed_while_the_beat_was_down_is_queued_when_it_is_back(
    randomized_over_hours, alice_home, bob_home
):
    # given: Bob's offset 40 minutes, so not queued at the start
    alice, bob = alice_home["site"].pk, bob_home["site"].pk
    event = randomized_over_hours({alice: 60, bob: 2400})
    services.event_transition(event_id=event.pk, now=event.start)

    # when: the beat's first sweep after the start comes 70 minutes in (30 after Bob's moment)
    services.events_transition_due(now=event.start + timedelta(minutes=70))

    # then: Bob's curtail is queued then (its eta passed: it runs at once), and only once
    services.events_transition_due(now=event.start + timedelta(minutes=71))
    assert curtails_queued() == [
        ([alice], event.start + timedelta(seconds=60)),
        ([bob], event.start + timedelta(seconds=2400)),
    ]


async def dr_messages(browser, count: int) -> list[dict]:
    """The next `count` demand-response messages the browser hears (commands' are skipped)."""
    heard = []
    while len(heard) < count:
        message = await browser.receive_json_from(timeout=5)
        if message["type"] == "dr_event":
            heard.append({k: v for k, v in message.items() if k != "type"})
    return heard


@pytest.mark.asyncio
async def test_answers_and_status_changes_reach_the_sites_and_the_fleet_live(
    eager_celery, schedule, alice_home, bob_home, alice, bob, operator
):
    start = timezone.now() + timedelta(seconds=5)
    event = await database_sync_to_async(schedule)(
        start=start, end=start + timedelta(hours=1), now=start - timedelta(hours=1),
        target_sites=[alice_home["site"].pk],
    )  # fmt: skip
    invitation = await database_sync_to_async(event.invitations.get)()

    async with (
        live_socket(alice) as alices,
        live_socket(bob) as bobs,
        live_socket(operator) as fleet,
    ):
        await database_sync_to_async(services.invitation_respond)(
            invitation_id=invitation.pk, response="opt_in", by="resident"
        )
        await start_event(event)
        await database_sync_to_async(services.event_cancel)(event_id=event.pk)
        heard = await dr_messages(alices, 3)
        operators = await dr_messages(fleet, 3)
        bob_heard_nothing = await bobs.receive_nothing(timeout=0.3)

    site = alice_home["site"].pk
    assert heard == [
        {"event": event.pk, "change": "invitation", "site": site, "answer": "opted_in"},
        {"event": event.pk, "change": "status", "status": "active"},
        {"event": event.pk, "change": "status", "status": "cancelled"},
    ]
    assert operators == heard
    assert bob_heard_nothing  # not invited: his site's viewers hear nothing of it
