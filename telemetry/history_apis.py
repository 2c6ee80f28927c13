"""JSON (and CSV) behind the history and analytics pages: a site's energy per hour, day or month
of a period with its cost, the previous period and the breakdown by device and room; for
operators, the grid's energy by feeder and transformer, the top sites and the devices that have
stopped reporting.

Periods are `?period=day|week|month|year&date=YYYY-MM-DD` (the period containing that date,
today by default) in the site's local time; a DST day has 23 or 25 hours.

Figures add up as given: each row (slot, device, room, a site's local day in the grid) is rounded
once, energy to the watt-hour (0.001 kWh) and money to the currency's minor unit, and every
total is the sum of its rows as given (`queries.shown_kwh`). A period wholly in the future
answers 200 with `future: true` (and nothing measured), so a client can tell "not yet" from
"nothing used".
"""

import zoneinfo
from datetime import datetime, timedelta
from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from django.urls import reverse
from django.utils import timezone

from devices.permissions import IsOperator
from telemetry import queries
from telemetry.query_apis import SensorQueryApi, iso
from telemetry.serializers import GridEnergySerializer, NotReportingSerializer, SiteEnergySerializer


def period_from(request, *, today, kinds: tuple[str, ...] = tuple(queries.PERIOD_UNITS)):
    """The period `?period=&date=` ask for, or a 400 naming the parameter that was wrong."""
    try:
        return queries.period_parse(
            kind=request.query_params.get("period"),
            day=request.query_params.get("date"),
            today=today,
            kinds=kinds,
        )
    except queries.PeriodError as exc:
        raise ValidationError({exc.field: [str(exc)]}) from None


def kwh(value: Decimal | None) -> float | None:
    """Energy as shown (already rounded, `queries.shown_kwh`), as a JSON number."""
    return None if value is None else float(value)


def amount(value: Decimal | None) -> str | None:
    """Money as an exact decimal string, e.g. "4.8000"."""
    return None if value is None else str(value)


def _hour_name(start: datetime, end: datetime, zone_shown: bool) -> str:
    if start.utcoffset() != end.utcoffset():
        return f"{start:%H:%M %Z}\N{EN DASH}{end:%H:%M %Z}"
    return f"{start:%H:%M}\N{EN DASH}{end:%H:%M}" + (f" {start:%Z}" if zone_shown else "")


def slot_labels(slots: list[dict], unit: str) -> list[tuple[str, str]]:
    """(short label for a chart axis, full name) of each slot, in local time. The repeated
    hour of a day whose clocks go back is told apart by its zone abbreviation, and an hour
    across a clock change names both zones. Days and months may start with a date."""
    if unit == "hour":
        labels = [f"{slot['start']:%H:%M}" for slot in slots]
        repeated = {label for label in labels if labels.count(label) > 1}
        return [
            (
                f"{label} {slot['start']:%Z}" if label in repeated else label,
                _hour_name(slot["start"], slot["end"], label in repeated),
            )
            for slot, label in zip(slots, labels, strict=True)
        ]
    if unit == "day":
        days = [slot["start"] for slot in slots]
        return [(f"{d:%a} {d.day}", f"{d:%a} {d.day} {d:%b %Y}") for d in days]
    return [(f"{slot['start']:%b}", f"{slot['start']:%B %Y}") for slot in slots]


def _slots(slots: list[dict], unit: str) -> list[dict]:
    labels = slot_labels(slots, unit)
    return [
        {
            "start": slot["start"].isoformat(),
            "end": slot["end"].isoformat(),
            "label": label,
            "name": name,
            "energy_kwh": kwh(slot["energy_kwh"]),
            "cost": amount(slot["cost"]),
            "source": slot["source"],
        }
        for slot, (label, name) in zip(slots, labels, strict=True)
    ]


def _shares(rows: list[dict]) -> list[dict]:
    return [
        {
            **row,
            "energy_kwh": kwh(row["energy_kwh"]),
            "cost": amount(row["cost"]),
            "share_pct": None if row["share_pct"] is None else round(row["share_pct"], 2),
        }
        for row in rows
    ]


_SITE_ENERGY_PARAMETERS = [
    OpenApiParameter("period", str, enum=list(queries.PERIOD_UNITS), description="day"),
    OpenApiParameter("date", OpenApiTypes.DATE, description="a day of the period; today"),
]


@extend_schema(tags=["History"])
class SiteEnergyApi(SensorQueryApi):
    """Energy and cost of one site per hour (day), day (week, month) or month (year) of a
    period in its local time, with the previous period, the change and the breakdown by device
    and by room; `?format=csv` gives the slots as CSV. Each row is rounded once (energy to the
    watt-hour, money to the currency's minor unit) and every total is the sum of its rows as
    given. A period wholly in the future answers 200 with `future: true`. Residents: their own
    sites (any other answers 404); operators and staff: all."""

    # The sensor query API's base gives the CSV negotiation and JSON errors in either format.

    @extend_schema(parameters=_SITE_ENERGY_PARAMETERS, responses={200: SiteEnergySerializer})
    def get(self, request, site_id: int):
        site = queries.site_for_user(user=request.user, site_id=site_id)
        if site is None:
            raise NotFound(f"Site {site_id} not found, or not one of yours.")
        tz = zoneinfo.ZoneInfo(site.timezone)
        now = timezone.now()
        period = period_from(request, today=now.astimezone(tz).date())
        history = queries.site_history(site=site, period=period, now=now)
        slots = _slots(history["slots"], period.unit)
        if self.wants_csv(request):
            return self.csv(site, period, slots)
        previous = history["previous"]
        comparison = history["comparison"]
        lo, hi = period.bounds(tz)
        return Response(
            {
                "site": {
                    "id": site.id,
                    "name": site.name,
                    "timezone": site.timezone,
                    "currency": site.currency,
                    "tariff_per_kwh": amount(site.tariff_per_kwh),
                },
                "period": period.kind,
                "unit": period.unit,
                "date": period.first.isoformat(),
                "start": iso(lo, tz),
                "end": iso(hi, tz),
                "in_progress": history["in_progress"],
                "future": history["future"],
                "energy_kwh": kwh(history["energy_kwh"]),
                "cost": amount(history["cost"]),
                "results": slots,
                "previous": {
                    "date": previous["period"].first.isoformat(),
                    "energy_kwh": kwh(previous["energy_kwh"]),
                    "cost": amount(previous["cost"]),
                    "results": _slots(previous["slots"], period.unit),
                },
                "comparison": {
                    "basis": comparison["basis"],
                    "previous_kwh": kwh(comparison["previous_kwh"]),
                    "change_pct": None
                    if comparison["change_pct"] is None
                    else round(comparison["change_pct"], 1),
                },
                "devices": _shares(history["devices"]),
                "rooms": _shares(history["rooms"]),
                "unattributed_kwh": kwh(history["unattributed_kwh"]),
                "unattributed_cost": amount(history["unattributed_cost"]),
            }
        )

    def csv(self, site, period: queries.Period, slots: list[dict]) -> Response:
        rows = [
            {
                "start": slot["start"],
                "end": slot["end"],
                "energy_kwh": "" if slot["energy_kwh"] is None else slot["energy_kwh"],
                "cost": slot["cost"] or "",
                "currency": site.currency,
                "source": slot["source"] or "",
            }
            for slot in slots
        ]
        response = Response({"results": rows})
        name = f"energy-site{site.id}-{period.kind}-{period.first.isoformat()}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


@extend_schema(tags=["History"])
class OperatorApi(APIView):
    permission_classes = [IsAuthenticated, IsOperator]
    renderer_classes = api_settings.DEFAULT_RENDERER_CLASSES


def _grid_slots(slots: list[dict], unit: str) -> list[dict]:
    labels = slot_labels([{"start": slot["first"]} for slot in slots], unit)
    return [
        {
            "date": slot["first"].isoformat(),
            "end_date": (slot["end"] - timedelta(days=1)).isoformat(),
            "label": label,
            "name": name,
            "energy_kwh": kwh(slot["energy_kwh"]),
        }
        for slot, (label, name) in zip(slots, labels, strict=True)
    ]


class GridQuerySerializer(serializers.Serializer):
    top = serializers.IntegerField(min_value=1, max_value=100, default=10)


class GridEnergyApi(OperatorApi):
    """Energy of every site over a day, week, month or year (each site in its own local time)
    by day (by month for a year), by feeder and by transformer, and the top consuming sites.
    Each site's local day is rounded once to the watt-hour and every figure is a sum of those, so
    the days, the feeders, the transformers and the sites each add up to `energy_kwh`. A period
    that has begun nowhere yet answers 200 with `future: true`. Operators and staff only."""

    @extend_schema(
        parameters=[
            OpenApiParameter("period", str, enum=list(queries.ANALYTICS_PERIODS)),
            OpenApiParameter("date", OpenApiTypes.DATE, description="a day of the period"),
            OpenApiParameter("top", int, description="how many top sites, 1 to 100; 10"),
        ],
        responses={200: GridEnergySerializer},
    )
    def get(self, request):
        params = GridQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        period = period_from(request, today=timezone.localdate(), kinds=queries.ANALYTICS_PERIODS)
        grid = queries.grid_energy(
            period_kind=period.kind,
            day=period.first,
            now=timezone.now(),
            top=params.validated_data["top"],
        )
        return Response(
            {
                "period": period.kind,
                "unit": grid["unit"],
                "date": period.first.isoformat(),
                "end_date": (period.end - timedelta(days=1)).isoformat(),
                "future": grid["future"],
                "energy_kwh": kwh(grid["energy_kwh"]),
                "sites": grid["sites"],
                "sites_with_data": grid["sites_with_data"],
                "results": _grid_slots(grid["slots"], grid["unit"]),
                "feeders": [
                    {**row, "energy_kwh": kwh(row["energy_kwh"])} for row in grid["feeders"]
                ],
                "transformers": [
                    {
                        **row,
                        "capacity_kva": amount(row["capacity_kva"]),
                        "energy_kwh": kwh(row["energy_kwh"]),
                    }
                    for row in grid["transformers"]
                ],
                "top_sites": [
                    {
                        **row,
                        "energy_kwh": kwh(row["energy_kwh"]),
                        "cost": amount(row["cost"]),
                        "history_url": f"{reverse('site-history', args=[row['id']])}"
                        f"?period={period.kind}&date={period.first.isoformat()}",
                    }
                    for row in grid["top_sites"]
                ],
            }
        )


class NotReportingQuerySerializer(serializers.Serializer):
    minutes = serializers.IntegerField(min_value=1, max_value=60 * 24 * 31, default=15)
    limit = serializers.IntegerField(min_value=1, max_value=1000, default=100)


class NotReportingApi(OperatorApi):
    """Devices with no reading for `minutes` (15 by default): online but silent first, then
    offline, longest silent first, with their last reading and last sign of life. Operators and
    staff only."""

    @extend_schema(
        parameters=[
            OpenApiParameter("minutes", int, description="silent for at least; 15"),
            OpenApiParameter("limit", int, description="1 to 1000; 100"),
        ],
        responses={200: NotReportingSerializer},
    )
    def get(self, request):
        params = NotReportingQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        minutes = params.validated_data["minutes"]
        now = timezone.now()
        found = queries.devices_not_reporting(
            now=now, silent_for=timedelta(minutes=minutes), limit=params.validated_data["limit"]
        )
        return Response(
            {
                "minutes": minutes,
                "now": iso(now),
                "count": found["count"],
                "online_silent": found["online_silent"],
                "offline": found["offline"],
                "results": [
                    {
                        **row,
                        "last_seen": row["last_seen"] and iso(row["last_seen"]),
                        "last_reading": row["last_reading"] and iso(row["last_reading"]),
                    }
                    for row in found["devices"]
                ],
            }
        )
