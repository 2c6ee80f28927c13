"""REST endpoints of the registry: thin views over selectors and services.

Everyone signed in reads the part of the registry they may see (residents: what belongs to their
own sites; another's id answers 404 as a missing one); only operators and staff change it."""

from datetime import timedelta

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from django.http import Http404

from devices import filters, selectors, services
from devices.models import Device
from devices.permissions import RegistryPermission, resident_may_command
from devices.serializers import (
    CommandIssueSerializer,
    CommandSerializer,
    DeviceCreatedSerializer,
    DeviceCreateSerializer,
    DeviceSerializer,
    DeviceTokenSerializer,
    FeederSerializer,
    RoomSerializer,
    SensorSerializer,
    SiteSerializer,
    SubstationSerializer,
    TransformerSerializer,
)
from energy_portal.api_docs import OPERATORS_AND_STAFF, crud_docs
from energy_portal.filters import OrderingFilter, SearchFilter
from energy_portal.serializers import text_problem

TAGS = ["Registry"]
WRITERS = OPERATORS_AND_STAFF


def registry_docs(*, noun: str, plural: str, residents_see: str, **options):
    """Each operation of a registry viewset described on its own, saying who may use it."""
    return crud_docs(
        noun=noun,
        plural=plural,
        readers=f"Residents: {residents_see}; operators and staff: all.",
        writers=WRITERS,
        notes={"destroy": "Refused (409, naming them) while other records depend on it."},
        **options,
    )


@extend_schema(tags=TAGS)
class RegistryViewSet(viewsets.ModelViewSet):
    """One registry model, limited to the rows the caller may see."""

    permission_classes = [RegistryPermission]
    filter_backends = [DjangoFilterBackend, SearchFilter, OrderingFilter]
    selector = None

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        # An id PostgreSQL could not even compare (a NUL byte) names nothing: 404, as for any
        # other id that names nothing, instead of an error from the database.
        lookup = kwargs.get(self.lookup_url_kwarg or self.lookup_field)
        if isinstance(lookup, str) and text_problem(lookup):
            model = self.serializer_class.Meta.model
            raise Http404(f"No {model._meta.object_name} matches the given query.")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            # Schema generation has no user; the model alone types the path parameters.
            return self.serializer_class.Meta.model.objects.none()
        return type(self).selector(user=self.request.user)


@registry_docs(
    noun="substation", plural="substations", residents_see="the substations feeding their sites"
)
class SubstationViewSet(RegistryViewSet):
    serializer_class = SubstationSerializer
    selector = staticmethod(selectors.substation_list)
    search_fields = ["code", "name"]
    ordering_fields = ["code", "name"]


@registry_docs(
    noun="transformer",
    plural="transformers",
    residents_see="the transformers feeding their sites",
)
class TransformerViewSet(RegistryViewSet):
    serializer_class = TransformerSerializer
    selector = staticmethod(selectors.transformer_list)
    filterset_class = filters.TransformerFilter
    search_fields = ["code", "name"]
    ordering_fields = ["code", "name"]


@registry_docs(noun="feeder", plural="feeders", residents_see="the feeders of their sites")
class FeederViewSet(RegistryViewSet):
    serializer_class = FeederSerializer
    selector = staticmethod(selectors.feeder_list)
    filterset_class = filters.FeederFilter
    search_fields = ["code", "name"]
    ordering_fields = ["code", "name"]


@registry_docs(noun="site", plural="sites", residents_see="their own sites")
class SiteViewSet(RegistryViewSet):
    serializer_class = SiteSerializer
    selector = staticmethod(selectors.site_list)
    filterset_class = filters.SiteFilter
    search_fields = ["name", "address", "cpe"]
    ordering_fields = ["name", "created_at"]


@registry_docs(noun="room", plural="rooms", residents_see="the rooms of their own sites")
class RoomViewSet(RegistryViewSet):
    serializer_class = RoomSerializer
    selector = staticmethod(selectors.room_list)
    filterset_class = filters.RoomFilter
    search_fields = ["name"]
    ordering_fields = ["name"]


@registry_docs(
    noun="sensor",
    plural="sensors",
    residents_see="the sensors of their own sites' devices",
    lookup="public id",
)
class SensorViewSet(RegistryViewSet):
    """Sensors, addressed by their public id `<device uid>.<key>`."""

    serializer_class = SensorSerializer
    selector = staticmethod(selectors.sensor_list)
    filterset_fields = ["kind", "device__uid"]
    search_fields = ["key", "device__uid"]
    ordering_fields = ["key"]
    lookup_value_regex = r"[^/]+"

    def get_object(self):
        uid, _, key = self.kwargs["pk"].rpartition(".")
        sensor = self.get_queryset().filter(device__uid=uid, key=key).first()
        if sensor is None:
            raise NotFound(
                f"No sensor {self.kwargs['pk']!r}; sensor ids look like 'pi-0001.power_w'."
            )
        self.check_object_permissions(self.request, sensor)
        return sensor


@registry_docs(
    noun="device",
    plural="devices",
    residents_see="their own sites' devices",
    lookup="uid",
    own=("create",),
)
class DeviceViewSet(RegistryViewSet):
    serializer_class = DeviceSerializer
    selector = staticmethod(selectors.device_list)
    lookup_field = "uid"
    filterset_class = filters.DeviceFilter
    search_fields = ["uid", "name", "site__name"]
    ordering_fields = ["uid", "last_seen"]

    def get_serializer_class(self):
        # Each action's own input, also for the browsable API's form: the device's form would
        # offer every site and room as choices.
        return {
            "create": DeviceCreateSerializer,
            "commands": CommandIssueSerializer,
            "rotate_token": serializers.Serializer,
        }.get(self.action, DeviceSerializer)

    @extend_schema(
        summary="Register a device",
        description="Register a device; the answer carries its token, which is shown only this "
        f"once. {WRITERS}",
        request=DeviceCreateSerializer,
        responses={201: DeviceCreatedSerializer},
    )
    def create(self, request, *args, **kwargs):
        serializer = DeviceCreateSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        device, token = services.device_create(**serializer.validated_data)
        device = self.get_queryset().get(pk=device.pk)
        device.token = token
        return Response(DeviceCreatedSerializer(device).data, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer):
        services.device_update(device=serializer.instance, **serializer.validated_data)

    @extend_schema(
        summary="Rotate a device's token",
        description="Issue a new token for the device; the old one stops working at once. "
        f"{WRITERS}",
        request=None,
        responses={200: DeviceTokenSerializer},
    )
    @action(detail=True, methods=["post"], url_path="rotate-token")
    def rotate_token(self, request, uid=None):
        device: Device = self.get_object()
        token = services.device_issue_token(device=device)
        return Response(DeviceTokenSerializer({"uid": device.uid, "token": token}).data)

    @extend_schema(
        summary="Send a command to a device",
        description="Send a command to the device now, or when it next connects, until it "
        "expires (202 with the command; follow it at `commands/{id}/`). Residents: `relay` "
        "only, on their own sites' controllable devices; operators and staff: any command to "
        "any device.",
        request=CommandIssueSerializer,
        responses={202: CommandSerializer},
    )
    @action(detail=True, methods=["post"], permission_classes=[IsAuthenticated])
    def commands(self, request, uid=None):
        device: Device = self.get_object()
        serializer = CommandIssueSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if not selectors.user_is_operator(request.user):
            refusal = resident_may_command(device=device, name=data["name"], args=data["args"])
            if refusal:
                raise PermissionDenied(refusal)
        command = services.command_issue(
            device=device,
            name=data["name"],
            args=data["args"],
            ttl=timedelta(seconds=data["ttl_s"]),
            user=request.user,
        )
        return Response(CommandSerializer(command).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(
    tags=TAGS,
    summary="A command's progress",
    description="A command's progress: pending → sent → done / failed / rejected, or expired. "
    "Residents: commands to their own sites' devices; operators and staff: all.",
)
class CommandDetailApi(generics.RetrieveAPIView):
    """A command's progress: pending → sent → done / failed / rejected, or expired."""

    serializer_class = CommandSerializer

    def get_queryset(self):
        return selectors.command_list(user=self.request.user)
