"""Writes of the OpenADR VEN: VTN events become (and change, and cancel) ordinary events of the
connection's program through `demand_response.services` (so invitations, auto-responses,
dispatch at the start and restore on cancel are the ones our operators' events get); the VEN's
answers and its state are kept.

Idempotent on (connection, VTN event id): a `VtnEvent` row maps each VTN event to one of ours
with the modification number last applied, so an event distributed again on every poll, or
again to a restarted VEN, changes nothing; a higher modification number updates it; a
cancellation, or its absence from a later distribution (implied cancel), cancels it."""

import logging
from collections.abc import Iterable
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from demand_response import selectors as dr_selectors
from demand_response import services as dr_services
from demand_response.models import (
    Event,
    EventStatus,
    InvitationStatus,
    OptRule,
    VenState,
    VtnConnection,
    VtnEvent,
    VtnMessage,
    VtnMessageKind,
)
from demand_response.openadr import mapping
from devices.models import Feeder

logger = logging.getLogger(__name__)

OPT_IN, OPT_OUT = "optIn", "optOut"
LIVE = [EventStatus.SCHEDULED, EventStatus.ACTIVE]
IMPLIED_CANCEL = "implied_cancel"


def _targets(connection: VtnConnection, data: mapping.VtnEventData) -> tuple[list[int], list[int]]:
    """(site ids, feeder ids) the event targets: those its targets map to that the program
    may call, or, when none is mapped, every eligible site of the program."""
    eligible = dr_selectors.program_eligible_site_ids(program=connection.program)
    mapped = mapping.mapped_targets(connection.target_map or {}, data.targets)
    if mapped is None:
        if not eligible:
            raise ValidationError({"targets": "The program has no eligible site."})
        return sorted(eligible), []
    codes, site_ids = mapped
    feeders = list(
        Feeder.objects.filter(code__in=codes, sites__pk__in=eligible)
        .distinct()
        .values_list("pk", flat=True)
    )
    sites = sorted(site_ids & eligible)
    if not feeders and not sites:
        raise ValidationError(
            {"targets": "The event's mapped targets hold no site eligible for the program."}
        )
    return sites, sorted(feeders)


def fleet_answer(vtn_event: VtnEvent) -> str:
    """optIn or optOut for the event as the invitations now stand, by the connection's rule;
    optOut once an operator cancelled it here."""
    if vtn_event.event.status == EventStatus.CANCELLED:
        return OPT_OUT
    rule = vtn_event.connection.opt_rule
    if rule == OptRule.ALWAYS_IN:
        return OPT_IN
    statuses = set(vtn_event.event.invitations.values_list("status", flat=True))
    if rule == OptRule.UNLESS_ALL_OUT:
        return OPT_OUT if statuses <= {InvitationStatus.OPTED_OUT} else OPT_IN
    return OPT_IN if InvitationStatus.OPTED_IN in statuses else OPT_OUT


def _log(connection_id: int, kind: str, *, now: datetime, **fields) -> VtnMessage:
    return VtnMessage.objects.create(connection_id=connection_id, kind=kind, sent_at=now, **fields)


@transaction.atomic
def vtn_event_receive(
    *, connection_id: int, event: dict, request_id: str = "", now: datetime | None = None
) -> str:
    """Take one event of an `oadrDistributeEvent`: create, update or cancel ours, and return
    the answer for the VTN (optIn/optOut), logged as sent. An event that cannot be ours (no
    window, a signal we do not act on, no eligible target) is answered optOut; one of ours
    modified into such an event is cancelled here."""
    now = now or timezone.now()
    connection = VtnConnection.objects.select_related("program").get(pk=connection_id)
    try:
        event_id, number, status = mapping.descriptor(event)
    except mapping.UnusableEvent as exc:
        logger.warning("VTN event refused: %s", exc)
        return OPT_OUT
    known = (
        VtnEvent.objects.select_for_update()
        .select_related("event", "connection")
        .filter(connection=connection, vtn_event_id=event_id)
        .first()
    )
    if status == mapping.CANCELLED:
        if known is None:
            return OPT_OUT  # never ours: nothing to cancel
        _cancel(known, now)
        known.modification_number = max(known.modification_number, number)
        known.vtn_status, known.updated_at = status, now
        known.save(update_fields=["modification_number", "vtn_status", "updated_at"])
        return known.opt_type or OPT_OUT
    if known is not None and number <= known.modification_number:
        if known.vtn_status != status:
            known.vtn_status = status
            known.save(update_fields=["vtn_status"])
        return _answer(known, request_id, now)  # seen already (a repeat, a restarted VEN)
    try:
        data = mapping.parse_event(event)
        sites, feeders = _targets(connection, data)
    except (mapping.UnusableEvent, ValidationError) as exc:
        logger.warning("VTN event %s refused: %s", event_id, exc)
        if known is not None:  # changed into one we cannot take: ours stops (opted out)
            _cancel(known, now)
            known.modification_number, known.vtn_status, known.updated_at = number, status, now
            known.opt_type = OPT_OUT
            known.save(
                update_fields=["modification_number", "vtn_status", "updated_at", "opt_type"]
            )
        return OPT_OUT
    if known is None:
        if data.end <= now:
            return OPT_OUT  # over already: nothing to do
        ours = dr_services.event_create(
            program_id=connection.program_id,
            start=data.start,
            end=data.end,
            signal_type=data.signal_type,
            signal_value=data.signal_value,
            target_sites=sites,
            target_feeders=feeders,
            randomization_s=data.randomization_s,
            now=now,
            notice=False,
        )
        known = VtnEvent.objects.create(
            connection=connection,
            vtn_event_id=event_id,
            event=ours,
            modification_number=number,
            vtn_status=status,
            market_context=data.market_context,
            targets=[list(t) for t in data.targets],
            received_at=now,
            updated_at=now,
        )
    else:
        _modify(known, data, sites, feeders, now)
        known.modification_number, known.vtn_status = number, status
        known.targets, known.updated_at = [list(t) for t in data.targets], now
        known.save(update_fields=["modification_number", "vtn_status", "targets", "updated_at"])
    return _answer(known, request_id, now)


def _answer(known: VtnEvent, request_id: str, now: datetime) -> str:
    answer = fleet_answer(known)
    known.opt_type = answer
    known.request_id = request_id or known.request_id
    known.save(update_fields=["opt_type", "request_id"])
    _log(known.connection_id, VtnMessageKind.CREATED_EVENT, now=now, vtn_event=known,
         opt_type=answer, detail=f"{known.vtn_event_id} #{known.modification_number}")  # fmt: skip
    return answer


def _modify(known: VtnEvent, data, sites: list[int], feeders: list[int], now: datetime) -> None:
    """Bring our event to the VTN's new version: all of it before the start, the end and the
    signal while it runs (a new end already passed ends it now); nothing once it is over."""
    event = Event.objects.get(pk=known.event_id)
    if event.status == EventStatus.SCHEDULED and now < event.start:
        if data.end <= now:
            dr_services.event_cancel(event_id=event.pk, now=now)
            return
        dr_services.event_update(
            event_id=event.pk,
            start=max(data.start, now),
            end=data.end,
            signal_type=data.signal_type,
            signal_value=data.signal_value,
            target_sites=sites,
            target_feeders=feeders,
            randomization_s=data.randomization_s,
            now=now,
            notice=False,
        )
    elif event.status == EventStatus.SCHEDULED or event.status == EventStatus.ACTIVE:
        if event.status == EventStatus.SCHEDULED:  # its start has come: it runs from now
            dr_services.event_transition(event_id=event.pk, now=now)
            event.refresh_from_db()
        if event.status != EventStatus.ACTIVE:
            return
        if data.end <= now:
            dr_services.event_cancel(event_id=event.pk, now=now)
            return
        dr_services.event_running_amend(
            event_id=event.pk,
            end=data.end,
            signal_type=data.signal_type,
            signal_value=data.signal_value,
            now=now,
        )


def _cancel(known: VtnEvent, now: datetime) -> None:
    event = Event.objects.get(pk=known.event_id)
    if event.status in LIVE:
        dr_services.event_cancel(event_id=event.pk, now=now)


@transaction.atomic
def vtn_events_implied_cancel(
    *, connection_id: int, present: Iterable[str], now: datetime | None = None
) -> list[int]:
    """Cancel our live events of the connection whose VTN event is missing from a complete
    distribution (`present`: the VTN event ids it held); the ids of our events cancelled. An
    event whose end has come is left to complete."""
    now = now or timezone.now()
    gone = (
        VtnEvent.objects.select_for_update()
        .filter(connection_id=connection_id, event__status__in=LIVE, event__end__gt=now)
        .exclude(vtn_event_id__in=list(present))
    )
    cancelled = []
    for known in gone:
        dr_services.event_cancel(event_id=known.event_id, now=now)
        known.vtn_status, known.updated_at = IMPLIED_CANCEL, now
        known.save(update_fields=["vtn_status", "updated_at"])
        cancelled.append(known.event_id)
    return cancelled


def vtn_live_event_ids(*, connection_id: int) -> list[str]:
    """The VTN event ids of the connection's events still to come or under way."""
    return list(
        VtnEvent.objects.filter(connection_id=connection_id, event__status__in=LIVE)
        .order_by("id")
        .values_list("vtn_event_id", flat=True)
    )


@transaction.atomic
def vtn_answers_changed(*, connection_id: int, now: datetime | None = None) -> list[VtnEvent]:
    """The connection's events whose fleet answer is no longer the one the VTN was given (a
    resident opted out mid-event, one opted in before the start, an operator cancelled the
    event here before its end), with the new answer set: the VEN sends each an
    `oadrCreateOpt`. Events the VTN cancelled are not answered again."""
    now = now or timezone.now()
    changed = []
    cancelled_here = Q(event__status=EventStatus.CANCELLED, event__end__gt=now) & ~Q(
        vtn_status__in=[mapping.CANCELLED, IMPLIED_CANCEL]
    )
    for known in (
        VtnEvent.objects.select_for_update(of=("self",))
        .select_related("connection", "event")
        .filter(Q(event__status__in=LIVE) | cancelled_here, connection_id=connection_id)
        .exclude(opt_type="")
    ):
        answer = fleet_answer(known)
        if answer != known.opt_type:
            known.opt_type, known.updated_at = answer, now
            known.save(update_fields=["opt_type", "updated_at"])
            changed.append(known)
    return changed


def vtn_message_log(
    *,
    connection_id: int,
    kind: str,
    vtn_event_id: int | None = None,
    opt_type: str = "",
    report_name: str = "",
    value: float | None = None,
    ok: bool = True,
    detail: str = "",
    now: datetime | None = None,
) -> VtnMessage:
    """Keep what the VEN sent a VTN (an opt, a report value) for the admin and the pages."""
    return _log(
        connection_id, kind, now=now or timezone.now(), vtn_event_id=vtn_event_id,
        opt_type=opt_type, report_name=report_name, value=value, ok=ok, detail=detail[:300],
    )  # fmt: skip


def connection_state_set(
    *,
    connection_id: int,
    state: str,
    detail: str = "",
    polled: bool = False,
    ven_id: str | None = None,
    registration_id: str | None = None,
    now: datetime | None = None,
) -> None:
    """Record the VEN's state (and, `polled`, that it just polled the VTN)."""
    now = now or timezone.now()
    if state not in VenState.values:
        raise ValueError(f"state must be one of {VenState.values}")
    fields = {"state": state, "state_detail": detail[:300]}
    if polled:
        fields["last_poll_at"] = now
    if ven_id is not None:
        fields["ven_id"] = ven_id
    if registration_id is not None:
        fields["registration_id"] = registration_id
    changed = VtnConnection.objects.filter(pk=connection_id).exclude(state=state)
    changed.update(state_changed_at=now)
    VtnConnection.objects.filter(pk=connection_id).update(**fields)
