"""Reads of demand-response programs and events, and of what settlement needs from other apps."""

import zoneinfo
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db.models import Count, Prefetch, Q, QuerySet
from django.utils import timezone

from demand_response import baseline
from demand_response.baseline import local_dates
from demand_response.models import (
    DispatchedCommand,
    Event,
    EventStatus,
    EventStatusChange,
    Invitation,
    InvitationStatus,
    Program,
    SettlementResult,
)
from devices import selectors as registry
from devices.models import Feeder, Sensor, Site
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


def event_instants_near(*, now: datetime, horizon: timedelta) -> list[tuple[int, list[datetime]]]:
    """Events with a transition still to come within `horizon` of `now`: scheduled ones by their
    start and end, active ones by their end; (id, those instants) each."""
    until = now + horizon
    rows = (
        Event.objects.filter(
            Q(status=EventStatus.SCHEDULED, start__gt=now, start__lte=until)
            | Q(status__in=[EventStatus.SCHEDULED, EventStatus.ACTIVE], end__gt=now, end__lte=until)
        )
        .order_by("start")
        .values_list("pk", "start", "end")
    )
    return [(pk, [start, end]) for pk, start, end in rows]


def event_ids_randomizing() -> list[int]:
    """Active events with a randomized start: sites' curtails may still be to send."""
    return list(
        Event.objects.filter(status=EventStatus.ACTIVE, randomization_s__gt=0)
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
    events = Event.objects.select_related("vtn_source").prefetch_related(
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
        SettlementResult.objects.filter(event=event, site__in=visible)
        .select_related("site")
        .order_by("site_id")
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


def event_list_with_counts() -> QuerySet[Event]:
    """Every event, newest first, with its program and how many sites it invited and how many
    opted in and out, and the VTN event it came from if any (operators' events page: one
    query)."""
    return Event.objects.select_related("program", "vtn_source__connection").annotate(
        invited=Count("invitations"),
        opted_in=Count("invitations", filter=Q(invitations__status=InvitationStatus.OPTED_IN)),
        opted_out=Count("invitations", filter=Q(invitations__status=InvitationStatus.OPTED_OUT)),
    )


def event_invitations(*, event: Event) -> list[Invitation]:
    """The event's invitations with their sites, by site name."""
    return list(
        Invitation.objects.filter(event=event).select_related("site").order_by("site__name")
    )


def invitation_counts(invitations: Iterable[Invitation]) -> dict[str, int]:
    """How many invitations are in each status (every status named, 0 if none)."""
    counts = dict.fromkeys(InvitationStatus.values, 0)
    for invitation in invitations:
        counts[invitation.status] += 1
    return counts


@dataclass(frozen=True)
class SiteEventEnergy:
    """One site's energy around an event: its baseline, that baseline per quarter-hour of the
    window (`curve`, empty without a baseline) and the site's kWh per quarter-hour (`actual`,
    up to the instant asked, the last quarter-hour partly)."""

    baseline: baseline.Baseline
    curve: dict[datetime, Decimal]
    actual: dict[datetime, Decimal]


# A site's baseline for an event is kept this long once it can no longer change (its day-of
# adjustment window has passed): the pages ask for it again and again while the event runs.
BASELINE_KEPT_S = 15 * 60
# The operator's chart shows this long before the start, so the drop at the start shows.
CHART_LEAD = timedelta(hours=1)


def event_sites_energy(
    *, event: Event, sites: Iterable[Site], now: datetime
) -> dict[int, SiteEventEnergy]:
    """Each site's `SiteEventEnergy` for `event` as of `now`: the baseline as settlement reads
    it (the same clean days, the same day-of adjustment), and the site's energy from
    `CHART_LEAD` before the start until `now` (or the end). A fixed number of queries for all
    sites; baselines come from the cache once their data is complete (`BASELINE_KEPT_S`:
    readings of baseline days that arrive later show on the pages after that)."""
    sites = list(sites)
    if not sites:
        return {}
    # The event as it is now: a changed window is another baseline (ids may be used again by
    # another database, the creation instant is not).
    version = "-".join(f"{t.timestamp():.6f}" for t in (event.created_at, event.start, event.end))
    keys = {site.pk: f"dr:baseline:{event.pk}:{version}:{site.pk}" for site in sites}
    kept = cache.get_many(list(keys.values()))
    baselines = {site_id: kept[key] for site_id, key in keys.items() if key in kept}
    if missing := [site for site in sites if site.pk not in baselines]:
        made = _baselines(event, missing)
        if now >= event.start - baseline.ADJUSTMENT_GAP:
            cache.set_many({keys[site_id]: pair for site_id, pair in made.items()}, BASELINE_KEPT_S)
        baselines |= made
    lo = event.start - CHART_LEAD
    lo -= (lo - baseline.ORIGIN) % baseline.INTERVAL
    hi = min(now, event.end)
    actual = (
        site_quarter_energy(site_ids=list(keys), lo=lo, hi=hi)
        if hi > lo
        else {site_id: {} for site_id in keys}  # the chart's span is still to come
    )
    return {site_id: SiteEventEnergy(*baselines[site_id], actual[site_id]) for site_id in keys}


def _baselines(
    event: Event, sites: list[Site]
) -> dict[int, tuple[baseline.Baseline, dict[datetime, Decimal]]]:
    """Each site's baseline for the event and its curve, from the data before the start."""
    zones = {site.pk: zoneinfo.ZoneInfo(site.timezone) for site in sites}
    earliest = min(baseline.lookback_start(event.start, tz) for tz in zones.values())
    energy = site_quarter_energy(site_ids=list(zones), lo=earliest, hi=event.start)
    excluded = baseline_excluded_dates(
        sites=sites, start=earliest, end=event.start, event_id=event.pk
    )
    made = {}
    for site_id, tz in zones.items():
        window = {"start": event.start, "end": event.end, "tz": tz}
        base = baseline.ten_in_ten(energy=energy[site_id], excluded=excluded[site_id], **window)
        curve = baseline.ten_in_ten_curve(energy=energy[site_id], base=base, **window)
        made[site_id] = (base, curve)
    return made


def _share(lo: datetime, hi: datetime, of_lo: datetime, of_hi: datetime) -> Decimal:
    """The part of [of_lo, of_hi) that [lo, hi) covers, 0 to 1."""
    inside = max(min(hi, of_hi) - max(lo, of_lo), timedelta(0))
    whole = of_hi - of_lo
    return Decimal(inside // timedelta.resolution) / Decimal(whole // timedelta.resolution)


def site_event_saving(*, event: Event, site: Site, now: datetime) -> dict | None:
    """The kWh the site saved so far in the event: its baseline kWh over the event's whole
    quarter-hours gone by `now` minus what it used in them. None before the first such
    quarter-hour with data, or without a baseline.

    An approximation while the event runs (settlement computes the exact figure afterwards):
    the quarter-hour under way is left out (a meter reports a quarter-hour's energy at its
    start, a counter so far: neither says how much of it is gone), so are quarter-hours for
    which the site has no data, on both sides; the baseline carries the day-of adjustment
    settlement will use, known before the start."""
    if now <= event.start:
        return None
    energy = event_sites_energy(event=event, sites=[site], now=now)[site.pk]
    if not energy.baseline.sufficient:
        return None
    base_kwh = actual_kwh = Decimal(0)
    counted = 0
    for quarter, kwh in energy.curve.items():
        q_end = quarter + baseline.INTERVAL
        lo, hi = max(quarter, event.start), min(q_end, event.end)
        actual = energy.actual.get(quarter)
        if actual is None or hi > now:
            continue
        base_kwh += kwh
        actual_kwh += actual * _share(lo, hi, quarter, q_end)  # the event's part of it
        counted += 1
    if not counted:
        return None
    return {
        "baseline_kwh": base_kwh,
        "actual_kwh": actual_kwh,
        "saved_kwh": max(base_kwh - actual_kwh, Decimal(0)),
    }


def event_load_chart(*, event: Event, now: datetime) -> dict:
    """The invited sites' aggregate load (kW per whole quarter-hour gone) against their aggregate
    baseline over the event's window, as plain numbers for the page's chart, and what the page
    needs to add the live feed's readings: which power sensor of which device counts, and its
    factor to W (a site's meter where it has one with a power sensor, else its devices')."""
    sites = list(Site.objects.filter(dr_invitations__event=event).order_by("pk"))
    energy = event_sites_energy(event=event, sites=sites, now=now)
    q0 = event.start - CHART_LEAD
    q0 -= (q0 - baseline.ORIGIN) % baseline.INTERVAL
    quarters, baseline_kw, actual_kw = [], [], []
    t = q0
    while t < event.end:
        q_end = t + baseline.INTERVAL
        base = [e.curve[t] for e in energy.values() if t in e.curve]
        lo, hi = max(t, event.start), min(q_end, event.end)
        baseline_kw.append(float(sum(base) / _hours(lo, hi)) if base else None)
        # Whole quarter-hours only (see `site_event_saving`): the live readings show the rest.
        used = [e.actual[t] for e in energy.values() if t in e.actual] if q_end <= now else []
        actual_kw.append(float(sum(used) / _hours(t, q_end)) if used else None)
        quarters.append(t.timestamp())
        t = q_end
    return {
        "start": event.start.timestamp(),
        "end": event.end.timestamp(),
        "quarters": quarters,
        "baseline_kw": baseline_kw,
        "actual_kw": actual_kw,
        "sites": len(sites),
        "sites_with_baseline": sum(1 for e in energy.values() if e.baseline.sufficient),
        "sensors": _live_power_sensors([site.pk for site in sites]),
    }


def _hours(lo: datetime, hi: datetime) -> Decimal:
    return Decimal((hi - lo) // timedelta.resolution) / Decimal(
        timedelta(hours=1) // timedelta.resolution
    )


def _live_power_sensors(site_ids: list[int]) -> dict[str, list]:
    """device uid -> [site id, power sensor key, factor to W] of the sensors whose live readings
    add up to the sites' load: a site's meter's if it has a meter measuring power (the devices
    behind it would count twice), else every device's."""
    plan = queries.energy_plan(site_ids=site_ids)
    sensors = list(
        Sensor.objects.filter(pk__in=plan.power_sensors).values_list(
            "pk", "key", "device__uid", "device__kind", "device__site_id"
        )
    )
    metered = {site for *_, kind, site in sensors if kind == "meter"}
    return {
        uid: [site, key, plan.factors[pk]]
        for pk, key, uid, kind, site in sensors
        if site not in metered or kind == "meter"
    }


# A finished event stays on the resident's dashboard this long, with its result.
RECENT_END = timedelta(days=7)


@dataclass
class InvitationPanel:
    """What a resident's dashboard shows of one invitation: the event, the answer, while the
    event runs the kWh saved so far (opted in), afterwards the site's settlement."""

    invitation: Invitation
    saving: dict | None
    result: SettlementResult | None

    @property
    def event(self) -> Event:
        return self.invitation.event


def site_dr_panels(*, site_ids: list[int], now: datetime) -> dict[int, list[InvitationPanel]]:
    """Site id -> its invitations to events to come, under way, or ended within RECENT_END
    (oldest first), in three queries plus the energy reads of the events under way."""
    invitations = list(
        Invitation.objects.filter(site_id__in=site_ids)
        .filter(
            Q(event__status__in=[EventStatus.SCHEDULED, EventStatus.ACTIVE])
            | Q(event__end__gte=now - RECENT_END)
        )
        .select_related("event__program", "site")
        .order_by("event__start", "event_id")
    )
    results = {
        (r.event_id, r.site_id): r
        for r in SettlementResult.objects.filter(
            site_id__in=site_ids, event_id__in={i.event_id for i in invitations}
        )
    }
    panels: dict[int, list[InvitationPanel]] = {site_id: [] for site_id in site_ids}
    for invitation in invitations:
        saving = None
        if (
            invitation.event.status == EventStatus.ACTIVE
            and invitation.status == InvitationStatus.OPTED_IN
        ):
            saving = site_event_saving(event=invitation.event, site=invitation.site, now=now)
        result = results.get((invitation.event_id, invitation.site_id))
        panels[invitation.site_id].append(InvitationPanel(invitation, saving, result))
    return panels
