"""Query API: raw readings (keyset pages, streamed CSV), aggregates and stats of one sensor.

A sensor is named by its public id `<device uid>.<key>`; residents see only their own sites'
sensors and get 404 for any other, as for one that does not exist. Times are RFC 3339 with a
zone; ranges are [start, end).
"""

import base64
import binascii
import csv
import io
import re
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse

from devices.models import Sensor
from telemetry import queries

MAX_BUCKETS = 10_000
DEFAULT_PAGE_SIZE = 1_000
MAX_PAGE_SIZE = 10_000
CSV_CHUNK = 10_000
_SPACED_OFFSET = re.compile(r"^(\d{4}-\d\d-\d\d[T ]\d\d:\d\d\S*) (\d\d:?\d\d)$")


def iso(ts: datetime, tz: zoneinfo.ZoneInfo | None = None) -> str:
    """RFC 3339: UTC as `Z`, or the offset of `tz`."""
    if tz is not None and tz.key != "UTC":
        return ts.astimezone(tz).isoformat()
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Rfc3339Field(serializers.Field):
    default_error_messages = {
        "invalid": "{value!r} is not an RFC 3339 time; use e.g. 2026-03-29T00:00:00Z.",
        "naive": "{value!r} has no time zone; add Z or an offset such as %2B01:00 "
        "(a '+' in a query string must be sent as %2B).",
    }

    def to_internal_value(self, data):
        # RFC 3339 allows lower-case t/z and (its note) a space between date and time.
        raw = str(data).strip().upper()
        # An unencoded '+' of an offset arrives as a space: take it back.
        raw = _SPACED_OFFSET.sub(r"\1+\2", raw)
        if len(raw) < 11 or raw[10] not in "T ":
            self.fail("invalid", value=str(data)[:40])
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            self.fail("invalid", value=str(data)[:40])
        if value.tzinfo is None:
            self.fail("naive", value=str(data)[:40])
        try:
            return value.astimezone(UTC)
        except OverflowError:
            self.fail("invalid", value=str(data)[:40])

    def to_representation(self, value):
        return iso(value)


class RangeSerializer(serializers.Serializer):
    sensor = serializers.CharField(
        max_length=200,
        error_messages={
            "required": "Name the sensor: ?sensor=<device uid>.<key>, e.g. pi-0001.power_w."
        },
    )
    start = Rfc3339Field(error_messages={"required": "Give start, an RFC 3339 time."})
    end = Rfc3339Field(error_messages={"required": "Give end, an RFC 3339 time."})

    def validate_sensor(self, value: str) -> str:
        uid, _, key = value.rpartition(".")
        if not uid or not key:
            raise ValidationError(
                f"{value[:80]!r} is not a sensor id; use <device uid>.<key>, e.g. pi-0001.power_w."
            )
        return value

    def validate(self, attrs):
        if attrs["start"] >= attrs["end"]:
            raise ValidationError({"end": ["end must be after start."]})
        return attrs


class ReadingsQuerySerializer(RangeSerializer):
    page_size = serializers.IntegerField(
        min_value=1, max_value=MAX_PAGE_SIZE, default=DEFAULT_PAGE_SIZE
    )
    cursor = serializers.CharField(required=False, max_length=40)

    def validate_cursor(self, value: str) -> datetime:
        try:
            us = int(base64.urlsafe_b64decode(value.encode() + b"=" * (-len(value) % 4)).decode())
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
        except (ValueError, binascii.Error, OverflowError, UnicodeDecodeError):
            raise ValidationError(
                "Not a cursor of this API; follow the `next` link of the previous page."
            ) from None


def encode_cursor(ts: datetime) -> str:
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return base64.urlsafe_b64encode(str(us).encode()).decode().rstrip("=")


class AggregatesQuerySerializer(RangeSerializer):
    bucket = serializers.ChoiceField(
        choices=list(queries.STEPS),
        error_messages={
            "required": "Give bucket: 15m, 1h or 1d.",
            "invalid_choice": "{input!r} is not a bucket; use 15m, 1h or 1d.",
        },
    )
    tz = serializers.CharField(required=False, max_length=64, default="UTC")

    def validate_tz(self, value: str) -> zoneinfo.ZoneInfo:
        try:
            return zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValidationError(
                f"{value[:64]!r} is not an IANA time zone, e.g. Europe/Lisbon."
            ) from None

    def validate(self, attrs):
        attrs = super().validate(attrs)
        step = queries.STEPS[attrs["bucket"]]
        if (attrs["end"] - attrs["start"]) / step > MAX_BUCKETS:
            span = (step * MAX_BUCKETS).days
            raise ValidationError(
                {"end": [f"At most {MAX_BUCKETS} buckets a request ({span} days of "
                         f"{attrs['bucket']}); narrow the range or use a larger bucket."]}
            )  # fmt: skip
        return attrs


class CsvRenderer(BaseRenderer):
    """`?format=csv` or `Accept: text/csv`: the `results` rows as CSV with a header."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        rows = data.get("results", []) if isinstance(data, dict) else data
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return out.getvalue().encode()


def _csv_lines(rows) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


async def _async_chunks(chunks: Iterator[str]):
    """Serve a synchronous generator to an ASGI server one chunk at a time: Django would
    otherwise read a sync iterator to the end before sending anything."""
    done = object()
    while (chunk := await sync_to_async(next, thread_sensitive=True)(chunks, done)) is not done:
        yield chunk


@extend_schema(tags=["Telemetry"])
class SensorQueryApi(APIView):
    renderer_classes = [*api_settings.DEFAULT_RENDERER_CLASSES, CsvRenderer]
    query_serializer: type[RangeSerializer] = RangeSerializer

    def query(self, request) -> tuple[dict, Sensor]:
        serializer = self.query_serializer(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        params = serializer.validated_data
        sensor = queries.sensor_by_public_id(user=request.user, public_id=params["sensor"])
        if sensor is None:
            raise NotFound(f"Sensor {params['sensor'][:80]!r} not found, or not one of yours.")
        return params, sensor

    def wants_csv(self, request) -> bool:
        return isinstance(getattr(request, "accepted_renderer", None), CsvRenderer)

    def finalize_response(self, request, response, *args, **kwargs):
        # Errors are JSON whatever format was asked for.
        if isinstance(response, Response) and response.status_code >= 400:
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)


def _range_parameters(*extra: OpenApiParameter) -> list[OpenApiParameter]:
    return [
        OpenApiParameter("sensor", str, required=True, description="`<device uid>.<key>`"),
        OpenApiParameter("start", OpenApiTypes.DATETIME, required=True, description="RFC 3339"),
        OpenApiParameter("end", OpenApiTypes.DATETIME, required=True, description="exclusive"),
        *extra,
    ]


class ReadingsApi(SensorQueryApi):
    """Raw readings of one sensor in time order, a keyset page at a time (`next` links on),
    or the whole range as a streamed CSV (`?format=csv`). Residents: their own sites' sensors
    (any other answers 404); operators and staff: all."""

    query_serializer = ReadingsQuerySerializer

    @extend_schema(
        parameters=_range_parameters(
            OpenApiParameter("page_size", int, description=f"1 to {MAX_PAGE_SIZE}"),
            OpenApiParameter("cursor", str, description="from the previous page's `next`"),
        ),
        responses={
            200: inline_serializer(
                "ReadingsPage",
                {
                    "sensor": serializers.CharField(),
                    "unit": serializers.CharField(),
                    "next": serializers.URLField(allow_null=True),
                    "results": inline_serializer(
                        "Reading",
                        {"time": serializers.DateTimeField(), "value": serializers.FloatField()},
                        many=True,
                    ),
                },
            )
        },
    )
    def get(self, request):
        params, sensor = self.query(request)
        if self.wants_csv(request):
            return self.csv(request, params, sensor)
        limit = params["page_size"]
        rows = queries.readings_page(
            sensor_id=sensor.id,
            start=params["start"],
            end=params["end"],
            after=params.get("cursor"),
            limit=limit + 1,
        )
        next_url = None
        if len(rows) > limit:
            rows = rows[:limit]
            query = request.query_params.copy()
            query["cursor"] = encode_cursor(rows[-1][0])
            next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
        return Response(
            {
                "sensor": params["sensor"],
                "unit": sensor.unit,
                "next": next_url,
                "results": [{"time": iso(t), "value": v} for t, v in rows],
            }
        )

    def csv(self, request, params, sensor) -> StreamingHttpResponse:
        def lines() -> Iterator[str]:
            yield "time,value\n"
            for chunk in queries.readings_chunks(
                sensor_id=sensor.id, start=params["start"], end=params["end"], chunk=CSV_CHUNK
            ):
                yield _csv_lines((iso(t), repr(v)) for t, v in chunk)

        content = lines()
        if isinstance(request._request, ASGIRequest):
            content = _async_chunks(content)
        response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{params["sensor"]}.csv"'
        return response


class AggregatesApi(SensorQueryApi):
    """Per bucket (15m, 1h or 1d) avg, min, max, sum and count of one sensor's readings; hours
    and days of `tz` (UTC by default; DST days have 23 or 25 hours). Buckets without readings
    are left out; the first and last cover only their part inside [start, end). Residents:
    their own sites' sensors (any other answers 404); operators and staff: all."""

    query_serializer = AggregatesQuerySerializer

    @extend_schema(
        parameters=_range_parameters(
            OpenApiParameter("bucket", str, required=True, enum=list(queries.STEPS)),
            OpenApiParameter("tz", str, description="IANA zone of the hours and days; UTC"),
        ),
        responses={
            200: inline_serializer(
                "Aggregates",
                {
                    "sensor": serializers.CharField(),
                    "unit": serializers.CharField(),
                    "bucket": serializers.ChoiceField(choices=list(queries.STEPS)),
                    "tz": serializers.CharField(),
                    "results": inline_serializer(
                        "Aggregate",
                        {
                            "bucket": serializers.DateTimeField(),
                            "avg": serializers.FloatField(),
                            "min": serializers.FloatField(),
                            "max": serializers.FloatField(),
                            "sum": serializers.FloatField(),
                            "count": serializers.IntegerField(),
                        },
                        many=True,
                    ),
                },
            )
        },
    )
    def get(self, request):
        params, sensor = self.query(request)
        tz = params["tz"]
        try:
            rows = queries.aggregates(
                sensor_id=sensor.id,
                start=params["start"],
                end=params["end"],
                bucket=params["bucket"],
                tz=tz,
            )
        except queries.RangeError as exc:
            raise ValidationError({"tz": [str(exc)]}) from None
        response = Response(
            {
                "sensor": params["sensor"],
                "unit": sensor.unit,
                "bucket": params["bucket"],
                "tz": tz.key,
                "results": [{**row, "bucket": iso(row["bucket"], tz)} for row in rows],
            }
        )
        if self.wants_csv(request):
            name = f"{params['sensor']}-{params['bucket']}.csv"
            response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


class StatsApi(SensorQueryApi):
    """min, max, avg, sum and count of one sensor's readings in [start, end). Residents: their
    own sites' sensors (any other answers 404); operators and staff: all."""

    renderer_classes = api_settings.DEFAULT_RENDERER_CLASSES

    @extend_schema(
        parameters=_range_parameters(),
        responses={
            200: inline_serializer(
                "Stats",
                {
                    "sensor": serializers.CharField(),
                    "unit": serializers.CharField(),
                    "start": serializers.DateTimeField(),
                    "end": serializers.DateTimeField(),
                    "min": serializers.FloatField(allow_null=True),
                    "max": serializers.FloatField(allow_null=True),
                    "avg": serializers.FloatField(allow_null=True),
                    "sum": serializers.FloatField(allow_null=True),
                    "count": serializers.IntegerField(),
                },
            )
        },
    )
    def get(self, request):
        params, sensor = self.query(request)
        result = queries.stats(sensor_id=sensor.id, start=params["start"], end=params["end"])
        return Response(
            {
                "sensor": params["sensor"],
                "unit": sensor.unit,
                "start": iso(params["start"]),
                "end": iso(params["end"]),
                **result,
            }
        )
