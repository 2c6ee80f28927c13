"""The sites API with each site's own credit policy.

The registry (devices) must not know about outages, so the `credit_policy` of a site is added
here, in the wiring: a subclass of devices' site serializer and viewset that reads the choice
through an outages selector and writes it through an outages service. `energy_portal/urls.py`
routes `sites/` to this viewset instead of devices' own.
"""

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from django.db import transaction

from devices.apis import SiteViewSet
from devices.serializers import SiteSerializer
from outages import selectors as outage_selectors
from outages import services as outage_services
from outages.models import CreditPolicy


@extend_schema_serializer(component_name="Site")
class SiteWithPolicySerializer(SiteSerializer):
    # Read from the `own_credit_policy_id` annotation (`sites_with_credit_policy`): no query.
    credit_policy = serializers.PrimaryKeyRelatedField(
        source="own_credit_policy_id",
        queryset=CreditPolicy.objects.all(),
        allow_null=True,
        required=False,
        help_text="The site's own credit policy; null: the default policy applies.",
    )

    class Meta(SiteSerializer.Meta):
        fields = [*SiteSerializer.Meta.fields, "credit_policy"]


class SiteWithPolicyViewSet(SiteViewSet):
    serializer_class = SiteWithPolicySerializer

    def get_queryset(self):
        return outage_selectors.sites_with_credit_policy(super().get_queryset())

    def perform_create(self, serializer):
        self._save(serializer)

    def perform_update(self, serializer):
        self._save(serializer)

    @transaction.atomic
    def _save(self, serializer):
        given = "own_credit_policy_id" in serializer.validated_data
        policy = serializer.validated_data.pop("own_credit_policy_id", None)
        site = serializer.save()
        if given:
            outage_services.site_credit_policy_set(
                site_id=site.pk, policy_id=None if policy is None else policy.pk
            )
            site.own_credit_policy_id = None if policy is None else policy.pk
        elif not hasattr(site, "own_credit_policy_id"):
            site.own_credit_policy_id = None  # a new site without one: the default applies
