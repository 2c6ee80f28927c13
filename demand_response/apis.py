"""REST endpoints of demand response: thin views over the services and selectors.

Programs: staff change them, operators read them. Events: operators and staff create, change
(before the start) and cancel them; residents see those that invited their sites. Invitations:
residents see and answer their own sites' (another's is a 404 exactly as a missing one),
operators all. A site's auto-response: its residents and staff set it. VTN connections (the
OpenADR VEN's configuration): staff change them, operators read them."""

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.generics import get_object_or_404
from rest_framework.response import Response
from rest_framework.views import APIView

from django.db.models import ProtectedError

from demand_response import filters, selectors, services
from demand_response.models import AnsweredBy, Event, Invitation, SiteAutoResponse
from demand_response.openadr import selectors as openadr_selectors
from demand_response.openadr.serializers import VtnConnectionSerializer
from demand_response.serializers import (
    AutoResponseSerializer,
    EventReportSerializer,
    EventSerializer,
    InvitationResponseSerializer,
    InvitationSerializer,
    ProgramSerializer,
)
from devices import selectors as registry
from devices.permissions import OperatorsReadStaffWrite
from energy_portal.api_docs import OPERATORS_AND_STAFF, crud_docs
from energy_portal.api_errors import Conflict

ID = r"[0-9]+"
TAGS = ["Demand response"]
PROGRAM_WRITERS = "Staff only (operators may read programs, not change them)."
EVENT_READERS = (
    "Residents: the events that invited their own sites (any other id answers 404); operators "
    "and staff: all."
)
INVITATION_READERS = (
    "Residents: their own sites' invitations (any other id answers 404); operators and staff: all."
)


class ProgramPermission(OperatorsReadStaffWrite):
    message = "Only staff may change programs; operators may read them."


@extend_schema(tags=TAGS)
@crud_docs(
    noun="program",
    plural="programs",
    readers=OPERATORS_AND_STAFF,
    writers=PROGRAM_WRITERS,
)
class ProgramViewSet(viewsets.ModelViewSet):
    """Demand-response programs: the reward per kWh delivered, the notice an event gives, and
    the sites (listed, or on the listed feeders) it may call."""

    serializer_class = ProgramSerializer
    permission_classes = [ProgramPermission]
    lookup_value_regex = ID

    def get_queryset(self):
        return selectors.program_list()


class EventPermission(permissions.BasePermission):
    """Everyone signed in reads the events they may see; operators and staff change them."""

    message = "Only operators and staff may create, change or cancel events."

    def has_permission(self, request, view):
        if not request.user.is_authenticated:
            return False
        return request.method in permissions.SAFE_METHODS or registry.user_is_operator(request.user)


@extend_schema(tags=TAGS)
@crud_docs(
    noun="event",
    plural="events",
    readers=EVENT_READERS,
    writers=OPERATORS_AND_STAFF,
    notes={
        "create": "Its start must give the program's notice.",
        "update": "Only before its start.",
        "partial_update": "Only before its start.",
    },
    own=("destroy",),
)
class EventViewSet(viewsets.ModelViewSet):
    """Demand-response events. A change is taken only before the start; a start must give the
    program's notice. Times are ISO 8601 with their offset."""

    serializer_class = EventSerializer
    permission_classes = [EventPermission]
    filter_backends = [DjangoFilterBackend]
    filterset_class = filters.EventFilter
    lookup_value_regex = ID
    http_method_names = ["get", "post", "put", "patch", "head", "options"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Event.objects.none()
        return selectors.event_list(user=self.request.user)

    @staticmethod
    def _fields(data: dict) -> dict:
        names = {
            "program_id": "program_id",
            "start": "start",
            "end": "end",
            "type": "signal_type",
            "value": "signal_value",
            "sites": "target_sites",
            "feeders": "target_feeders",
            "randomization_s": "randomization_s",
        }
        return {names[key]: value for key, value in data.items() if key in names}

    def _answer(self, event_id: int, code: int) -> Response:
        event = self.get_queryset().get(pk=event_id)
        return Response(self.get_serializer(event).data, status=code)

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        event = services.event_create(**self._fields(serializer.validated_data))
        return self._answer(event.pk, status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        event = self.get_object()
        serializer = self.get_serializer(
            event, data=request.data, partial=kwargs.get("partial", False)
        )
        serializer.is_valid(raise_exception=True)
        fields = self._fields(serializer.validated_data)
        if fields.pop("program_id", event.program_id) != event.program_id:
            raise ValidationError({"program": "An event's program cannot change."})
        services.event_update(event_id=event.pk, **fields)
        return self._answer(event.pk, status.HTTP_200_OK)

    @extend_schema(
        summary="Cancel an event",
        description="Cancel a scheduled or active event (an active one's devices are restored). "
        + OPERATORS_AND_STAFF,
        request=None,
        responses=EventSerializer,
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a scheduled or active event (an active one's devices are restored)."""
        event = self.get_object()
        services.event_cancel(event_id=event.pk)
        return self._answer(event.pk, status.HTTP_200_OK)

    @extend_schema(
        summary="An event's report",
        description="Per site what the event delivered and paid and the totals (empty and "
        "`settled` false until it is settled), and each device's commands with their status. "
        "Residents: their own sites' part of the events that invited them; operators and "
        "staff: all.",
        responses=EventReportSerializer,
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def report(self, request, pk=None):
        """Per site what the event delivered and paid and the totals (empty and `settled`
        false until it is settled), and each device's commands with their status."""
        event = self.get_object()
        report = selectors.event_report(event=event, user=request.user)
        return Response(EventReportSerializer(report).data)


@extend_schema(tags=TAGS)
@extend_schema_view(
    list=extend_schema(summary="List invitations", description=INVITATION_READERS),
    retrieve=extend_schema(summary="One invitation", description=INVITATION_READERS),
)
class InvitationViewSet(viewsets.ReadOnlyModelViewSet):
    """Invitations of sites to events and their answers."""

    serializer_class = InvitationSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = filters.InvitationFilter
    lookup_value_regex = ID

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Invitation.objects.none()
        return selectors.invitation_list(user=self.request.user)

    @extend_schema(
        summary="Opt in or out",
        description="Opt in or out: either before the start, only out once the event is active "
        "(the site's devices are restored at once). Residents: their own sites' invitations; "
        "operators and staff: any (recorded as answered by an operator).",
        request=InvitationResponseSerializer,
        responses=InvitationSerializer,
    )
    @action(detail=True, methods=["post"])
    def respond(self, request, pk=None):
        """Opt in or out: either before the start, only out once the event is active (the
        site's devices are restored at once)."""
        invitation = self.get_object()
        serializer = InvitationResponseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        by = (
            AnsweredBy.OPERATOR
            if registry.user_is_operator(request.user)
            and not invitation.site.residents.filter(pk=request.user.pk).exists()
            else AnsweredBy.RESIDENT
        )
        answered = services.invitation_respond(
            invitation_id=invitation.pk,
            response=serializer.validated_data["response"],
            by=by,
            user=request.user,
        )
        return Response(InvitationSerializer(answered).data)


@extend_schema(tags=TAGS)
class AutoResponseApi(APIView):
    """How a site answers new invitations at once: `accept_all`, `decline_all`, or
    `accept_up_to_level` with `max_level` (0-3); `mode` null lets its resident answer each.
    Its residents and staff set it."""

    serializer_class = AutoResponseSerializer

    def _site(self, request, site_id: int):
        return get_object_or_404(registry.site_list(user=request.user), pk=site_id)

    @staticmethod
    def _data(site_id: int) -> dict:
        auto = SiteAutoResponse.objects.filter(site_id=site_id).first()
        return AutoResponseSerializer(
            {
                "site": site_id,
                "mode": auto.mode if auto else None,
                "max_level": auto.max_level if auto else None,
            }
        ).data

    @extend_schema(
        summary="A site's auto-response",
        description="How the site answers new invitations. Residents: their own sites (any "
        "other answers 404); operators and staff: all.",
        responses=AutoResponseSerializer,
    )
    def get(self, request, site_id: int):
        return Response(self._data(self._site(request, site_id).pk))

    @extend_schema(
        summary="Set a site's auto-response",
        description="Residents: their own sites; staff: all. Operators who are not staff may "
        "read it, not set it (403).",
        request=AutoResponseSerializer,
        responses=AutoResponseSerializer,
    )
    def put(self, request, site_id: int):
        site = self._site(request, site_id)
        if not request.user.is_staff and not site.residents.filter(pk=request.user.pk).exists():
            self.permission_denied(request, "Only the site's residents and staff may set this.")
        serializer = AutoResponseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.site_auto_response_set(site_id=site.pk, **serializer.validated_data)
        return Response(self._data(site.pk))


class VtnConnectionPermission(OperatorsReadStaffWrite):
    message = "Only staff may change VTN connections; operators may read them."


@extend_schema(tags=TAGS)
@crud_docs(
    noun="VTN connection",
    plural="VTN connections",
    readers=OPERATORS_AND_STAFF,
    writers="Staff only (operators may read connections, not change them).",
    notes={
        "create": "The VEN process (`manage.py run_openadr_ven`) picks it up within seconds.",
        "update": "The connection's VEN restarts with the new configuration.",
        "partial_update": "The connection's VEN restarts with the new configuration.",
        "destroy": "Refused (409) while events came from it: disable it instead.",
    },
)
class VtnConnectionViewSet(viewsets.ModelViewSet):
    """The utilities' VTNs the portal polls as an OpenADR 2.0b VEN: their events become events
    of `program`, targets mapped through `target_map`. `state`, `last_poll_at`, `ven_id` are
    written by the VEN process."""

    serializer_class = VtnConnectionSerializer
    permission_classes = [VtnConnectionPermission]
    lookup_value_regex = ID

    def get_queryset(self):
        return openadr_selectors.connection_list()

    def perform_destroy(self, instance):
        try:
            instance.delete()
        except ProtectedError as exc:
            raise Conflict(
                "Events came from this connection; disable it instead of deleting it."
            ) from exc
