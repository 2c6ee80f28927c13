"""Writes for demand response: events and their status, invitations and their answers, sites'
auto-responses, and the settlement that pays what each site delivered into the credit ledger.

Invalid input raises `ValidationError` with a dict naming the field as the API spells it:
`program`, `start`, `end`, `signal`, `targets`, `randomization_s`, `response`, `mode`,
`max_level`; a state that forbids the change (an event already started, completed) is named
under `status`.

Every change of an event's status, every answer and every cancel is told live (after commit) to
the invited sites' viewers and the fleet (`_tell`). Dispatch: at the start each opted-in site's
controllable devices get `curtail` through the devices' command path (each site after its own
stable randomization offset), and `restore` at the end, on cancel, or at once when the site opts
out mid-event; `DispatchedCommand` keeps which command went to which device for the report."""

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from demand_response import selectors, settlement
from demand_response.models import (
    MAX_LEVEL,
    AnsweredBy,
    AutoResponseMode,
    DispatchedCommand,
    DispatchKind,
    Event,
    EventStatus,
    EventStatusChange,
    Invitation,
    InvitationStatus,
    Program,
    SettlementResult,
    SignalType,
    SiteAutoResponse,
)
from devices.groups import fleet_group, site_group
from devices.models import Device, Feeder, Site
from devices.services import commands_issue
from energy_portal.realtime import group_send, live_event
from energy_portal.redis_client import sync_client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _EventInput:
    start: datetime
    end: datetime
    signal_type: str
    signal_value: Decimal
    site_ids: set[int]
    feeder_ids: set[int]
    randomization_s: int


def _signal_error(signal_type: str, signal_value: Decimal) -> str | None:
    """What is wrong with an event's signal, if anything."""
    if signal_type not in SignalType.values:
        return f"The signal type must be one of {', '.join(SignalType.values)}."
    if signal_type == SignalType.LEVEL and signal_value not in range(MAX_LEVEL + 1):
        return f"A level must be a whole number from 0 to {MAX_LEVEL}."
    if signal_type == SignalType.TARGET_KW and signal_value <= 0:
        return "A target reduction must be more than 0 kW."
    return None


def _validated(
    program: Program, data: _EventInput, now: datetime, *, notice: bool = True
) -> set[int]:
    """Check an event's input against its program; return the ids of the sites to invite.
    `notice` False (an event a utility's VTN called: its notice is the VTN's to give) skips the
    checks of the start against `now` and the program's lead time."""
    errors: dict[str, str] = {}
    if data.start.tzinfo is None or data.end.tzinfo is None:
        raise ValidationError({"start": "Give times with their UTC offset."})
    if data.end <= data.start:
        errors["end"] = "The end must be after the start."
    earliest = now + program.notification_lead_time
    if notice and data.start < now:
        errors["start"] = "The start is in the past; give a time still to come."
    elif notice and data.start < earliest:
        errors["start"] = (
            f"The program {program.name} gives at least {program.notification_lead_time} "
            f"notice: start at {earliest.isoformat()} or later."
        )
    if signal_error := _signal_error(data.signal_type, data.signal_value):
        errors["signal"] = signal_error
    if data.randomization_s < 0:
        errors["randomization_s"] = "The randomization must be 0 seconds or more."
    invited, target_error = _invited_sites(program, data.site_ids, data.feeder_ids)
    if target_error:
        errors["targets"] = target_error
    if errors:
        raise ValidationError(errors)
    return invited


def _invited_sites(
    program: Program, site_ids: set[int], feeder_ids: set[int]
) -> tuple[set[int], str | None]:
    """The sites an event with these targets invites (the listed sites and the eligible ones on
    the listed feeders), or why the targets will not do."""
    if not site_ids and not feeder_ids:
        return set(), "Target at least one site or feeder."
    unknown_sites = site_ids - set(
        Site.objects.filter(pk__in=site_ids).values_list("pk", flat=True)
    )
    unknown_feeders = feeder_ids - set(
        Feeder.objects.filter(pk__in=feeder_ids).values_list("pk", flat=True)
    )
    if unknown_sites or unknown_feeders:
        return set(), "Unknown " + "; ".join(
            f"{kind} {sorted(ids)}"
            for kind, ids in (("sites", unknown_sites), ("feeders", unknown_feeders))
            if ids
        )
    eligible = selectors.program_eligible_site_ids(program=program)
    if outside := site_ids - eligible:
        return set(), f"Sites {sorted(outside)} are not eligible for the program {program.name}."
    on_feeders = set(
        Site.objects.filter(feeder__in=feeder_ids, pk__in=eligible).values_list("pk", flat=True)
    )
    if feeder_ids and not on_feeders and not site_ids:
        return set(), f"No site on these feeders is eligible for the program {program.name}."
    return site_ids | on_feeders, None


def _auto_answer(auto: SiteAutoResponse | None, event: Event) -> str | None:
    """The status a site's auto-response gives an invitation to `event`, or None (no answer)."""
    if auto is None:
        return None
    if auto.mode == AutoResponseMode.ACCEPT_ALL:
        return InvitationStatus.OPTED_IN
    if auto.mode == AutoResponseMode.DECLINE_ALL:
        return InvitationStatus.OPTED_OUT
    if event.level is None:  # up to a level says nothing of kW targets or prices
        return None
    return (
        InvitationStatus.OPTED_IN if event.level <= auto.max_level else InvitationStatus.OPTED_OUT
    )


def _invitations_sync(event: Event, site_ids: set[int], now: datetime) -> None:
    """Invite exactly `site_ids`: new sites are invited and answered by their auto-response,
    sites no longer targeted lose their invitation, and invitations still answered by an
    auto-response (or not at all) are answered again for the event as it now is."""
    Invitation.objects.filter(event=event).exclude(site_id__in=site_ids).delete()
    autos = {a.site_id: a for a in SiteAutoResponse.objects.filter(site_id__in=site_ids)}
    existing = {i.site_id: i for i in Invitation.objects.filter(event=event)}
    new, changed = [], []
    for site_id in sorted(site_ids):
        invitation = existing.get(site_id) or Invitation(event=event, site_id=site_id)
        if invitation.answered_by not in ("", AnsweredBy.AUTO):
            continue  # a person's answer stands
        status = _auto_answer(autos.get(site_id), event)
        answered = (
            (InvitationStatus.PENDING, "", None)
            if status is None
            else (status, AnsweredBy.AUTO, now)
        )
        if invitation.pk is None:
            invitation.status, invitation.answered_by, invitation.answered_at = answered
            new.append(invitation)
        elif (invitation.status, invitation.answered_by) != answered[:2]:
            invitation.status, invitation.answered_by, invitation.answered_at = answered
            invitation.responder = None
            changed.append(invitation)
    Invitation.objects.bulk_create(new)
    Invitation.objects.bulk_update(changed, ["status", "answered_by", "answered_at", "responder"])


@transaction.atomic
def event_create(
    *,
    program_id: int,
    start: datetime,
    end: datetime,
    signal_type: str,
    signal_value: Decimal,
    target_sites: Iterable[int] = (),
    target_feeders: Iterable[int] = (),
    randomization_s: int = 0,
    now: datetime | None = None,
    notice: bool = True,
) -> Event:
    """Schedule an event of a program and invite its sites (each answered at once by the
    site's auto-response, if it has one that applies). The start must be at least the
    program's notification lead time from `now` (unless `notice` is False: an event a VTN
    called, which may even have started); targets must be known and eligible."""
    now = now or timezone.now()
    program = Program.objects.filter(pk=program_id).first()
    if program is None:
        raise ValidationError({"program": f"There is no program {program_id}."})
    data = _EventInput(
        start, end, signal_type, Decimal(signal_value), set(target_sites), set(target_feeders),
        randomization_s,
    )  # fmt: skip
    invited = _validated(program, data, now, notice=notice)
    event = Event.objects.create(
        program=program,
        start=start,
        end=end,
        signal_type=signal_type,
        signal_value=data.signal_value,
        randomization_s=randomization_s,
    )
    event.target_sites.set(data.site_ids)
    event.target_feeders.set(data.feeder_ids)
    EventStatusChange.objects.create(event=event, status=EventStatus.SCHEDULED, at=now)
    _invitations_sync(event, invited, now)
    _transitions_schedule(event)
    _tell(event.pk, {"change": "scheduled", "status": event.status})
    return event


@transaction.atomic
def event_update(
    *,
    event_id: int,
    start: datetime | None = None,
    end: datetime | None = None,
    signal_type: str | None = None,
    signal_value: Decimal | None = None,
    target_sites: Iterable[int] | None = None,
    target_feeders: Iterable[int] | None = None,
    randomization_s: int | None = None,
    now: datetime | None = None,
    notice: bool = True,
) -> Event:
    """Change a scheduled event before its start; what is not given stays. Validated as
    `event_create` validates (`notice` as there); the invitations follow the new targets and
    signal."""
    now = now or timezone.now()
    event = Event.objects.select_for_update().select_related("program").get(pk=event_id)
    if event.status != EventStatus.SCHEDULED or now >= event.start:
        raise ValidationError(
            {"status": "The event has started or ended; it can no longer change."}
        )
    data = _EventInput(
        start=event.start if start is None else start,
        end=event.end if end is None else end,
        signal_type=event.signal_type if signal_type is None else signal_type,
        signal_value=event.signal_value if signal_value is None else Decimal(signal_value),
        site_ids=set(
            event.target_sites.values_list("pk", flat=True)
            if target_sites is None
            else target_sites
        ),
        feeder_ids=set(
            event.target_feeders.values_list("pk", flat=True)
            if target_feeders is None
            else target_feeders
        ),
        randomization_s=event.randomization_s if randomization_s is None else randomization_s,
    )
    invited = _validated(event.program, data, now, notice=notice)
    event.start, event.end, event.signal_type, event.signal_value, event.randomization_s = (
        data.start, data.end, data.signal_type, data.signal_value, data.randomization_s,
    )  # fmt: skip
    event.save(
        update_fields=[
            "start",
            "end",
            "signal_type",
            "signal_value",
            "randomization_s",
            "updated_at",
        ]
    )
    event.target_sites.set(data.site_ids)
    event.target_feeders.set(data.feeder_ids)
    _invitations_sync(event, invited, now)
    _transitions_schedule(event)
    _tell(event.pk, {"change": "updated", "status": event.status})
    return event


@transaction.atomic
def event_running_amend(
    *,
    event_id: int,
    end: datetime,
    signal_type: str,
    signal_value: Decimal,
    now: datetime | None = None,
) -> Event:
    """Change the end and signal of an active event (a VTN modified an event under way; our
    own operators cannot). The end must be after the start and still to come. The devices
    curtailed and not yet restored get a new `curtail` with the new level and `until` (a Pi
    replaces its curtailment with it); the event completes, and restores them, at the new end."""
    now = now or timezone.now()
    event = Event.objects.select_for_update().select_related("program").get(pk=event_id)
    if event.status != EventStatus.ACTIVE:
        raise ValidationError({"status": f"The event is {event.status}, not active."})
    data = _EventInput(
        event.start, end, signal_type, Decimal(signal_value), set(), set(), event.randomization_s
    )
    errors = {}
    if end.tzinfo is None or end <= event.start:
        errors["end"] = "The end must be after the start, with its UTC offset."
    elif end <= now:
        errors["end"] = "The end has passed; cancel the event instead."
    if signal_error := _signal_error(data.signal_type, data.signal_value):
        errors["signal"] = signal_error
    if errors:
        raise ValidationError(errors)
    changed = (event.end, event.signal_type, event.signal_value) != (
        end, data.signal_type, data.signal_value
    )  # fmt: skip
    event.end, event.signal_type, event.signal_value = end, data.signal_type, data.signal_value
    event.save(update_fields=["end", "signal_type", "signal_value", "updated_at"])
    if changed:
        _curtail_again(event)
    _transitions_schedule(event)
    _tell(event.pk, {"change": "updated", "status": event.status})
    return event


def _curtail_again(event: Event) -> int:
    """Send the devices an active event curtailed, and has not restored, a `curtail` with the
    event's amended level and end; how many. These are the devices' commands like any other
    (their pages list them); the event's report keeps each device's first curtail. A device
    still offline gets both on reconnect, oldest first, so the newer one is what stays."""
    restored = DispatchedCommand.objects.filter(event=event, kind=DispatchKind.RESTORE).values(
        "device_id"
    )
    devices = (
        DispatchedCommand.objects.filter(event=event, kind=DispatchKind.CURTAIL)
        .exclude(device_id__in=restored)
        .values_list("device_id", flat=True)
    )
    commands = commands_issue(
        device_ids=list(devices), name="curtail", args=_curtail_args(event), expires_at=event.end
    )
    return len(commands)


def _move(event_id: int, *, to: str, allowed: Iterable[str], now: datetime, **when) -> bool:
    """Move the event to `to` if it is in one of `allowed` (and `when` holds), recording the
    change; False if it was not. One conditional UPDATE: of two workers trying the same move,
    one changes the row and the other finds it changed (it waits for the first to commit)."""
    moved = Event.objects.filter(pk=event_id, status__in=list(allowed), **when).update(
        status=to, updated_at=now
    )
    if moved:
        EventStatusChange.objects.create(event_id=event_id, status=to, at=now)
    return bool(moved)


@transaction.atomic
def event_transition(*, event_id: int, now: datetime) -> list[str]:
    """Move the event along its schedule as of `now`: scheduled → active once its start has
    come, active → completed once its end has (both, for a worker that comes back after the
    end). Each move happens once however many workers call this; returns the statuses this
    call moved it to."""
    moved = []
    if _move(
        event_id, to=EventStatus.ACTIVE, allowed=[EventStatus.SCHEDULED], now=now, start__lte=now
    ):
        moved.append(EventStatus.ACTIVE)
    if _move(
        event_id, to=EventStatus.COMPLETED, allowed=[EventStatus.ACTIVE], now=now, end__lte=now
    ):
        moved.append(EventStatus.COMPLETED)
    if EventStatus.ACTIVE in moved and EventStatus.COMPLETED not in moved:
        event = Event.objects.get(pk=event_id)
        if event.randomization_s <= 0:
            # Every site's curtail is due now: sent in this transaction rather than by a task
            # queued for the start (a Celery hop and a commit less in the event's first
            # second, bench/dr). Should this fail, the move is undone with it and retried.
            event_sites_curtail(event_id=event_id, site_ids=None, now=now)
        else:
            _curtail_schedule(event)
    if EventStatus.COMPLETED in moved:
        _restore(event_id, None)  # in this transaction, as the start's curtail
        _settle_later(event_id)
    for status in moved:
        _tell(event_id, {"change": "status", "status": status})
    return moved


def events_transition_due(*, now: datetime) -> int:
    """Queue the tasks of what has come within SCHEDULE_HORIZON: events' instants
    (`_transitions_queue`) and the curtails of randomized starts (`_curtails_queue`). Then move
    every event whose start or end has passed by `now`, each in its own transaction: the
    safety net behind those tasks. An event whose step fails is logged and the other events'
    steps still run; the first failure then propagates. How many moved."""
    failures: list[Exception] = []

    def each(what: str, event_id: int, step: Callable[[], object]) -> object:
        try:
            return step()
        except SoftTimeLimitExceeded:  # the task's time is up: stop, not the next event
            raise
        except Exception as exc:
            logger.exception("demand response: %s of event %s failed", what, event_id)
            failures.append(exc)
            return None

    for event_id, instants in selectors.event_instants_near(now=now, horizon=SCHEDULE_HORIZON):
        each(
            "queuing the transitions",
            event_id,
            partial(_transitions_queue, event_id, instants, now=now),
        )
    for event_id in selectors.event_ids_randomizing():
        each("queuing the curtails", event_id, partial(_curtails_queue, event_id, now=now))
    moved = sum(
        bool(each("the move", event_id, partial(event_transition, event_id=event_id, now=now)))
        for event_id in selectors.event_ids_due(now=now)
    )
    if failures:
        raise failures[0]
    return moved


@transaction.atomic
def event_cancel(*, event_id: int, now: datetime | None = None) -> Event:
    """Cancel an event that has not completed (scheduled or active). Cancelling a cancelled
    event changes nothing. An event cancelled while active is settled later over the part of
    its window that ran, from its start to `now`."""
    now = now or timezone.now()
    allowed = [EventStatus.SCHEDULED, EventStatus.ACTIVE]
    if not _move(event_id, to=EventStatus.CANCELLED, allowed=allowed, now=now):
        event = Event.objects.get(pk=event_id)
        if event.status != EventStatus.CANCELLED:
            raise ValidationError(
                {"status": "The event has completed; it can no longer be cancelled."}
            )
        return event
    _restore_later(event_id)
    event = Event.objects.get(pk=event_id)
    if selectors.event_settlement_window(event=event) is not None:
        _settle_later(event_id)  # it ran until now: what it delivered so far is paid
    _tell(event_id, {"change": "status", "status": EventStatus.CANCELLED})
    return event


def _tell(event_id: int, payload: dict, *, site_ids: Iterable[int] | None = None) -> None:
    """Tell the event's invited sites (or `site_ids`) and the fleet, once the change commits."""
    if site_ids is None:
        site_ids = Invitation.objects.filter(event_id=event_id).values_list("site_id", flat=True)
    groups = [site_group(site_id) for site_id in site_ids] + [fleet_group()]
    message = live_event({"type": "dr_event", "event": event_id, **payload})
    transaction.on_commit(lambda: group_send(groups, message), robust=True)


# Celery's Redis transport gives a task that is not acknowledged within the broker's visibility
# timeout (CELERY_BROKER_TRANSPORT_OPTIONS, 1 h) to a worker again: a task queued for an instant
# further away would be held, then run, once for every hour it waited (a day-ahead event's start
# 24 times). So an instant gets its task only once it is at most SCHEDULE_HORIZON away: when
# the event is created or changed, if it is near, else from the beat's sweep as it comes near
# (`events_transition_due`, every 30 s). A Redis key per instant keeps it to one task.
SCHEDULE_HORIZON = timedelta(minutes=30)
_SCHEDULED_KEY = "ep:dr:transition-queued:{event_id}:{instant}"
_CURTAIL_KEY = "ep:dr:curtail-queued:{event_id}:{start}:{offset}"


def _transitions_schedule(event: Event) -> None:
    """After commit, queue the task of each of the event's instants that is near or has passed
    (an event the VTN sent late may have started: its start's task runs at once). A changed
    event's earlier tasks still run and find nothing due (event_transition checks the
    instants)."""
    event_id, instants = event.pk, [event.start, event.end]
    transaction.on_commit(
        lambda: _transitions_queue(event_id, instants, now=timezone.now(), past=True), robust=True
    )


def _transitions_queue(
    event_id: int, instants: list[datetime], *, now: datetime, past: bool = False
) -> int:
    """Queue an `event_transition` for each of `instants` at most SCHEDULE_HORIZON away (and
    still to come, unless `past`) that was not queued already (`_queue_once`); how many were
    queued."""
    from demand_response.tasks import event_transition as task  # tasks import this module

    due = [
        instant
        for instant in instants
        if instant <= now + SCHEDULE_HORIZON and (past or instant > now)
    ]
    return _queue_once(
        [
            (
                _SCHEDULED_KEY.format(event_id=event_id, instant=_utc(instant)),
                partial(task.apply_async, (event_id,), eta=instant),
            )
            for instant in due
        ],
        keep_s=int(2 * SCHEDULE_HORIZON.total_seconds()),
    )


def _queue_once(tasks: list[tuple[str, Callable[[], object]]], *, keep_s: int) -> int:
    """Call each task's `queue` whose Redis key says it was not queued yet (one round trip for
    all), then keep the keys of those queued for `keep_s` seconds; how many were queued. The
    key is written only once its task is queued: should queuing fail, the next sweep tries
    again; with Redis unreachable every task is queued (a task queued twice finds nothing to do
    the second time)."""
    if not tasks:
        return 0
    client = sync_client()
    try:
        with client.pipeline(transaction=False) as pipe:
            for key, _ in tasks:
                pipe.exists(key)
            seen = pipe.execute()
    except RedisError:
        seen = [0] * len(tasks)
    queued: list[str] = []
    try:
        for (key, queue), was in zip(tasks, seen, strict=True):
            if not was:
                queue()
                queued.append(key)
    finally:
        if queued:
            with contextlib.suppress(RedisError), client.pipeline(transaction=False) as pipe:
                for key in queued:
                    pipe.set(key, 1, ex=keep_s)
                pipe.execute()
    return len(queued)


def _utc(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat()


def site_offset(event: Event, site_id: int) -> int:
    """The site's stable delay in [0, randomization_s] seconds after the start, so that a
    feeder's loads do not all drop (and come back) in the same second."""
    if event.randomization_s <= 0:
        return 0
    digest = hashlib.sha256(f"{event.pk}:{site_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (event.randomization_s + 1)


def _curtail_schedule(event: Event) -> None:
    """After the start commits, queue the opted-in sites' curtailment, one task per offset at
    start + offset (`_curtails_queue`): every offset at most SCHEDULE_HORIZON away now, the
    later ones (a randomization over half an hour) from the beat's sweep as they come near."""
    event_id = event.pk
    transaction.on_commit(lambda: _curtails_queue(event_id, now=timezone.now()), robust=True)


def _curtails_queue(event_id: int, *, now: datetime) -> int:
    """Queue `event_sites_curtail` for each offset of the active event's opted-in sites whose
    instant is at most SCHEDULE_HORIZON away or has passed, and that was not queued already
    (`_queue_once`, the keys kept until the event's end: a curtail after it sends nothing); how
    many were queued. A site that opted out since is skipped by the task."""
    from demand_response.tasks import event_sites_curtail as task  # tasks import this module

    event = Event.objects.filter(pk=event_id, status=EventStatus.ACTIVE).first()
    if event is None:
        return 0
    by_offset: dict[int, list[int]] = {}
    for site_id in Invitation.objects.filter(
        event_id=event_id, status=InvitationStatus.OPTED_IN
    ).values_list("site_id", flat=True):
        by_offset.setdefault(site_offset(event, site_id), []).append(site_id)
    start = _utc(event.start)
    tasks = []
    for offset, ids in sorted(by_offset.items()):
        at = event.start + timedelta(seconds=offset)
        if at <= now + SCHEDULE_HORIZON:
            key = _CURTAIL_KEY.format(event_id=event_id, start=start, offset=offset)
            tasks.append((key, partial(task.apply_async, (event_id, ids), eta=at)))
    keep = max(event.end - now, timedelta(0)) + SCHEDULE_HORIZON
    return _queue_once(tasks, keep_s=int(keep.total_seconds()))


# Settlement waits this long after an event ends: the devices' last readings of the window reach
# the database through the ingest buffer, and a Pi that was offline replays its own. A later
# settlement (late data) is still safe: it pays only the difference.
SETTLE_AFTER = timedelta(minutes=10)


def _settle_later(event_id: int) -> None:
    from demand_response.tasks import event_settle as task

    transaction.on_commit(
        lambda: task.apply_async((event_id,), countdown=SETTLE_AFTER.total_seconds()), robust=True
    )


def _restore_later(event_id: int) -> None:
    from demand_response.tasks import event_restore as task

    transaction.on_commit(lambda: task.delay(event_id), robust=True)


def _curtail_args(event: Event) -> dict:
    # A kW target or a price has no level of its own: the devices get the middle level.
    level = event.level if event.level is not None else 2
    return {"event": event.pk, "level": level, "until": event.end.isoformat()}


@transaction.atomic
def event_sites_curtail(
    *, event_id: int, site_ids: Iterable[int] | None, now: datetime | None = None
) -> int:
    """Send `curtail` to each controllable device of those of `site_ids` (None: all sites)
    still opted in, while the event is active and before its end; the command expires at the
    end (an offline device gets it on reconnect if still in time). A device already sent one
    is skipped, so a task run twice sends nothing more. Returns how many were sent."""
    now = now or timezone.now()
    # The event's row is locked as `invitation_respond` locks it: an opt-out either comes
    # before this (and the site is skipped) or after (and restores what this sent).
    event = Event.objects.select_for_update().get(pk=event_id)
    if event.status != EventStatus.ACTIVE or now >= event.end:
        return 0
    opted_in = Invitation.objects.filter(event=event, status=InvitationStatus.OPTED_IN)
    if site_ids is not None:
        opted_in = opted_in.filter(site_id__in=list(site_ids))
    opted_in = opted_in.values("site_id")
    sent = DispatchedCommand.objects.filter(event=event, kind=DispatchKind.CURTAIL).values(
        "device_id"
    )
    sites = dict(
        Device.objects.filter(site_id__in=opted_in, controllable=True)
        .exclude(pk__in=sent)
        .values_list("pk", "site_id")
    )
    commands = commands_issue(
        device_ids=sites, name="curtail", args=_curtail_args(event), expires_at=event.end
    )
    return _dispatched(event.pk, DispatchKind.CURTAIL, sites, commands)


def _dispatched(
    event_id: int, kind: str, sites: dict[int, int], commands: dict[int, uuid.UUID]
) -> int:
    """Record which command went to which device (`sites`: device -> its site), in one
    statement; how many."""
    if not commands:
        return 0
    devices = list(commands)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO demand_response_dispatchedcommand
                (event_id, site_id, device_id, command_id, kind, created_at)
            SELECT %s, u.site_id, u.device_id, u.command_id, %s, %s
            FROM unnest(%s::bigint[], %s::bigint[], %s::uuid[]) AS u(device_id, site_id, command_id)
            """,
            [
                event_id,
                kind,
                timezone.now(),
                devices,
                [sites[device] for device in devices],
                [commands[device] for device in devices],
            ],
        )
    return len(devices)


def _restore(event_id: int, site_ids: Iterable[int] | None) -> int:
    curtailed = DispatchedCommand.objects.filter(event_id=event_id, kind=DispatchKind.CURTAIL)
    if site_ids is not None:
        curtailed = curtailed.filter(site_id__in=list(site_ids))
    restored = DispatchedCommand.objects.filter(
        event_id=event_id, kind=DispatchKind.RESTORE
    ).values("device_id")
    sites = dict(curtailed.exclude(device_id__in=restored).values_list("device_id", "site_id"))
    commands = commands_issue(device_ids=sites, name="restore", args={"event": event_id})
    return _dispatched(event_id, DispatchKind.RESTORE, sites, commands)


@transaction.atomic
def event_restore(*, event_id: int) -> int:
    """Send `restore` to every device the event curtailed and has not restored (at its end or
    cancel); run twice, it sends nothing more. Returns how many were sent."""
    Event.objects.select_for_update().get(pk=event_id)
    return _restore(event_id, None)


@transaction.atomic
def event_site_restore(*, event_id: int, site_id: int) -> int:
    """Send `restore` to the devices of one site the event curtailed (it opted out)."""
    Event.objects.select_for_update().get(pk=event_id)
    return _restore(event_id, [site_id])


@transaction.atomic
def invitation_respond(
    *, invitation_id: int, response: str, by: str, user: AbstractBaseUser | None = None,
    now: datetime | None = None,
) -> Invitation:  # fmt: skip
    """Answer an invitation: `response` is `opt_in` or `opt_out`, `by` who answers (resident,
    operator). Before the start either answer, and a change of mind, is taken; once the event
    is active only an opt-out (the site's loads are restored); after it ended or was cancelled,
    nothing. Whether `user` may answer for the site is for the caller to decide."""
    now = now or timezone.now()
    if response not in ("opt_in", "opt_out"):
        raise ValidationError({"response": 'Answer "opt_in" or "opt_out".'})
    if by not in AnsweredBy.values:
        raise ValueError(f"by must be one of {AnsweredBy.values}")
    # The event's row is locked first (as `event_update` locks it before its invitations, so
    # the two cannot deadlock): the answer and a start or end are not interleaved, and an
    # opt-in is either before the start (and dispatched) or refused.
    event_id = Invitation.objects.filter(pk=invitation_id).values_list("event_id", flat=True).get()
    event = Event.objects.select_for_update().get(pk=event_id)
    invitation = Invitation.objects.select_for_update().get(pk=invitation_id)
    status = InvitationStatus.OPTED_IN if response == "opt_in" else InvitationStatus.OPTED_OUT
    if event.status in (EventStatus.COMPLETED, EventStatus.CANCELLED):
        raise ValidationError({"status": f"The event is {event.status}; it takes no answers."})
    if event.status == EventStatus.ACTIVE and status == InvitationStatus.OPTED_IN:
        raise ValidationError({"response": "The event has started: you can only opt out now."})
    if invitation.status != status or invitation.answered_by != by:
        invitation.status, invitation.answered_by, invitation.answered_at = status, by, now
        invitation.responder = user if user is not None and user.is_authenticated else None
        invitation.save(update_fields=["status", "answered_by", "answered_at", "responder"])
        _tell(
            event.pk,
            {"change": "invitation", "site": invitation.site_id, "answer": invitation.status},
            site_ids=[invitation.site_id],
        )
    if event.status == EventStatus.ACTIVE and status == InvitationStatus.OPTED_OUT:
        event_site_restore(event_id=event.pk, site_id=invitation.site_id)
    return invitation


@transaction.atomic
def site_auto_response_set(
    *, site_id: int, mode: str | None, max_level: int | None = None
) -> SiteAutoResponse | None:
    """Set how the site answers new invitations, or (mode None) let its resident answer each.
    `max_level` (0-3) goes with `accept_up_to_level` only. Invitations already made keep their
    answers."""
    if mode is None:
        SiteAutoResponse.objects.filter(site_id=site_id).delete()
        return None
    if mode not in AutoResponseMode.values:
        raise ValidationError(
            {"mode": f"The mode must be one of {', '.join(AutoResponseMode.values)}."}
        )
    if mode == AutoResponseMode.ACCEPT_UP_TO_LEVEL:
        if max_level not in range(MAX_LEVEL + 1):
            raise ValidationError(
                {"max_level": f"Give the highest level to accept, 0 to {MAX_LEVEL}."}
            )
    elif max_level is not None:
        raise ValidationError({"max_level": "A level goes only with accept_up_to_level."})
    auto, _ = SiteAutoResponse.objects.update_or_create(
        site_id=site_id, defaults={"mode": mode, "max_level": max_level}
    )
    return auto


def site_auto_response_from_iots(*, site: Site, auto_accept: bool, **_signal) -> str | None:
    """Follow an imported `iots-right.json`'s new `dr_events_auto_accept` (telemetry's
    `iots_dr_auto_accept` signal, inside the import's transaction): true accepts every event;
    false removes an accept-all (the resident answers each invitation again) and leaves a
    decline-all or accept-up-to-a-level a person chose. What changed, or None."""
    current = SiteAutoResponse.objects.filter(site=site).first()
    if auto_accept:
        if current is not None and current.mode == AutoResponseMode.ACCEPT_ALL:
            return None
        site_auto_response_set(site_id=site.pk, mode=AutoResponseMode.ACCEPT_ALL)
        return f"site {site}: demand-response events accepted automatically"
    if current is None or current.mode != AutoResponseMode.ACCEPT_ALL:
        return None
    site_auto_response_set(site_id=site.pk, mode=None)
    return f"site {site}: demand-response events no longer accepted automatically"


@transaction.atomic
def event_settle(*, event_id: int, now: datetime | None = None) -> list[SettlementResult]:
    """Settle a completed event: for each site opted in at its end, the baseline (see
    `demand_response.baseline`), the actual and the delivered kWh (baseline - actual, not below
    0) and the reward, kept as a `SettlementResult` and paid into the credit ledger. An event
    cancelled while active is settled the same way over the part of its window that ran (start
    to the cancel instant, `selectors.event_settlement_window`); one cancelled before it became
    active has nothing to settle.

    Runs again safely: the event's row is locked for the whole settlement, results are replaced
    and the ledger is brought to the new reward (a difference, usually none), so a repeated or
    concurrent settlement never pays twice; data that arrived late is taken into account."""
    now = now or timezone.now()
    event = Event.objects.select_for_update().select_related("program").get(pk=event_id)
    window = selectors.event_settlement_window(event=event)
    if window is None:
        raise ValidationError(
            {
                "status": f"The event is {event.status} and never ran to a settlement: only a "
                "completed event, or one cancelled after its start, is settled."
            }
        )
    start, end = window
    # Told once the settlement commits (not if it fails), so the pages show the results.
    _tell(event.pk, {"change": "settled", "status": event.status})
    sites = list(
        Site.objects.filter(
            dr_invitations__event=event, dr_invitations__status=InvitationStatus.OPTED_IN
        ).order_by("pk")
    )
    return settlement.event_sites_settle(event=event, sites=sites, start=start, end=end, now=now)
