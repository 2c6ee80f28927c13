"""Celery tasks of demand response: they take ids, load, call a service, retry with a countdown.

An event's start and end each get a task for their instant (`event_transition`) once it is
within `services.SCHEDULE_HORIZON`: when the event is created or changed, or from the sweep,
`events_transition_due`, which also runs every 30 s for any instant a worker missed (a lost
task, a restart, a clock running ahead). A completed event is settled a little after its
end, one cancelled while active a little after the cancel (`services.SETTLE_AFTER`)."""

from celery import shared_task

from django.db import OperationalError
from django.utils import timezone

from demand_response import services

RETRY = {
    "ignore_result": True,
    "acks_late": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": False,
    "max_retries": 5,
}


@shared_task(**RETRY)
def event_transition(event_id: int) -> list[str]:
    """Move the event along its schedule as of now: nothing if it arrived early (the sweep or
    the task for the other instant moves it later), once however many workers run it."""
    return services.event_transition(event_id=event_id, now=timezone.now())


@shared_task(**RETRY)
def events_transition_due() -> int:
    """The safety net: move every event whose start or end has passed; how many moved."""
    return services.events_transition_due(now=timezone.now())


@shared_task(**RETRY)
def event_sites_curtail(event_id: int, site_ids: list[int]) -> int:
    """Curtail the sites' controllable devices (queued for start + the sites' offset, when the
    event randomizes; without, the start's transition curtails every site itself)."""
    return services.event_sites_curtail(event_id=event_id, site_ids=site_ids)


@shared_task(**RETRY)
def event_restore(event_id: int) -> int:
    """Restore every device the event curtailed (queued on cancel; the end's transition
    restores them itself)."""
    return services.event_restore(event_id=event_id)


@shared_task(**RETRY)
def event_settle(event_id: int) -> int:
    """Settle a completed event, or one cancelled while active (queued a while after its end or
    cancel); how many sites were settled."""
    return len(services.event_settle(event_id=event_id))
