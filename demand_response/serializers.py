"""Shapes of the demand-response API. An event is `{"program", "start", "end", "signal": {"type",
"value"}, "targets": {"sites", "feeders"}, "randomization_s", "status"}`; input is checked here
for its types only, and by the services for what it means (their errors name the same fields)."""

from rest_framework import serializers

from demand_response.models import (
    MAX_LEVEL,
    AutoResponseMode,
    DispatchedCommand,
    Event,
    Invitation,
    Program,
    SettlementResult,
    SignalType,
)
from devices.models import Feeder, Site
from outages.serializers import IsoDurationField, MoneySerializer, amount_text


class ProgramSerializer(serializers.ModelSerializer):
    notification_lead_time = IsoDurationField(
        help_text="The least notice an event gives, as ISO 8601 (PT30M) or HH:MM:SS."
    )
    eligible_sites = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Site.objects.all(), required=False
    )
    eligible_feeders = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Feeder.objects.all(), required=False
    )

    class Meta:
        model = Program
        fields = [
            "id",
            "name",
            "reward_per_kwh",
            "currency",
            "baseline_method",
            "notification_lead_time",
            "eligible_sites",
            "eligible_feeders",
        ]


class SignalSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=SignalType.choices)
    value = serializers.DecimalField(
        max_digits=12,
        decimal_places=4,
        coerce_to_string=False,
        help_text=f"A level 0-{MAX_LEVEL}, a reduction in kW (> 0), or a price.",
    )

    def to_representation(self, event: Event) -> dict:  # it reads the event's own fields
        value = event.signal_value
        number = int(value) if value == value.to_integral_value() else float(value)
        return {"type": event.signal_type, "value": number}


class TargetsSerializer(serializers.Serializer):
    sites = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**31 - 1),
        default=list,
        max_length=100_000,
    )
    feeders = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**31 - 1),
        default=list,
        max_length=10_000,
    )

    def to_representation(self, event: Event) -> dict:  # from the prefetched targets
        return {
            "sites": sorted(site.pk for site in event.target_sites.all()),
            "feeders": sorted(feeder.pk for feeder in event.target_feeders.all()),
        }


class EventSourceSerializer(serializers.Serializer):
    """The utility VTN event an event came from (the OpenADR VEN made it)."""

    vtn_connection = serializers.IntegerField(source="connection_id")
    vtn_event_id = serializers.CharField()
    modification_number = serializers.IntegerField()
    answer = serializers.CharField(source="opt_type", help_text="optIn, optOut, or empty.")


class EventSerializer(serializers.ModelSerializer):
    """An event as it is; also what a create or change takes (status is read only)."""

    program = serializers.IntegerField(source="program_id", min_value=1, max_value=2**31 - 1)
    signal = SignalSerializer(source="*")
    targets = TargetsSerializer(source="*")
    randomization_s = serializers.IntegerField(min_value=0, max_value=86_400, default=0)
    source = EventSourceSerializer(
        source="vtn_source",
        read_only=True,
        allow_null=True,
        help_text="The VTN event it came from; null for an event our operators called.",
    )

    class Meta:
        model = Event
        fields = [
            "id",
            "program",
            "start",
            "end",
            "signal",
            "targets",
            "randomization_s",
            "status",
            "source",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["status", "created_at", "updated_at"]


class InvitationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Invitation
        fields = ["id", "event", "site", "status", "answered_by", "answered_at"]
        read_only_fields = fields


class InvitationResponseSerializer(serializers.Serializer):
    response = serializers.ChoiceField(choices=["opt_in", "opt_out"])


class AutoResponseSerializer(serializers.Serializer):
    """A site's standing answer; `mode` null lets its resident answer each invitation."""

    site = serializers.IntegerField(read_only=True)
    mode = serializers.ChoiceField(choices=AutoResponseMode.choices, allow_null=True)
    max_level = serializers.IntegerField(
        min_value=0, max_value=MAX_LEVEL, allow_null=True, required=False, default=None
    )


class SettlementRowSerializer(serializers.ModelSerializer):
    # In the currency's minor unit ("2.40" EUR), as the totals and the ledger show money; the
    # column keeps four decimals for rates finer than it.
    reward = serializers.SerializerMethodField()

    def get_reward(self, row: SettlementResult) -> str:
        return amount_text(row.reward, row.currency)

    class Meta:
        model = SettlementResult
        fields = [
            "site",
            "status",
            "baseline_kwh",
            "adjustment",
            "actual_kwh",
            "delivered_kwh",
            "reward",
            "currency",
            "days_used",
            "settled_at",
        ]

    days_used = serializers.ListField(child=serializers.DateField())


class DispatchRowSerializer(serializers.ModelSerializer):
    """One command the event sent a device, with the command's status as the device reported."""

    device_uid = serializers.CharField(source="device.uid")
    command = serializers.UUIDField(source="command_id")
    status = serializers.CharField(source="command.status")
    sent_at = serializers.DateTimeField(source="command.sent_at", allow_null=True)
    completed_at = serializers.DateTimeField(source="command.completed_at", allow_null=True)
    detail = serializers.CharField(source="command.detail")

    class Meta:
        model = DispatchedCommand
        fields = [
            "site",
            "device",
            "device_uid",
            "kind",
            "command",
            "status",
            "created_at",
            "sent_at",
            "completed_at",
            "detail",
        ]


class ReportTotalsSerializer(serializers.Serializer):
    sites = serializers.IntegerField()
    sites_paid = serializers.IntegerField()
    delivered_kwh = serializers.DecimalField(max_digits=16, decimal_places=4)
    rewards = MoneySerializer(many=True)


class EventReportSerializer(serializers.Serializer):
    """What the event delivered per site (empty until it is settled) and what each device was
    sent."""

    event = serializers.IntegerField()
    status = serializers.CharField()
    settled = serializers.BooleanField()
    sites = SettlementRowSerializer(many=True)
    totals = ReportTotalsSerializer()
    commands = DispatchRowSerializer(many=True)
