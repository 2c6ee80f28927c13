"""Reads of demand-response programs and events, and of what settlement needs from other apps."""

import zoneinfo
from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from demand_response.baseline import local_dates
from demand_response.models import (
    DispatchedCommand,
    Event,
    EventStatus,
    EventStatusChange,
    Invitation,
    Program,
    SettlementResult,
)
from devices import selectors as registry
from devices.models import Feeder, Site
from outages.selectors import site_outage_spans
from telemetry import queries


def program_eligible_site_ids(*, program: Program) -> set[int]:
    """The sites the program may call: those it lists and those on the feeders it lists."""
    return set(
        Site.objects.filter(
            Q(pk__in=program.eligible_sites.values("pk"))
            | Q(feeder__in=program.eligible_feeders.values("pk"))
        ).values_list("pk", flat=True)
    )


def site_quarter_energy(
    *, site_ids: Iterable[int], lo: datetime, hi: datetime
) -> dict[int, dict[datetime, Decimal]]:
    """Each site's kWh per quarter-hour over [lo, hi) (lo on a quarter-hour), keyed by the
    quarter's start in UTC, counted as telemetry counts a site's energy: the utility meter's
    where the meter reported in that quarter-hour, else the sum of the devices'. Quarter-hours
    without data are absent."""
    ids = list(site_ids)
    plan = queries.energy_plan(site_ids=ids)
    meter: dict[int, dict[datetime, float]] = defaultdict(dict)
    devices: dict[int, dict[datetime, float]] = defaultdict(lambda: defaultdict(float))
    # "minute" periods are the quarter-hours themselves, the finest telemetry keeps.
    for quarter, device_id, mode, kwh in queries.energy_by_device(
        plan=plan, lo=lo, hi=hi, tz="UTC", unit="minute"
    ):
        site_id = plan.devices[device_id][0]
        if mode == "meter":
            meter[site_id][quarter] = meter[site_id].get(quarter, 0.0) + kwh
        else:
            devices[site_id][quarter] += kwh
    energy: dict[int, dict[datetime, Decimal]] = {}
    for site_id in ids:
        quarters = {**devices.get(site_id, {}), **meter.get(site_id, {})}
        energy[site_id] = {q: Decimal(repr(kwh)) for q, kwh in quarters.items()}
    return energy


def baseline_excluded_dates(
    *, sites: Iterable[Site], start: datetime, end: datetime, event_id: int
) -> dict[int, set[date]]:
    """For each site, its local dates within [start, end) that a baseline must skip: those
    touched by an outage at the site, or by another event the site was invited to that took
    place (became active, even if cancelled later)."""
    sites = list(sites)
    zones = {site.pk: zoneinfo.ZoneInfo(site.timezone) for site in sites}
    excluded: dict[int, set[date]] = {site.pk: set() for site in sites}
    now = timezone.now()
    for site_id, spans in site_outage_spans(site_ids=zones, start=start, end=end).items():
        for started_at, ended_at in spans:
            excluded[site_id] |= local_dates(started_at, ended_at or max(now, end), zones[site_id])
    took_place = EventStatusChange.objects.filter(status=EventStatus.ACTIVE).values("event_id")
    events = (
        Event.objects.filter(
            pk__in=took_place, start__lt=end, end__gt=start, invitations__site_id__in=list(zones)
        )
        .exclude(pk=event_id)
        .values_list("invitations__site_id", "start", "end")
    )
    for site_id, event_start, event_end in events:
        excluded[site_id] |= local_dates(event_start, event_end, zones[site_id])
    return excluded


def event_settlement_window(*, event: Event) -> tuple[datetime, datetime] | None:
    """The window an event is settled over: its whole window once completed; from its start to
    the instant it was cancelled when it was cancelled while active; None when there is nothing
    to settle (scheduled, active, or cancelled before it ever became active)."""
    if event.status == EventStatus.COMPLETED:
        return event.start, event.end
    if event.status != EventStatus.CANCELLED:
        return None
    changes = dict(
        EventStatusChange.objects.filter(
            event=event, status__in=[EventStatus.ACTIVE, EventStatus.CANCELLED]
        ).values_list("status", "at")
    )
    cancelled_at = changes.get(EventStatus.CANCELLED)
    if EventStatus.ACTIVE not in changes or cancelled_at is None or cancelled_at <= event.start:
        return None
    return event.start, min(cancelled_at, event.end)


def event_ids_due(*, now: datetime) -> list[int]:
    """Events whose next transition is due: scheduled ones whose start has come, active ones
    whose end has."""
    return list(
        Event.objects.filter(
            Q(status=EventStatus.SCHEDULED, start__lte=now)
            | Q(status=EventStatus.ACTIVE, end__lte=now)
        )
        .order_by("start")
        .values_list("pk", flat=True)
    )


def program_list() -> QuerySet[Program]:
    return Program.objects.prefetch_related(
        Prefetch("eligible_sites", Site.objects.only("pk")),
        Prefetch("eligible_feeders", Feeder.objects.only("pk")),
    )


def event_list(*, user: AbstractBaseUser) -> QuerySet[Event]:
    """Operators see every event; a resident those that invited one of their sites."""
    events = Event.objects.prefetch_related(
        Prefetch("target_sites", Site.objects.only("pk")),
        Prefetch("target_feeders", Feeder.objects.only("pk")),
    )
    if registry.user_is_operator(user):
        return events
    return events.filter(pk__in=Invitation.objects.filter(site__residents=user).values("event_id"))


def invitation_list(*, user: AbstractBaseUser) -> QuerySet[Invitation]:
    """Operators see every invitation; a resident their own sites'."""
    invitations = Invitation.objects.all()
    if registry.user_is_operator(user):
        return invitations
    return invitations.filter(site__residents=user)


def event_report(*, event: Event, user: AbstractBaseUser) -> dict:
    """The event's settlement per site and its totals, and the commands it sent each device with
    their status, limited to the sites `user` may see."""
    visible = registry.site_list(user=user).prefetch_related(None).values("pk")
    settlements = list(
        SettlementResult.objects.filter(event=event, site__in=visible).order_by("site_id")
    )
    commands = list(
        DispatchedCommand.objects.filter(event=event, site__in=visible)
        .select_related("device", "command")
        .order_by("site_id", "device_id", "created_at")
    )
    delivered = sum((r.delivered_kwh for r in settlements), Decimal(0))
    rewards: dict[str, Decimal] = defaultdict(Decimal)
    for result in settlements:
        rewards[result.currency] += result.reward
    return {
        "event": event.pk,
        "status": event.status,
        "settled": bool(settlements),
        "sites": settlements,
        "totals": {
            "sites": len(settlements),
            "sites_paid": sum(1 for r in settlements if r.reward > 0),
            "delivered_kwh": delivered,
            "rewards": sorted(rewards.items()),
        },
        "commands": commands,
    }
