from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from energy_portal.health import health_report


class HealthApi(APIView):
    """Database, Redis and beat; 200 when all are healthy, 503 otherwise."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses={
            (200, "application/json"): inline_serializer(
                "Health", {"healthy": serializers.BooleanField(), "checks": serializers.DictField()}
            )
        }
    )
    def get(self, request):
        report = health_report()
        return Response(report, status=200 if report["healthy"] else 503)
