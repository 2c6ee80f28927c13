from rest_framework import serializers

from telemetry.models import FtpSource, PolledAppliance, PollSource


class IngestItemSerializer(serializers.Serializer):
    """Documents one item of `POST ingest/`; items are checked one by one by the pipeline, so a
    bad item is reported by index and never sinks the rest."""

    sensor_id = serializers.CharField(help_text="Public sensor id, `<device uid>.<key>`.")
    timestamp = serializers.DateTimeField(help_text="RFC 3339 with a zone.")
    value = serializers.FloatField()


class IngestRejectionSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    error = serializers.CharField()


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    rejected = IngestRejectionSerializer(many=True)


class FtpSourceSerializer(serializers.ModelSerializer):
    kind = serializers.SerializerMethodField()

    class Meta:
        model = FtpSource
        fields = [
            "id",
            "kind",
            "name",
            "host",
            "port",
            "folder",
            "timezone",
            "interval_s",
            "enabled",
            "last_run_at",
            "last_error",
            "runs",
            "files_ingested",
            "files_quarantined",
            "rows_ingested",
        ]

    def get_kind(self, obj) -> str:
        return "ftp"


class PolledApplianceSerializer(serializers.ModelSerializer):
    device = serializers.SlugRelatedField(slug_field="uid", read_only=True)

    class Meta:
        model = PolledAppliance
        fields = [
            "device",
            "uri",
            "store_type",
            "store_period_s",
            "polls",
            "failures",
            "consecutive_failures",
            "last_error",
            "last_latency_ms",
            "last_polled_at",
            "last_success_at",
            "rows_ingested",
        ]


class PollSourceSerializer(serializers.ModelSerializer):
    kind = serializers.SerializerMethodField()
    appliances = PolledApplianceSerializer(many=True, read_only=True)

    class Meta:
        model = PollSource
        fields = ["id", "kind", "name", "site", "monitoring_period_s", "enabled", "appliances"]

    def get_kind(self, obj) -> str:
        return "http"


class SourcesSerializer(serializers.Serializer):
    ftp = FtpSourceSerializer(many=True)
    http = PollSourceSerializer(many=True)
