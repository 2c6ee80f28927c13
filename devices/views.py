"""Server-rendered pages: the resident's dashboard and the operators' fleet page."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render

from devices import selectors
from devices.forms import FleetFilterForm


@login_required
def home(request):
    return redirect("fleet" if selectors.user_is_operator(request.user) else "dashboard")


@login_required
def dashboard(request):
    sites = list(selectors.resident_sites_with_devices(user=request.user))
    relays = selectors.relay_states(
        device_ids=[device.id for site in sites for device in site.devices.all()]
    )
    return render(request, "devices/dashboard.html", {"sites": sites, "relays": relays})


@login_required
def fleet(request):
    if not selectors.user_is_operator(request.user):
        raise PermissionDenied("The fleet page is for operators.")
    form = FleetFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    devices = selectors.fleet_devices(
        online=filters.get("online"),
        feeder_id=filters["feeder"].id if filters.get("feeder") else None,
        site_id=filters["site"].id if filters.get("site") else None,
        kind=filters.get("kind") or None,
        search=filters.get("q") or "",
    )
    page = selectors.fleet_page(devices=devices, number=request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "counts": selectors.fleet_counts(),
        "query": query.urlencode(),
    }
    return render(request, "devices/fleet.html", context)


@login_required
def device_detail(request, uid: str):
    """One device: its readings live, the last hour of its power, its relay and its commands; a
    resident's own devices, every device for operators."""
    device = selectors.device_for_user(user=request.user, uid=uid)
    if device is None:
        raise Http404("No device with this id is yours to see.")
    context = {
        "device": device,
        "commands": selectors.recent_commands(device_id=device.id),
        "relays": selectors.relay_states(device_ids=[device.id]),
        "is_operator_view": selectors.user_is_operator(request.user),
    }
    return render(request, "devices/device.html", context)
