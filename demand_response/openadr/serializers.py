"""Shape of a VTN connection in the API: the configuration staff set, and what the VEN process
writes (read only). The client key is write-only: once set, the API says only whether it is."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from demand_response.models import Program, VtnConnection
from demand_response.openadr import mapping
from devices.models import Feeder, Site


@extend_schema_field(
    {
        "type": "object",
        "description": "OpenADR resource or group id -> the feeders (codes) and sites (ids) it "
        "means. An event whose targets are all unmapped (or absent) invites every eligible "
        "site of the program.",
        "additionalProperties": {
            "type": "object",
            "properties": {
                "feeders": {"type": "array", "items": {"type": "string"}},
                "sites": {"type": "array", "items": {"type": "integer"}},
            },
            "additionalProperties": False,
        },
        "example": {"R-NORTH": {"feeders": ["FD-1"]}, "G-PILOT": {"sites": [12, 14]}},
    }
)
class TargetMapField(serializers.JSONField):
    pass


class VtnConnectionSerializer(serializers.ModelSerializer):
    target_map = TargetMapField(required=False)
    program = serializers.PrimaryKeyRelatedField(queryset=Program.objects.all())
    client_key = serializers.CharField(
        write_only=True, required=False, allow_blank=True, trim_whitespace=False,
        help_text="PEM private key of the client certificate (never shown again).",
    )  # fmt: skip
    has_client_key = serializers.SerializerMethodField()
    poll_interval_s = serializers.IntegerField(min_value=1, max_value=86400, required=False)

    class Meta:
        model = VtnConnection
        fields = [
            "id",
            "vtn_url",
            "ven_name",
            "client_cert",
            "client_key",
            "has_client_key",
            "vtn_ca_cert",
            "vtn_fingerprint",
            "poll_interval_s",
            "program",
            "target_map",
            "opt_rule",
            "enabled",
            *VtnConnection.VEN_WRITTEN,
        ]
        read_only_fields = VtnConnection.VEN_WRITTEN

    def get_has_client_key(self, connection: VtnConnection) -> bool:
        return bool(connection.client_key)

    def validate_vtn_url(self, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise serializers.ValidationError("The VTN URL must be http:// or https://.")
        return value.rstrip("/")

    def validate_target_map(self, value):
        errors = mapping.target_map_errors(value)
        if errors:
            raise serializers.ValidationError(errors)
        codes = {code for entry in value.values() for code in entry.get("feeders", [])}
        site_ids = {site for entry in value.values() for site in entry.get("sites", [])}
        unknown_codes = codes - set(
            Feeder.objects.filter(code__in=codes).values_list("code", flat=True)
        )
        unknown_sites = site_ids - set(
            Site.objects.filter(pk__in=site_ids).values_list("pk", flat=True)
        )
        if unknown_codes or unknown_sites:
            raise serializers.ValidationError(
                [f"Unknown feeders {sorted(unknown_codes)}"] * bool(unknown_codes)
                + [f"Unknown sites {sorted(unknown_sites)}"] * bool(unknown_sites)
            )
        return value

    def validate(self, attrs):
        cert = attrs.get("client_cert", getattr(self.instance, "client_cert", ""))
        key = attrs.get("client_key", getattr(self.instance, "client_key", ""))
        if bool(cert) != bool(key):
            raise serializers.ValidationError(
                {"client_cert": "Give the client certificate and its key together (or neither)."}
            )
        if cert and "BEGIN CERTIFICATE" not in cert:
            raise serializers.ValidationError({"client_cert": "Give the certificate as PEM."})
        if key and "PRIVATE KEY" not in key:
            raise serializers.ValidationError({"client_key": "Give the private key as PEM."})
        return attrs
