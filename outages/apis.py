"""REST endpoints of outages and credits: thin views over the selectors.

Residents see their own sites' outages and ledger entries; another's id answers 404 exactly as a
missing one. Operators and staff see all. Credit policies are read by operators and changed by
staff only.
"""

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from django.utils import timezone

from devices import selectors as registry
from devices.permissions import IsOperator, OperatorsReadStaffWrite
from energy_portal.api_docs import OPERATORS_AND_STAFF, crud_docs
from energy_portal.filters import OrderingFilter
from outages import filters, selectors
from outages.models import CreditEntry, CreditPolicy, Outage
from outages.serializers import (
    CreditBalanceSerializer,
    CreditEntrySerializer,
    CreditPolicySerializer,
    OutageSerializer,
    SuspectedOutageSerializer,
)

# Ids are numbers: `outages/indices/` and `credits/balance/` are never taken for one.
ID = r"[0-9]+"
TAGS = ["Outages & credits"]
OWN_SITES = (
    "Residents: their own sites' {what} (any other id answers 404); operators and staff: all."
)
POLICY_WRITERS = "Staff only (operators may read policies, not change them)."


@extend_schema(tags=TAGS)
@extend_schema_view(
    list=extend_schema(
        summary="List outages",
        description="Site, feeder and transformer outages, newest first, with what the ledger "
        "paid and, while open, the live quote. " + OWN_SITES.format(what="outages"),
    ),
    retrieve=extend_schema(
        summary="One outage",
        description="An outage with its credit. " + OWN_SITES.format(what="outages"),
    ),
)
class OutageViewSet(viewsets.ReadOnlyModelViewSet):
    """Site, feeder and transformer outages with their credit: what the ledger paid, and while an
    outage is open the live quote (earned so far, next step's amount and instant)."""

    serializer_class = OutageSerializer
    filter_backends = [DjangoFilterBackend, OrderingFilter]
    filterset_class = filters.OutageFilter
    ordering_fields = ["started_at", "ended_at"]
    ordering_aliases = {"start": "started_at", "end": "ended_at"}  # the names the API shows
    # Many sites of a feeder share a start instant: the id keeps pages stable.
    ordering = ["-started_at", "-id"]
    lookup_value_regex = ID

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Outage.objects.none()
        return selectors.outage_list(user=self.request.user)

    def filter_queryset(self, queryset):
        # An id names one outage, void ones too (`?status=void` lists them, ledger entries
        # point at them); the list's filters are for lists.
        if self.action == "retrieve":
            return queryset
        return super().filter_queryset(queryset)

    def _data(self, outages, *, many: bool):
        credits = selectors.outage_credits(outages if many else [outages], now=timezone.now())
        context = {**self.get_serializer_context(), "credits": credits}
        return OutageSerializer(outages, many=many, context=context).data

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(self._data(page, many=True))

    def retrieve(self, request, *args, **kwargs):
        return Response(self._data(self.get_object(), many=False))


@extend_schema_view(
    get=extend_schema(
        tags=["Outages & credits"],
        summary="List suspected outages",
        description=(
            "Suspected outages, newest first (filters: status suspected|confirmed|dismissed, "
            "feeder): sockets of several sites of one feeder that dropped together with no report "
            "of a cut, confirmed when the devices come back and replay a cut, dismissed when they "
            f"come back without one. {OPERATORS_AND_STAFF} Residents get 403."
        ),
    )
)
class SuspectedOutageListApi(generics.ListAPIView):
    """Operators: suspected outages, newest first; residents are refused (403), as for the other
    operators' views."""

    serializer_class = SuspectedOutageSerializer
    permission_classes = [IsOperator]
    filter_backends = [DjangoFilterBackend]
    filterset_class = filters.SuspectedOutageFilter

    def get_queryset(self):
        return selectors.suspected_outage_list()


class CreditPolicyPermission(OperatorsReadStaffWrite):
    message = "Only staff may change credit policies; operators may read them."


@extend_schema(tags=TAGS)
@crud_docs(
    noun="credit policy",
    plural="credit policies",
    readers=OPERATORS_AND_STAFF,
    writers=POLICY_WRITERS,
    notes={"create": "A second default is refused with the current one's name."},
)
class CreditPolicyViewSet(viewsets.ModelViewSet):
    """How much residents are owed for a cut: threshold, base amount, tiers, cap. Durations are
    accepted as ISO 8601 (PT12H) or HH:MM:SS and returned as ISO 8601. Only one policy is the
    default: making a second one default is refused with the name of the current one (unset it
    first)."""

    serializer_class = CreditPolicySerializer
    permission_classes = [CreditPolicyPermission]
    filter_backends = [OrderingFilter]
    ordering_fields = ["name"]
    lookup_value_regex = ID
    queryset = CreditPolicy.objects.all()


@extend_schema(tags=TAGS)
@extend_schema_view(
    list=extend_schema(
        summary="List ledger entries",
        description="The credit ledger's entries, filtered and ordered as asked. "
        + OWN_SITES.format(what="entries"),
    ),
    retrieve=extend_schema(
        summary="One ledger entry", description=OWN_SITES.format(what="entries")
    ),
)
class CreditEntryViewSet(viewsets.ReadOnlyModelViewSet):
    """The credit ledger: append-only entries paying a site for an outage or a demand-response
    event; a correction is a further entry with the next revision."""

    serializer_class = CreditEntrySerializer
    filter_backends = [DjangoFilterBackend, OrderingFilter]
    filterset_class = filters.CreditEntryFilter
    ordering_fields = ["created_at", "amount"]
    lookup_value_regex = ID

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return CreditEntry.objects.none()
        return selectors.credit_entry_list(user=self.request.user)

    @extend_schema(
        summary="Credit balance",
        description="What the ledger holds per currency for the caller's sites, or one of them. "
        "Residents: their own sites; operators and staff: any site, or all of them.",
        parameters=[
            OpenApiParameter("site", int, description="Only this site (one the caller may see).")
        ],
        responses=CreditBalanceSerializer,
    )
    @action(detail=False, filter_backends=[], pagination_class=None)
    def balance(self, request):
        """What the ledger holds per currency for the caller's sites (or one of them)."""
        sites = filters.CreditBalanceFilter(
            request.query_params, queryset=registry.site_list(user=request.user), request=request
        )
        if not sites.is_valid():
            raise ValidationError(sites.errors)
        site_ids = sites.qs.prefetch_related(None).values_list("id", flat=True)
        totals = selectors.credit_balance(site_ids)
        return Response(CreditBalanceSerializer({"balances": sorted(totals.items())}).data)
