"""Shapes of the outages API. Every answer is typed field by field (amounts per currency are lists
of `{currency, amount}`, not free-form objects), so the OpenAPI schema describes all of it."""

import copy
from datetime import datetime, timedelta
from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from django.core.exceptions import ValidationError as DjangoValidationError

from outages.credit_rules import DURATION_FORMS, duration_iso, duration_parse, minor_unit
from outages.models import CreditEntry, CreditPolicy, Outage, SuspectedOutage, SuspectedSite
from outages.selectors import OutageCredit


class IsoDurationField(serializers.DurationField):
    """A duration read as ISO 8601 (`PT12H`) or `HH:MM:SS` (`12:00:00`), written as ISO 8601."""

    default_error_messages = {"invalid": DURATION_FORMS}

    def to_internal_value(self, value):
        if isinstance(value, timedelta):
            return value
        parsed = duration_parse(value) if isinstance(value, str) else None
        if parsed is None:
            self.fail("invalid")
        self.run_validators(parsed)
        return parsed

    def to_representation(self, value):
        return duration_iso(value)


class MoneySerializer(serializers.Serializer):
    """An amount in one currency, given as a `(currency, amount)` pair."""

    currency = serializers.CharField()
    amount = serializers.DecimalField(max_digits=14, decimal_places=4)

    def to_representation(self, instance):
        currency, amount = instance
        return {"currency": currency, "amount": amount_text(amount, currency)}


def amount_text(value: Decimal, currency: str) -> str:
    """An amount with the currency's minor-unit digits ("95.00"), or more where a rate has them."""
    exact = value.quantize(minor_unit(currency))
    return str(exact if exact == value else value.normalize())


class TierSerializer(serializers.Serializer):
    """One tier as the API shows it; read and checked by `credit_rules.parse_tiers`."""

    after = serializers.CharField(help_text="ISO 8601 or HH:MM:SS, from the cut's start.")
    period = serializers.CharField(help_text="ISO 8601 or HH:MM:SS, longer than zero.")
    amount = serializers.CharField(help_text='A decimal string, e.g. "45.00".')


@extend_schema_field(TierSerializer(many=True))
class TiersField(serializers.JSONField):
    """The tiers as given: the model's `clean()` (via `credit_rules`) is the one place that reads
    and checks them, and names the tier and field that is wrong (`tiers[0].period ...`)."""


class CreditPolicySerializer(serializers.ModelSerializer):
    threshold = IsoDurationField(help_text="No credit below it; ISO 8601 or HH:MM:SS.")
    tiers = TiersField(required=False)

    class Meta:
        model = CreditPolicy
        fields = [
            "id",
            "name",
            "currency",
            "threshold",
            "base_amount",
            "tiers",
            "count_started_periods",
            "cap",
            "min_sites_affected",
            "is_default",
        ]
        # `validate` says which policy is the default already; DRF's validator for the model's
        # one-default constraint would not.
        extra_kwargs = {"is_default": {"validators": []}}

    def validate(self, attrs):
        """Check the policy as the admin does: the model's `full_clean()` (fields, tiers,
        constraints) is the one place for these rules."""
        policy = copy.copy(self.instance) if self.instance is not None else CreditPolicy()
        for field, value in attrs.items():
            setattr(policy, field, value)
        if policy.is_default:
            current = CreditPolicy.objects.filter(is_default=True).exclude(pk=policy.pk).first()
            if current is not None:
                raise serializers.ValidationError(
                    {
                        "is_default": f"{current.name!r} (id {current.pk}) is already the "
                        "default policy; set its is_default to false first."
                    }
                )
        try:
            policy.full_clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        # `clean()` normalised the tiers (ISO 8601 durations): store them so.
        return {**attrs, "tiers": policy.tiers} if "tiers" in attrs else attrs

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["base_amount"] = amount_text(instance.base_amount, instance.currency)
        data["cap"] = None if instance.cap is None else amount_text(instance.cap, instance.currency)
        return data


class QuoteSerializer(serializers.Serializer):
    """The live credit of an open outage (`credit_rules.credit_quote`)."""

    currency = serializers.CharField()
    amount = serializers.CharField(help_text="Earned so far, if the cut ended now.")
    quoted_at = serializers.DateTimeField(help_text="The instant the quote is for.")
    next_amount = serializers.CharField(
        allow_null=True, help_text="What the cut will have earned at the next step; null if none."
    )
    next_step_after = IsoDurationField(
        allow_null=True, help_text="The next step, from the cut's start (ISO 8601)."
    )
    next_step_at = serializers.DateTimeField(allow_null=True, help_text="The next step's instant.")


class OutageCreditSerializer(serializers.Serializer):
    paid = MoneySerializer(many=True, help_text="What the ledger has paid for it, per currency.")
    quote = QuoteSerializer(allow_null=True, help_text="While open: the live credit; else null.")


class OutageSerializer(serializers.ModelSerializer):
    """An outage with its credit: what the ledger paid for it and, while it is open, the live
    quote. (`credits` in the context, outage id → `OutageCredit`, is computed for a whole page
    at once by `selectors.outage_credits`.)"""

    start = serializers.DateTimeField(source="started_at")
    end = serializers.DateTimeField(source="ended_at", allow_null=True)
    duration_s = serializers.SerializerMethodField(
        help_text="Seconds from start to end, or to now while open."
    )
    credit = serializers.SerializerMethodField()
    policy = serializers.SerializerMethodField(
        help_text="Name of the credit policy that prices it; null: no credit."
    )
    feeder = serializers.SerializerMethodField(
        help_text="The feeder it is on: a feeder outage's own, a site outage's site's (what "
        "`?feeder=` finds it by); null for a transformer outage or a site on no feeder."
    )

    class Meta:
        model = Outage
        fields = [
            "id",
            "kind",
            "site",
            "feeder",
            "transformer",
            "grid_outage",
            "sites_affected",
            "customer_minutes",
            "start",
            "end",
            "duration_s",
            "momentary",
            "status",
            "credit",
            "policy",
        ]
        read_only_fields = fields

    def get_feeder(self, outage: Outage) -> int | None:
        if outage.site_id is not None:
            return outage.site.feeder_id
        return outage.feeder_id

    def _credit(self, outage: Outage) -> OutageCredit:
        return self.context["credits"][outage.pk]

    def get_duration_s(self, outage: Outage) -> float:
        end = outage.ended_at or self._credit(outage).quoted_at
        return max((end - outage.started_at).total_seconds(), 0.0)

    @extend_schema_field(OutageCreditSerializer)
    def get_credit(self, outage: Outage) -> dict:
        credit = self._credit(outage)
        quote = None
        if credit.quote is not None:
            q = credit.quote
            quote = {
                "currency": credit.policy.currency,
                "amount": str(q.amount),
                "quoted_at": credit.quoted_at,
                "next_amount": None if q.next_amount is None else str(q.next_amount),
                "next_step_after": q.next_step_after,
                "next_step_at": _instant_after(outage.started_at, q.next_step_after),
            }
        return OutageCreditSerializer({"paid": sorted(credit.paid.items()), "quote": quote}).data

    def get_policy(self, outage: Outage) -> str | None:
        policy = self._credit(outage).policy
        return None if policy is None else policy.name


def _instant_after(start: datetime, after: timedelta | None) -> datetime | None:
    """`start + after`, or None when there is no next step or it lies past year 9999 (a policy
    stored before durations were bounded)."""
    try:
        return None if after is None else start + after
    except OverflowError:
        return None


class ReasonSerializer(serializers.Serializer):
    """What a ledger entry pays for: exactly one of the two is set."""

    outage = serializers.IntegerField(allow_null=True)
    dr_event = serializers.IntegerField(allow_null=True)


class CreditEntrySerializer(serializers.ModelSerializer):
    amount = serializers.DecimalField(max_digits=14, decimal_places=4)
    reason = serializers.SerializerMethodField()

    class Meta:
        model = CreditEntry
        fields = ["id", "site", "amount", "currency", "reason", "created_at", "memo", "revision"]
        read_only_fields = fields

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["amount"] = amount_text(instance.amount, instance.currency)
        return data

    @extend_schema_field(ReasonSerializer)
    def get_reason(self, entry: CreditEntry) -> dict:
        return {"outage": entry.outage_id, "dr_event": entry.dr_event_id}


class CreditBalanceSerializer(serializers.Serializer):
    balances = MoneySerializer(many=True, help_text="The ledger's sum per currency.")


class SuspectedSiteSerializer(serializers.ModelSerializer):
    site_name = serializers.CharField(source="site.name")

    class Meta:
        model = SuspectedSite
        fields = ["site", "site_name", "dropped_at", "back_at"]


class SuspectedOutageSerializer(serializers.ModelSerializer):
    """Sites of one feeder whose device sockets dropped together with no report of a cut: a
    possible outage, `confirmed` once replayed reports show it (then `grid_outage` is the feeder
    outage, when one formed) or `dismissed` when the devices came back without any."""

    feeder_code = serializers.CharField(source="feeder.code")
    sites_count = serializers.IntegerField(help_text="How many sites dropped.")
    sites = SuspectedSiteSerializer(source="drops", many=True)

    class Meta:
        model = SuspectedOutage
        fields = [
            "id",
            "feeder",
            "feeder_code",
            "started_at",
            "status",
            "resolved_at",
            "grid_outage",
            "sites_count",
            "sites",
            "created_at",
            "updated_at",
        ]
