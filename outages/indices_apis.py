"""Reliability indices (IEEE 1366) of a feeder, or of every site, over a period:
`GET /api/v1/outages/indices/?feeder=&start=&end=`.

Operators and staff ask for any feeder, or for none (every site); residents only for a feeder one
of their sites is on, and must name it.
"""

from datetime import timedelta

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from django.conf import settings
from django.utils import timezone

from devices.selectors import feeder_list, user_is_operator
from outages import selectors

# When no start is given: the year before the end, the period regulators report on.
DEFAULT_PERIOD = timedelta(days=365)


class IndicesQuerySerializer(serializers.Serializer):
    feeder = serializers.IntegerField(
        min_value=1, required=False, help_text="A feeder's id; every site when left out."
    )
    start = serializers.DateTimeField(
        required=False, help_text="ISO 8601; a year before the end when left out."
    )
    end = serializers.DateTimeField(required=False, help_text="ISO 8601, excluded; now.")

    def validate(self, attrs):
        end = attrs.setdefault("end", timezone.now())
        start = attrs.setdefault("start", end - DEFAULT_PERIOD)
        if start >= end:
            raise ValidationError({"end": ["The end must be after the start."]})
        return attrs


class IndicesSerializer(serializers.Serializer):
    feeder = serializers.IntegerField(allow_null=True, help_text="None: every site.")
    feeder_code = serializers.CharField(allow_null=True)
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    momentary_threshold_s = serializers.IntegerField(
        help_text="Interruptions shorter than this are momentary (MAIFI), longer sustained."
    )
    customers_served = serializers.IntegerField(help_text="Sites on the feeder.")
    sustained_interruptions = serializers.IntegerField()
    momentary_interruptions = serializers.IntegerField()
    customer_minutes = serializers.FloatField(help_text="Of sustained interruptions.")
    saifi = serializers.FloatField(
        allow_null=True, help_text="Sustained interruptions per customer served."
    )
    saidi = serializers.FloatField(
        allow_null=True, help_text="Minutes of sustained interruption per customer served."
    )
    caidi = serializers.FloatField(
        allow_null=True, help_text="SAIDI / SAIFI: minutes per sustained interruption."
    )
    maifi = serializers.FloatField(
        allow_null=True, help_text="Momentary interruptions per customer served."
    )


def _figure(value: float | None) -> float | None:
    # Hand-checkable figures: 0.8, not 0.8000000000000002.
    return None if value is None else round(value, 6)


@extend_schema(tags=["Outages & credits"])
class ReliabilityIndicesApi(APIView):
    """SAIFI, SAIDI, CAIDI (minutes) and MAIFI of a feeder over [start, end), IEEE 1366: each
    site is a customer and each of its outages an interruption, clipped to the period.
    Residents: a feeder of their own sites (`feeder` required); operators and staff: any
    feeder, or every site without `feeder`."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        parameters=[
            OpenApiParameter("feeder", int, description="a feeder's id; residents must give one"),
            OpenApiParameter("start", str, description="ISO 8601 instant; a year before end"),
            OpenApiParameter("end", str, description="ISO 8601 instant, excluded; now"),
        ],
        responses={200: IndicesSerializer},
    )
    def get(self, request):
        params = IndicesQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        feeder_id, start, end = (params.validated_data.get(k) for k in ("feeder", "start", "end"))
        feeder = None
        if feeder_id is None:
            if not user_is_operator(request.user):
                raise ValidationError(
                    {"feeder": ["Name the feeder of one of your sites, e.g. ?feeder=3."]}
                )
        else:
            feeder = feeder_list(user=request.user).filter(pk=feeder_id).first()
            if feeder is None:
                raise NotFound(f"Feeder {feeder_id} not found, or none of your sites is on it.")
        indices = selectors.reliability(
            feeder_id=feeder_id, start=start, end=end, now=timezone.now()
        )
        return Response(
            IndicesSerializer(
                {
                    "feeder": feeder_id,
                    "feeder_code": feeder and feeder.code,
                    "start": start,
                    "end": end,
                    "momentary_threshold_s": int(
                        settings.OUTAGE_MOMENTARY_THRESHOLD.total_seconds()
                    ),
                    "customers_served": indices.customers_served,
                    "sustained_interruptions": indices.sustained_interruptions,
                    "momentary_interruptions": indices.momentary_interruptions,
                    "customer_minutes": _figure(indices.customer_minutes),
                    "saifi": _figure(indices.saifi),
                    "saidi": _figure(indices.saidi),
                    "caidi": _figure(indices.caidi),
                    "maifi": _figure(indices.maifi),
                }
            ).data
        )
