from rest_framework import serializers


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
