"""Server-rendered pages: a site's energy history (residents) and grid analytics (operators).

The pages are frames: they check who may see what and which period is asked for, with no query
over readings, and the browser fetches the figures from the JSON API (`history_apis.py`) and
draws them, so a page never waits on a big query.
"""

import zoneinfo
from datetime import date, timedelta
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import dateformat, timezone

from devices.selectors import resident_sites_with_devices, user_is_operator
from telemetry import queries

PERIOD_NAMES = {"day": "Day", "week": "Week", "month": "Month", "year": "Year"}


def future_message(focus: date) -> str:
    return f"{focus.isoformat()} is in the future; nothing measured yet."


def _problem(request, message: str, status: int, back: str):
    return render(
        request, "telemetry/problem.html", {"message": message, "back": back}, status=status
    )


def period_title(period: queries.Period) -> str:
    if period.kind == "day":
        return dateformat.format(period.first, "l j F Y")
    if period.kind == "week":
        last = period.end - timedelta(days=1)
        start = "j F" if period.first.year == last.year else "j F Y"
        if period.first.month == last.month:
            start = "j"
        first, last = dateformat.format(period.first, start), dateformat.format(last, "j F Y")
        return f"{first} \N{EN DASH} {last}"
    if period.kind == "month":
        return dateformat.format(period.first, "F Y")
    return str(period.first.year)


def _link(path: str, **params) -> str:
    return f"{path}?{urlencode(params)}"


def _navigation(path: str, period: queries.Period, focus: date, today: date, kinds) -> dict:
    """Links to the same date in each kind of period, the periods before and after (none
    after the one holding today) and back to today."""
    previous, following = period.previous(), period.next()
    return {
        "tabs": [
            {
                "kind": kind,
                "label": PERIOD_NAMES[kind],
                "url": _link(path, period=kind, date=focus.isoformat()),
                "active": kind == period.kind,
            }
            for kind in kinds
        ],
        "previous_url": _link(path, period=period.kind, date=previous.first.isoformat())
        if previous.first >= queries.EARLIEST_DAY
        else None,
        "next_url": _link(path, period=period.kind, date=following.first.isoformat())
        if following.first <= today
        else None,
        "today_url": None
        if period.first <= today < period.end
        else _link(path, period=period.kind, date=today.isoformat()),
        "unit_name": PERIOD_NAMES[period.kind].lower(),
    }


@login_required
def history_index(request):
    """A resident's way into the history: their home's page, or a choice of their homes."""
    sites = list(resident_sites_with_devices(user=request.user).prefetch_related(None))
    if len(sites) == 1:
        return redirect("site-history", site_id=sites[0].id)
    return render(request, "telemetry/history_index.html", {"sites": sites})


@login_required
def site_history(request, site_id: int):
    site = queries.site_for_user(user=request.user, site_id=site_id)
    if site is None:
        return _problem(
            request,
            "This home does not exist or is not one of yours.",
            404,
            reverse("dashboard"),
        )
    tz = zoneinfo.ZoneInfo(site.timezone)
    now = timezone.now()
    today = now.astimezone(tz).date()
    path = reverse("site-history", args=[site.id])
    try:
        period = queries.period_parse(
            kind=request.GET.get("period"), day=request.GET.get("date"), today=today
        )
    except queries.PeriodError as exc:
        return _problem(request, str(exc), 400, path)
    focus = date.fromisoformat(request.GET["date"]) if request.GET.get("date") else today
    api = reverse("api-site-energy", args=[site.id])
    query = {"period": period.kind, "date": period.first.isoformat()}
    context = {
        "site": site,
        "period": period,
        "title": period_title(period),
        "focus": focus,
        "future": future_message(focus) if period.is_future(now, tz) else None,
        "api_url": _link(api, **query),
        "csv_url": _link(api, **query, format="csv"),
        **_navigation(path, period, focus, today, tuple(PERIOD_NAMES)),
    }
    return render(request, "telemetry/history.html", context)


@login_required
def analytics(request):
    if not user_is_operator(request.user):
        raise PermissionDenied("The analytics page is for operators.")
    now = timezone.now()
    today = timezone.localdate(now)
    path = reverse("analytics")
    try:
        period = queries.period_parse(
            kind=request.GET.get("period"),
            day=request.GET.get("date"),
            today=today,
            kinds=queries.ANALYTICS_PERIODS,
        )
    except queries.PeriodError as exc:
        return _problem(request, str(exc), 400, path)
    focus = date.fromisoformat(request.GET["date"]) if request.GET.get("date") else today
    query = {"period": period.kind, "date": period.first.isoformat()}
    context = {
        "period": period,
        "title": period_title(period),
        "focus": focus,
        "future": future_message(focus) if period.is_future(now) else None,
        "grid_unit": queries.grid_unit(period.kind),
        "energy_url": _link(reverse("api-analytics-energy"), **query),
        "not_reporting_url": reverse("api-analytics-not-reporting"),
        **_navigation(path, period, focus, today, queries.ANALYTICS_PERIODS),
    }
    return render(request, "telemetry/analytics.html", context)
