"""Server-rendered outage pages: a resident's outage banner and history, operators' open and
grid outages with the reliability indices. Thin: the selectors read, the templates show."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Sum
from django.http import Http404
from django.shortcuts import render
from django.utils import timezone
from django.utils.dateparse import parse_date

from devices import selectors as registry
from outages import selectors
from outages.credit_rules import round_money
from outages.models import CreditEntry, Outage, OutageKind, OutageStatus

# An ended cut stays on the dashboard this long, with what it paid.
RECENT_END = timedelta(hours=24)
# The indices' default period, ending now.
DEFAULT_PERIOD = timedelta(days=365)
# A confirmed or dismissed suspected outage stays on the fleet page this long.
RECENT_SUSPICION = timedelta(minutes=30)


@dataclass
class SitePanel:
    """What the dashboard shows of one site's outages: the open cut with its live quote, else
    the last cut to end (within RECENT_END) with what the ledger paid; and the site's balance."""

    site_id: int
    open: Outage | None
    ended: Outage | None
    credits: dict[int, selectors.OutageCredit]
    balance: dict[str, Decimal]


def site_panels(site_ids: list[int], *, now: datetime) -> dict[int, SitePanel]:
    """The outage panel of each site, in at most five queries whatever the number of sites."""
    outages = list(
        Outage.objects.filter(site_id__in=site_ids, kind=OutageKind.SITE)
        .exclude(status=OutageStatus.VOID)
        .exclude(ended_at__lt=now - RECENT_END)
        .select_related("site", "credit_policy")
        .order_by("-started_at")
    )
    credits = selectors.outage_credits(outages, now=now)
    balances = _balances_by_site(site_ids)
    panels = {}
    for site_id in site_ids:
        mine = [o for o in outages if o.site_id == site_id]
        panels[site_id] = SitePanel(
            site_id=site_id,
            open=next((o for o in mine if o.status == OutageStatus.OPEN), None),
            ended=next((o for o in mine if o.status == OutageStatus.ENDED), None),
            credits=credits,
            balance=balances.get(site_id, {}),
        )
    return panels


def _balances_by_site(site_ids: list[int]) -> dict[int, dict[str, Decimal]]:
    # `selectors.credit_balance` per site, in one query for all the dashboard's sites.
    totals: dict[int, dict[str, Decimal]] = {}
    rows = (
        CreditEntry.objects.filter(site_id__in=site_ids)
        .values("site_id", "currency")
        .annotate(total=Sum("amount"))
        .order_by("site_id", "currency")
    )
    for row in rows:
        if row["total"] != 0:
            totals.setdefault(row["site_id"], {})[row["currency"]] = round_money(
                row["total"], row["currency"]
            )
    return totals


def open_outages(*, now: datetime) -> dict:
    """Operators' view of the cuts going on: open outages of every kind, site outages grouped
    under their feeder (or 'no feeder'), and the suspected outages open or lately resolved, in
    five queries."""
    rows = list(
        Outage.objects.filter(status=OutageStatus.OPEN)
        .select_related("site__feeder", "feeder__transformer", "transformer")
        .order_by("started_at", "id")
    )
    by_feeder: dict[str, list[Outage]] = {}
    for outage in rows:
        if outage.kind == OutageKind.SITE:
            feeder = outage.site.feeder
            by_feeder.setdefault(feeder.code if feeder else "", []).append(outage)
    return {
        "transformers": [o for o in rows if o.kind == OutageKind.TRANSFORMER],
        "feeders": [o for o in rows if o.kind == OutageKind.FEEDER],
        "sites_by_feeder": sorted(by_feeder.items(), key=lambda item: (item[0] == "", item[0])),
        "suspected": selectors.suspected_outages_shown(now=now, recent=RECENT_SUSPICION),
        "now": now,
    }


def _operator(request) -> None:
    if not registry.user_is_operator(request.user):
        raise PermissionDenied("This page is for operators.")


@login_required
def site_panel(request, site_id: int):
    """One site's outage panel, fetched afresh by the dashboard when the site's outages change."""
    site = registry.site_list(user=request.user).filter(pk=site_id).first()
    if site is None:
        raise Http404("No such site of yours.")
    panel = site_panels([site_id], now=timezone.now())[site_id]
    return render(request, "outages/_banner.html", {"site": site, "panel": panel})


@login_required
def open_outages_panel(request):
    """The fleet page's open outages, fetched afresh when outages change."""
    _operator(request)
    return render(request, "outages/_open_outages.html", open_outages(now=timezone.now()))


@login_required
def history(request):
    """The outages of the user's sites (all sites for operators), newest first, with what each
    paid, and the balance per currency."""
    now = timezone.now()
    outages = list(
        selectors.outage_list(user=request.user)
        .filter(kind=OutageKind.SITE)
        .exclude(status=OutageStatus.VOID)
        .order_by("-started_at", "-id")[:500]
    )
    credits = selectors.outage_credits(outages, now=now)
    site_ids = list(registry.site_list(user=request.user).values_list("id", flat=True))
    context = {
        "rows": [(outage, credits[outage.pk]) for outage in outages],
        "balance": selectors.credit_balance(site_ids),
        "several_homes": len(site_ids) > 1,
        "momentary_threshold": settings.OUTAGE_MOMENTARY_THRESHOLD,
        "now": now,
    }
    return render(request, "outages/history.html", context)


def _given_day(request, name: str, label: str, problems: list[str]):
    """The day a query parameter gives (YYYY-MM-DD), or None, with a problem in plain words
    when it is not one (the default period is shown instead)."""
    text = (request.GET.get(name) or "").strip()
    if not text:
        return None
    try:
        day = parse_date(text)
    except ValueError:
        day = None
    if day is None:
        problems.append(
            f"{label}: {text!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-10-25."
        )
    return day


@login_required
def grid(request):
    """Operators: grid (feeder and transformer) outages with sites affected and customer-minutes,
    and each feeder's reliability indices over a chosen period (default the last 365 days)."""
    _operator(request)
    now = timezone.now()
    problems: list[str] = []
    start_day = _given_day(request, "start", "From", problems)
    end_day = _given_day(request, "end", "To", problems)
    end = _day_start(end_day) + timedelta(days=1) if end_day else now
    start = _day_start(start_day) if start_day else end - DEFAULT_PERIOD
    if start >= end:
        start = end - DEFAULT_PERIOD
    grid_outages = list(
        Outage.objects.filter(kind__in=[OutageKind.FEEDER, OutageKind.TRANSFORMER])
        .exclude(status=OutageStatus.VOID)
        .select_related("feeder", "transformer")
        .order_by("-started_at", "-id")[:200]
    )
    feeders = list(registry.feeder_list(user=request.user).order_by("code"))
    # One indices computation per feeder (two queries each): a page of tens of feeders.
    indices = [
        (feeder, selectors.reliability(feeder_id=feeder.pk, start=start, end=end, now=now))
        for feeder in feeders
    ]
    context = {
        "problems": problems,
        "grid_outages": grid_outages,
        "indices": indices,
        "start": start,
        "end": end,
        "end_day": (end - timedelta(microseconds=1)).date(),
        "now": now,
    }
    return render(request, "outages/grid.html", context)


def _day_start(day) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.get_current_timezone())
