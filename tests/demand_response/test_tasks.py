"""Events keep time through Celery: a task queued for each event's start and end, exactly one
transition however many workers run it, nothing from a task that arrives early, and the beat
sweep that moves what a lost or early task left."""

import json
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from django.utils import timezone

from demand_response import services, tasks
from demand_response.models import Event, EventStatus
from energy_portal.redis_client import sync_client
from tests.demand_response.conftest import at_once

BROKER_QUEUE = "celery"  # the default queue's Redis list


@pytest.fixture
def broker_queue():
    """The tasks the code queued on the real broker (Redis), emptied before and after."""
    client = sync_client()
    client.delete(BROKER_QUEUE)

    def queued() -> list[tuple[str, str, datetime | None]]:
        """(task name, its args as Celery writes them, its eta) of each queued message."""
        headers = [json.loads(raw)["headers"] for raw in client.lrange(BROKER_QUEUE, 0, -1)]
        return [
            (h["task"], h["argsrepr"], datetime.fromisoformat(h["eta"]) if h["eta"] else None)
            for h in headers
        ]

    yield queued
    client.delete(BROKER_QUEUE)


def started_event(schedule, *, start_in: timedelta) -> Event:
    """An event whose start is `start_in` from the real clock (scheduled in the past, so the
    program's notice is given)."""
    real_now = timezone.now()
    start = real_now + start_in
    return schedule(start=start, end=start + timedelta(hours=2), now=start - timedelta(hours=1))


def transition_etas(broker_queue) -> list[datetime]:
    return sorted(eta for name, _, eta in broker_queue() if name.endswith(".event_transition"))


@pytest.mark.django_db
def test_an_instant_gets_its_task_once_it_is_within_the_horizon(
    schedule, alice_home, broker_queue, django_capture_on_commit_callbacks
):
    # given: an event starting in 10 minutes, for two hours
    with django_capture_on_commit_callbacks(execute=True):
        event = started_event(schedule, start_in=timedelta(minutes=10))

    # then: its start has its task, its end (beyond the horizon) none yet
    [(name, args, eta)] = broker_queue()
    assert (name, args, eta) == (
        "demand_response.tasks.event_transition",
        f"({event.pk},)",
        event.start,
    )

    # when: the beat's sweep runs while the end is still far, then twice once it is near
    services.events_transition_due(now=event.end - services.SCHEDULE_HORIZON - timedelta(seconds=1))
    assert transition_etas(broker_queue) == [event.start]
    for before in (timedelta(minutes=20), timedelta(minutes=19, seconds=30)):
        services.events_transition_due(now=event.end - before)

    # then: the end got its task, once
    assert transition_etas(broker_queue) == [event.start, event.end]


@pytest.mark.django_db
def test_a_day_ahead_event_holds_no_task_until_its_start_comes_near(
    schedule, alice_home, broker_queue, django_capture_on_commit_callbacks
):
    # A task with an eta hours away would be handed to a worker again every hour the broker's
    # visibility timeout lapsed, and run as many times.
    with django_capture_on_commit_callbacks(execute=True):
        event = started_event(schedule, start_in=timedelta(hours=24))
    assert broker_queue() == []

    services.events_transition_due(now=event.start - timedelta(hours=12))
    assert broker_queue() == []

    services.events_transition_due(now=event.start - timedelta(minutes=29))
    services.events_transition_due(now=event.start - timedelta(minutes=28))
    assert transition_etas(broker_queue) == [event.start]


@pytest.mark.django_db
def test_an_event_that_has_started_by_its_commit_has_its_start_task_at_once(
    schedule, alice_home, broker_queue, django_capture_on_commit_callbacks
):
    # (a VTN's event may reach the VEN after its start: it starts at once, not at the sweep)
    with django_capture_on_commit_callbacks(execute=True):
        event = started_event(schedule, start_in=-timedelta(minutes=1))
    assert transition_etas(broker_queue) == [event.start]


@pytest.mark.django_db
def test_a_task_the_broker_refused_is_queued_by_the_next_sweep(
    schedule, alice_home, broker_queue, monkeypatch
):
    event = started_event(schedule, start_in=timedelta(minutes=10))
    real = tasks.event_transition.apply_async

    def refused(*args, **kwargs):
        raise ConnectionError("the broker is away")

    monkeypatch.setattr(tasks.event_transition, "apply_async", refused)
    with pytest.raises(ConnectionError):
        services.events_transition_due(now=timezone.now())
    monkeypatch.setattr(tasks.event_transition, "apply_async", real)
    services.events_transition_due(now=timezone.now())

    assert transition_etas(broker_queue) == [event.start]


@pytest.mark.django_db
def test_an_event_that_fails_to_move_holds_none_of_the_others_back(
    schedule, alice_home, broker_queue, monkeypatch
):
    # given: two events due to start, the first failing to, and a third starting soon
    first = started_event(schedule, start_in=-timedelta(minutes=2))
    second = started_event(schedule, start_in=-timedelta(minutes=1))
    soon = started_event(schedule, start_in=timedelta(minutes=10))
    broker_queue_before = transition_etas(broker_queue)
    move = services.event_transition

    def first_fails(*, event_id, now):
        if event_id == first.pk:
            raise ValueError("the first event's data")
        return move(event_id=event_id, now=now)

    monkeypatch.setattr(services, "event_transition", first_fails)

    # when: the sweep runs
    with pytest.raises(ValueError, match="first event"):
        services.events_transition_due(now=timezone.now())

    # then: the second started, and the soon one got its task all the same
    second.refresh_from_db()
    assert second.status == EventStatus.ACTIVE
    assert transition_etas(broker_queue) == [*broker_queue_before, soon.start]


@pytest.mark.django_db
def test_an_event_whose_tasks_cannot_be_queued_holds_no_due_event_back(
    schedule, alice_home, broker_queue, monkeypatch
):
    due = started_event(schedule, start_in=-timedelta(minutes=1))
    soon = started_event(schedule, start_in=timedelta(minutes=10))

    def fails(event_id, instants, *, now):
        raise ValueError(f"event {event_id}'s instants")

    monkeypatch.setattr(services, "_transitions_queue", fails)
    with pytest.raises(ValueError, match=f"event {soon.pk}"):
        services.events_transition_due(now=timezone.now())

    due.refresh_from_db()
    assert due.status == EventStatus.ACTIVE


@pytest.mark.django_db
def test_a_sweep_out_of_time_stops_at_once(schedule, alice_home, broker_queue, monkeypatch):
    due = started_event(schedule, start_in=-timedelta(minutes=1))
    started_event(schedule, start_in=timedelta(minutes=10))

    def out_of_time(event_id, instants, *, now):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(services, "_transitions_queue", out_of_time)
    with pytest.raises(SoftTimeLimitExceeded):
        services.events_transition_due(now=timezone.now())

    # the next sweep moves it (a sweep out of time must not run on to the worker's hard kill)
    due.refresh_from_db()
    assert due.status == EventStatus.SCHEDULED


@pytest.mark.django_db
def test_changing_the_start_queues_a_transition_for_the_new_instant(
    schedule, alice_home, broker_queue, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        event = started_event(schedule, start_in=timedelta(minutes=10))
    new_start = event.start + timedelta(minutes=30)  # the program's notice: 30 min from now

    with django_capture_on_commit_callbacks(execute=True):
        services.event_update(event_id=event.pk, start=new_start)
    assert transition_etas(broker_queue) == [event.start]  # the new one beyond the horizon
    services.events_transition_due(now=new_start - timedelta(minutes=20))

    # the old start's task runs and finds nothing due; the new start has its own
    assert transition_etas(broker_queue) == [event.start, new_start]


@pytest.mark.django_db(transaction=True)
def test_two_workers_running_the_start_task_make_one_transition(schedule, alice_home, broker_queue):
    # given an event whose start has just passed on the real clock
    event = started_event(schedule, start_in=-timedelta(seconds=1))

    results = at_once(
        lambda: tasks.event_transition(event.pk), lambda: tasks.event_transition(event.pk)
    )

    assert sorted(results, key=len) == [[], ["active"]]
    assert list(event.status_changes.values_list("status", flat=True)) == ["scheduled", "active"]


@pytest.mark.django_db
def test_a_task_arriving_early_does_nothing_and_the_sweep_moves_the_event_later(
    schedule, alice_home
):
    # given an event still a minute away on the real clock (a worker's clock ahead of ours)
    event = started_event(schedule, start_in=timedelta(minutes=1))

    early = tasks.event_transition(event.pk)

    assert early == []
    assert Event.objects.get(pk=event.pk).status == EventStatus.SCHEDULED
    # when the beat sweep runs once the start has come
    assert services.events_transition_due(now=event.start + timedelta(seconds=20)) == 1
    assert Event.objects.get(pk=event.pk).status == EventStatus.ACTIVE
    # and again after the end
    assert services.events_transition_due(now=event.end) == 1
    assert Event.objects.get(pk=event.pk).status == EventStatus.COMPLETED
    assert services.events_transition_due(now=event.end + timedelta(hours=1)) == 0


@pytest.mark.django_db
def test_the_sweep_leaves_events_not_due_and_cancelled_ones(schedule, alice_home):
    later = schedule()
    gone = schedule(signal_value=Decimal(1))
    services.event_cancel(event_id=gone.pk, now=gone.start - timedelta(minutes=1))

    assert services.events_transition_due(now=later.start - timedelta(seconds=1)) == 0
    assert services.events_transition_due(now=later.start) == 1
    assert Event.objects.get(pk=gone.pk).status == EventStatus.CANCELLED


def test_the_beat_schedule_sweeps_every_30_seconds(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["dr-events-transition-due"]

    assert entry == {"task": "demand_response.tasks.events_transition_due", "schedule": 30.0}
    assert tasks.events_transition_due.name == entry["task"]


@pytest.mark.django_db
def test_an_event_that_ends_queues_its_settlement_a_while_after(
    schedule, alice_home, broker_queue, django_capture_on_commit_callbacks
):
    # given an event that has just ended on the real clock
    event = started_event(schedule, start_in=-timedelta(hours=2, seconds=1))
    broker_client = sync_client()
    broker_client.delete(BROKER_QUEUE)

    # when its end task runs
    with django_capture_on_commit_callbacks(execute=True):
        tasks.event_transition(event.pk)

    # then its settlement is queued for SETTLE_AFTER from now, once
    settles = [
        eta for name, args, eta in broker_queue()
        if name == "demand_response.tasks.event_settle" and args == f"({event.pk},)"
    ]  # fmt: skip
    assert len(settles) == 1
    expected = timezone.now() + services.SETTLE_AFTER
    assert abs(settles[0] - expected) < timedelta(seconds=30)


def queued_settlements(broker_queue, event: Event) -> list[datetime]:
    return [
        eta for name, args, eta in broker_queue()
        if name == "demand_response.tasks.event_settle" and args == f"({event.pk},)"
    ]  # fmt: skip


@pytest.mark.django_db
def test_cancelling_an_active_event_queues_its_settlement_a_while_after(
    schedule, alice_home, broker_queue, django_capture_on_commit_callbacks
):
    # given an event active on the real clock
    event = started_event(schedule, start_in=-timedelta(minutes=30))
    services.event_transition(event_id=event.pk, now=timezone.now())
    sync_client().delete(BROKER_QUEUE)

    # when the operator cancels it
    with django_capture_on_commit_callbacks(execute=True):
        services.event_cancel(event_id=event.pk)

    # then the part that ran is settled SETTLE_AFTER from now, once
    [eta] = queued_settlements(broker_queue, event)
    assert abs(eta - (timezone.now() + services.SETTLE_AFTER)) < timedelta(seconds=30)


@pytest.mark.django_db
def test_cancelling_an_event_that_never_became_active_queues_no_settlement(
    schedule, alice_home, broker_queue, django_capture_on_commit_callbacks
):
    # given one still to start and one whose start passed before any worker moved it
    waiting = started_event(schedule, start_in=timedelta(hours=1))
    missed = started_event(schedule, start_in=-timedelta(minutes=5))

    with django_capture_on_commit_callbacks(execute=True):
        for event in (waiting, missed):
            services.event_cancel(event_id=event.pk)

    assert queued_settlements(broker_queue, waiting) == []
    assert queued_settlements(broker_queue, missed) == []
