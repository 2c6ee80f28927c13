"""REST endpoints of the telemetry side."""

from drf_spectacular.utils import extend_schema
from rest_framework import permissions, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from django.conf import settings

from devices.api_tokens import ApiTokenAuthentication
from devices.authentication import DeviceTokenAuthentication
from devices.models import Device
from devices.permissions import IsOperator
from energy_portal.serializers import text_problem
from telemetry.selectors import ingestion_sources, sensor_refs_by_public_id
from telemetry.serializers import (
    IngestItemSerializer,
    IngestResultSerializer,
    SourcesSerializer,
)
from telemetry.services import Item, cyclic_gc_paused, readings_ingest, readings_validate


class CanIngest(permissions.BasePermission):
    message = "Ingest needs a device token, or a user with the 'ingest readings' permission."

    def has_permission(self, request, view):
        if isinstance(request.auth, Device):
            return True
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm("telemetry.ingest_readings"))


@extend_schema(tags=["Telemetry"])
class IngestApi(APIView):
    """Batch ingest: a JSON list of `{sensor_id, timestamp, value}`.

    Answers 202 once the accepted items are in the durable ingest buffer, with each rejected
    item's index and reason. Devices (by their token): their own sensors only; users given the
    "ingest readings" permission (`telemetry.ingest_readings`; superusers have it): any
    sensor; anyone else is refused (403).
    """

    authentication_classes = [
        DeviceTokenAuthentication,
        ApiTokenAuthentication,
        SessionAuthentication,
    ]
    permission_classes = [CanIngest]

    @extend_schema(request=IngestItemSerializer(many=True), responses={202: IngestResultSerializer})
    @cyclic_gc_paused()  # thousands of items a batch (bench/ingest: GC was a quarter of the CPU)
    def post(self, request):
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.INGEST_MAX_BODY_BYTES:
            return Response(
                {"detail": f"Body too large: at most {settings.INGEST_MAX_BODY_BYTES} bytes; "
                 "split the batch."},
                status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )  # fmt: skip
        try:
            payload = request.data
        except ParseError as exc:
            raise ValidationError({"body": [f"Not valid JSON: {exc.detail}"]}) from None
        if not isinstance(payload, list):
            raise ValidationError({"body": ["Send a JSON list of {sensor_id, timestamp, value}."]})
        if len(payload) > settings.INGEST_MAX_ITEMS:
            raise ValidationError(
                {"body": [f"At most {settings.INGEST_MAX_ITEMS} items a request."]}
            )
        items, rejected = [], []
        for index, entry in enumerate(payload):
            if not isinstance(entry, dict) or not isinstance(entry.get("sensor_id"), str):
                rejected.append(
                    {"index": index, "error": "item must be {sensor_id, timestamp, value}"}
                )
                continue
            if problem := text_problem(entry["sensor_id"]):
                rejected.append({"index": index, "error": f"sensor_id: {problem}"})
                continue
            items.append(Item(ref=entry["sensor_id"], ts=entry.get("timestamp"),
                              value=entry.get("value"), index=index))  # fmt: skip
        device = request.auth if isinstance(request.auth, Device) else None
        sensors = sensor_refs_by_public_id(public_ids={i.ref for i in items}, device=device)
        result = readings_validate(items=items, sensors=sensors, ref_name="sensor_id")
        readings_ingest(result=result, source="http")
        rejected += [{"index": r["index"], "error": _explain(r, device)} for r in result.rejected]
        rejected.sort(key=lambda r: r["index"])
        return Response(
            {"accepted": result.accepted, "rejected": rejected}, status=status.HTTP_202_ACCEPTED
        )


def _explain(rejection: dict, device: Device | None) -> str:
    if rejection["error"] == "unknown sensor" and device is not None:
        return f"unknown sensor, or not one of device {device.uid}'s"
    return rejection["error"]


@extend_schema(tags=["Telemetry"])
class SourcesApi(APIView):
    """Ingestion sources (FTP folders, HTTP-polled appliances) with last run, counts and errors.

    Operators and staff only: source settings and errors are fleet-wide information.
    """

    permission_classes = [IsOperator]

    @extend_schema(responses={200: SourcesSerializer})
    def get(self, request):
        return Response(SourcesSerializer(ingestion_sources()).data)
