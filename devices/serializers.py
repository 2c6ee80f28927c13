from rest_framework import serializers

from django.contrib.auth import get_user_model

from devices.models import (
    Command,
    Device,
    Feeder,
    Room,
    Sensor,
    SensorKind,
    Site,
    Substation,
    Transformer,
)
from energy_portal.serializers import SlugRelatedField, StorableDictField


class SubstationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Substation
        fields = ["id", "code", "name"]


class TransformerSerializer(serializers.ModelSerializer):
    class Meta:
        model = Transformer
        fields = ["id", "code", "name", "substation", "capacity_kva"]


class FeederSerializer(serializers.ModelSerializer):
    class Meta:
        model = Feeder
        fields = ["id", "code", "name", "transformer"]


class SiteSerializer(serializers.ModelSerializer):
    residents = serializers.PrimaryKeyRelatedField(
        many=True, required=False, queryset=get_user_model().objects.all()
    )

    class Meta:
        model = Site
        fields = [
            "id",
            "name",
            "address",
            "residents",
            "timezone",
            "tariff_per_kwh",
            "currency",
            "cpe",
            "feeder",
            "created_at",
        ]


class RoomSerializer(serializers.ModelSerializer):
    class Meta:
        model = Room
        fields = ["id", "site", "name"]


class SensorSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    device = SlugRelatedField(slug_field="uid", queryset=Device.objects.all())

    class Meta:
        model = Sensor
        fields = ["id", "device", "key", "kind", "unit"]


class DeviceSensorSerializer(serializers.Serializer):
    """A sensor given inline when a device is created."""

    key = serializers.SlugField(max_length=64)
    kind = serializers.ChoiceField(choices=SensorKind.choices)
    unit = serializers.CharField(max_length=16, required=False, default="")


class DeviceSerializer(serializers.ModelSerializer):
    sensors = SensorSerializer(many=True, read_only=True)

    class Meta:
        model = Device
        fields = [
            "uid",
            "name",
            "kind",
            "site",
            "room",
            "controllable",
            "flexible_kw",
            "online",
            "last_seen",
            "sensors",
            "created_at",
        ]
        read_only_fields = ["online", "last_seen", "created_at"]

    def validate(self, attrs):
        site = attrs.get("site", getattr(self.instance, "site", None))
        room = attrs.get("room", getattr(self.instance, "room", None))
        if room is not None and site is not None and room.site_id != site.id:
            raise serializers.ValidationError(
                {"room": "The room must belong to the device's site."}
            )
        return attrs


class DeviceCreateSerializer(DeviceSerializer):
    sensors = DeviceSensorSerializer(many=True, required=False)

    def validate_sensors(self, value):
        keys = [item["key"] for item in value]
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        if duplicated:
            raise serializers.ValidationError(
                f"Sensor keys must be unique: {', '.join(duplicated)}."
            )
        return value


class DeviceCreatedSerializer(DeviceSerializer):
    """The answer to a create: the device with its token, which is never shown again."""

    token = serializers.CharField(read_only=True)

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "token"]


class DeviceTokenSerializer(serializers.Serializer):
    uid = serializers.CharField()
    token = serializers.CharField()


COMMAND_ARGS_HELP = (
    'The command\'s arguments, which differ by command: `relay` {"state": "on" | "off"}; '
    '`curtail` {"kw": number >= 0}; `restore` and `ping` none; `simulate_mains` (simulated '
    'Pis) {"state": "lost", "minutes": number} or {"state": "restored"}. The '
    "device checks them and rejects a command it cannot carry out."
)


class CommandSerializer(serializers.ModelSerializer):
    device = serializers.SlugRelatedField(slug_field="uid", read_only=True)
    args = serializers.DictField(read_only=True, help_text=COMMAND_ARGS_HELP)

    class Meta:
        model = Command
        fields = [
            "id",
            "device",
            "name",
            "args",
            "status",
            "detail",
            "created_at",
            "expires_at",
            "sent_at",
            "completed_at",
        ]


class CommandIssueSerializer(serializers.Serializer):
    name = serializers.SlugField(
        max_length=40, help_text="relay, curtail, restore, ping or simulate_mains."
    )
    args = StorableDictField(required=False, default=dict, help_text=COMMAND_ARGS_HELP)
    ttl_s = serializers.IntegerField(
        required=False,
        default=600,
        min_value=1,
        max_value=7 * 86400,
        help_text="Seconds the command may wait for an offline device before it expires.",
    )
