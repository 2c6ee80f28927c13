from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from django.urls import Resolver404, resolve

from energy_portal.health import health_report


class CheckSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    error = serializers.CharField(required=False, help_text="Why not ok; only when not ok.")


class IngestCheckSerializer(CheckSerializer):
    entries = serializers.IntegerField(
        required=False, help_text="Readings waiting for the writer (absent without Redis)."
    )
    lag_s = serializers.FloatField(
        required=False, help_text="Seconds the oldest of them has waited (absent without Redis)."
    )


class BeatCheckSerializer(CheckSerializer):
    last_run = serializers.FloatField(
        required=False, allow_null=True, help_text="Unix time of beat's last run; null: none yet."
    )
    age_s = serializers.FloatField(required=False, allow_null=True)


class ChecksSerializer(serializers.Serializer):
    database = CheckSerializer()
    redis = CheckSerializer()
    ingest_buffer = IngestCheckSerializer()
    beat = BeatCheckSerializer()


class HealthSerializer(serializers.Serializer):
    healthy = serializers.BooleanField(help_text="True only when every check is ok.")
    checks = ChecksSerializer()


@extend_schema(tags=["Health"])
class HealthApi(APIView):
    """Database, Redis, the ingest buffer and beat; 200 when all are healthy, 503 otherwise.
    Anyone, without signing in (for load balancers and probes)."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses={
            (200, "application/json"): HealthSerializer,
            (503, "application/json"): HealthSerializer,
        }
    )
    def get(self, request):
        report = health_report()
        return Response(report, status=200 if report["healthy"] else 503)


@extend_schema(exclude=True)
class ApiNotFound(APIView):
    """Any path under the API that names no endpoint (`outages/abc/`): a JSON 404 like every
    other API error, in development too, not Django's HTML page. An endpoint's path without its
    final slash (`outages`) answers 308 to it: the client repeats the same request there, body
    and method kept (Django's slash redirect was a 301, which clients follow with a GET, and
    for a POST in development an HTML error page)."""

    authentication_classes = []
    permission_classes = [AllowAny]

    def _not_found(self, request, *args, **kwargs):
        if not request.path.endswith("/") and _is_endpoint(request.path + "/"):
            query = request.META.get("QUERY_STRING", "")
            location = request.path + "/" + (f"?{query}" if query else "")
            detail = f"The endpoint is {request.path}/ (with its final slash)."
            return Response({"detail": detail}, status=308, headers={"Location": location})
        raise NotFound(f"No API endpoint at {request.path}; the endpoints are at /api/v1/docs/.")

    get = post = put = patch = delete = head = options = _not_found


def _is_endpoint(path: str) -> bool:
    try:
        return resolve(path).url_name != "api-not-found"
    except Resolver404:
        return False
