"""Server-rendered demand-response pages: operators' events (list, create, cancel, an event's
live load against its baseline, its report and CSV), and the invitations panel of a resident's
dashboard (answer, time left, kWh saved so far, result and reward). Thin: the selectors read,
the services write."""

import csv
from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from demand_response import selectors, services
from demand_response.forms import EventForm
from demand_response.models import AnsweredBy, Event, EventStatus
from demand_response.openadr import selectors as openadr_selectors
from devices import selectors as registry
from outages.credit_rules import round_money

# The events page lists this many, newest first.
EVENTS_SHOWN = 200


def _operator(request) -> None:
    if not registry.user_is_operator(request.user):
        raise PermissionDenied("The demand-response events pages are for operators.")


def _event(event_id: int) -> Event:
    return get_object_or_404(Event.objects.select_related("program"), pk=event_id)


@login_required
def events(request):
    """Operators: the events, newest first, and the form to schedule one."""
    _operator(request)
    form = EventForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            event = services.event_create(**form.service_arguments())
        except ValidationError as error:
            form.add_service_errors(error)
        else:
            messages.success(request, f"Event {event.pk} scheduled.")
            return redirect("dr-page-event", event_id=event.pk)
    context = {
        "form": form,
        "events": selectors.event_list_with_counts()[:EVENTS_SHOWN],
        "time_zone": timezone.get_current_timezone_name(),
        "vtn_connections": openadr_selectors.connections_overview(),
    }
    return render(
        request, "demand_response/events.html", context, status=400 if form.errors else 200
    )


def _summary(request, event: Event) -> dict:
    invitations = selectors.event_invitations(event=event)
    return {
        "event": event,
        "invitations": invitations,
        "counts": selectors.invitation_counts(invitations),
        "report": selectors.event_report(event=event, user=request.user),
        "cancellable": event.status in (EventStatus.SCHEDULED, EventStatus.ACTIVE),
    }


@login_required
def event(request, event_id: int):
    """Operators: one event, its answers and commands, the invited sites' load against their
    baseline (live while it runs), and once settled its report."""
    _operator(request)
    event = _event(event_id)
    context = _summary(request, event) | {
        "chart": selectors.event_load_chart(event=event, now=timezone.now()),
        "vtn_source": openadr_selectors.vtn_sources(event_ids=[event.pk]).get(event.pk),
    }
    return render(request, "demand_response/event.html", context)


@login_required
def event_summary(request, event_id: int):
    """The event page's answers, commands and report, fetched afresh when they change."""
    _operator(request)
    return render(
        request, "demand_response/_event_summary.html", _summary(request, _event(event_id))
    )


@login_required
@require_POST
def event_cancel(request, event_id: int):
    _operator(request)
    event = _event(event_id)
    try:
        services.event_cancel(event_id=event.pk)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Event {event.pk} cancelled.")
    return redirect("dr-page-event", event_id=event.pk)


REPORT_COLUMNS = [
    "site_id", "site", "status", "baseline_kwh", "adjustment", "actual_kwh", "delivered_kwh",
    "reward", "currency", "baseline_days",
]  # fmt: skip


@login_required
def event_report_csv(request, event_id: int):
    """Operators: the event's settlement per site and a total row, as CSV."""
    _operator(request)
    event = _event(event_id)
    report = selectors.event_report(event=event, user=request.user)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="dr-event-{event.pk}-report.csv"'
    writer = csv.writer(response)
    writer.writerow(REPORT_COLUMNS)
    for row in report["sites"]:
        writer.writerow(
            [
                row.site_id,
                row.site.name,
                row.status,
                _blank(row.baseline_kwh),
                _blank(row.adjustment),
                _blank(row.actual_kwh),
                row.delivered_kwh,
                round_money(row.reward, row.currency),
                row.currency,
                len(row.days_used),
            ]
        )
    totals = report["totals"]
    for currency, amount in totals["rewards"] or [(event.program.currency, Decimal(0))]:
        writer.writerow(
            ["", "TOTAL", f"{totals['sites_paid']} of {totals['sites']} sites paid", "", "", "",
             totals["delivered_kwh"], round_money(amount, currency), currency, ""]
        )  # fmt: skip
    return response


def _blank(value) -> object:
    return "" if value is None else value


@login_required
def site_panel(request, site_id: int):
    """One site's invitations panel, fetched afresh by the dashboard when an event changes."""
    site = registry.site_list(user=request.user).filter(pk=site_id).first()
    if site is None:
        raise Http404("No such site of yours.")
    panels = selectors.site_dr_panels(site_ids=[site.pk], now=timezone.now())
    return render(
        request, "demand_response/_site_panel.html", {"site": site, "panels": panels[site.pk]}
    )


@login_required
@require_POST
def invitation_respond(request, invitation_id: int):
    """A resident opts one of their sites in or out of an event, from the dashboard."""
    invitation = (
        selectors.invitation_list(user=request.user)
        .filter(pk=invitation_id, site__residents=request.user)
        .first()
    )
    if invitation is None:
        raise Http404("No such invitation of yours.")
    try:
        services.invitation_respond(
            invitation_id=invitation.pk,
            response=request.POST.get("response", ""),
            by=AnsweredBy.RESIDENT,
            user=request.user,
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        answer = "in to" if request.POST["response"] == "opt_in" else "out of"
        messages.success(request, f"You opted {answer} event {invitation.event_id}.")
    return redirect("dashboard")
