"""Reads of the OpenADR VEN: connections for the API and pages, what a connection's reports
say (the participating sites' aggregate power and how many of their devices are online)."""

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Prefetch, QuerySet

from demand_response import selectors as dr_selectors
from demand_response.models import (
    EventStatus,
    Invitation,
    InvitationStatus,
    VtnConnection,
    VtnEvent,
    VtnMessage,
)
from devices.models import Device, Sensor
from telemetry import queries

RECENT_MESSAGES = 20


def connection_list() -> QuerySet[VtnConnection]:
    return VtnConnection.objects.select_related("program").order_by("id")


def connection_messages(*, connection: VtnConnection, limit: int = RECENT_MESSAGES) -> list:
    return list(
        VtnMessage.objects.filter(connection=connection)
        .select_related("vtn_event")
        .order_by("-sent_at", "-id")[:limit]
    )


def connections_overview() -> list[dict]:
    """Each connection with its recent messages, for the operators' events page."""
    return [
        {"connection": c, "messages": connection_messages(connection=c, limit=5)}
        for c in connection_list()
    ]


def vtn_sources(*, event_ids: list[int]) -> dict[int, VtnEvent]:
    """Our event id -> the VTN event it came from, for the events that came from one."""
    return {
        v.event_id: v
        for v in VtnEvent.objects.filter(event_id__in=event_ids)
        .select_related("connection")
        .prefetch_related(
            Prefetch("messages", queryset=VtnMessage.objects.order_by("-sent_at", "-id"))
        )
    }


def participating_site_ids(*, connection: VtnConnection) -> list[int]:
    """The sites the connection's reports are about: those opted in to its active events, or,
    with no event under way, every eligible site of its program (the fleet it offers)."""
    active = Invitation.objects.filter(
        event__vtn_source__connection=connection,
        event__status=EventStatus.ACTIVE,
        status=InvitationStatus.OPTED_IN,
    ).values_list("site_id", flat=True)
    if VtnEvent.objects.filter(connection=connection, event__status=EventStatus.ACTIVE).exists():
        return sorted(set(active))
    return sorted(dr_selectors.program_eligible_site_ids(program=connection.program))


@dataclass(frozen=True)
class Telemetry:
    power_w: float  # the sites' aggregate power from their latest readings (under 15 min old)
    sites: int
    devices_online: int
    devices: int


def connection_telemetry(*, connection: VtnConnection, now: datetime) -> Telemetry:
    """The participating sites' aggregate power: each site's meter's latest power reading where
    it has a meter measuring power (its devices would count twice), else its devices'; readings
    older than 15 minutes count as none."""
    site_ids = participating_site_ids(connection=connection)
    plan = queries.energy_plan(site_ids=site_ids)
    sensors = list(
        Sensor.objects.filter(pk__in=plan.power_sensors).values_list(
            "pk", "device__kind", "device__site_id"
        )
    )
    metered = {site for _pk, kind, site in sensors if kind == "meter"}
    counted = [pk for pk, kind, site in sensors if site not in metered or kind == "meter"]
    latest = queries.latest_values(sensor_ids=counted, now=now)
    power = sum(value * plan.factors[pk] for pk, (_time, value) in latest.items())
    devices = Device.objects.filter(site_id__in=site_ids)
    return Telemetry(
        power_w=float(power),
        sites=len(site_ids),
        devices_online=devices.filter(online=True).count(),
        devices=devices.count(),
    )
