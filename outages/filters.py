"""Filters of the outages and credits lists: a site or feeder is a choice only if the caller may
see it, so another resident's id is refused exactly as a missing one."""

import django_filters
from rest_framework.exceptions import ValidationError

from django.db.models import Q

from devices import selectors as registry
from devices.models import Feeder, Site
from energy_portal.filters import visible_to_caller
from outages import selectors
from outages.models import (
    CreditEntry,
    Outage,
    OutageKind,
    OutageStatus,
    SuspectedOutage,
    SuspectedStatus,
)

sites = visible_to_caller(Site, registry.site_list)
feeders = visible_to_caller(Feeder, registry.feeder_list)
outages = visible_to_caller(Outage, selectors.outage_list)


class OutageFilter(django_filters.FilterSet):
    site = django_filters.ModelChoiceFilter(queryset=sites)
    feeder = django_filters.ModelChoiceFilter(
        queryset=feeders,
        method="filter_feeder",
        help_text="The feeder's own outages and those of its sites.",
    )
    kind = django_filters.ChoiceFilter(choices=OutageKind.choices)
    status = django_filters.ChoiceFilter(
        choices=OutageStatus.choices,
        method="filter_status",
        help_text="Void outages (superseded by later reports) are listed only when asked for.",
    )
    # `true` or `false`, nothing else: a BooleanFilter ignores `open=maybe` and lists everything.
    open = django_filters.ChoiceFilter(
        choices=[("true", "true"), ("false", "false")],
        method="filter_open",
        help_text="Still going on (true), or not (false).",
    )
    start = django_filters.IsoDateTimeFilter(
        method="filter_start", help_text="Outages still going on at or after this instant."
    )
    end = django_filters.IsoDateTimeFilter(
        method="filter_end", help_text="Outages that started before this instant."
    )

    class Meta:
        model = Outage
        fields = ["site", "feeder", "kind", "status", "open", "start", "end"]

    def filter_queryset(self, queryset):
        start, end = self.form.cleaned_data.get("start"), self.form.cleaned_data.get("end")
        if start is not None and end is not None and end <= start:
            raise ValidationError({"end": ["end must be later than start."]})
        if not self.form.cleaned_data.get("status"):
            queryset = queryset.exclude(status=OutageStatus.VOID)
        return super().filter_queryset(queryset)

    def filter_feeder(self, queryset, name, value):
        return queryset.filter(Q(feeder=value) | Q(site__feeder=value))

    def filter_status(self, queryset, name, value):
        return queryset.filter(status=value)

    def filter_open(self, queryset, name, value):
        is_open = Q(status=OutageStatus.OPEN)
        return queryset.filter(is_open if value == "true" else ~is_open)

    def filter_start(self, queryset, name, value):
        return queryset.filter(Q(ended_at__isnull=True) | Q(ended_at__gt=value))

    def filter_end(self, queryset, name, value):
        return queryset.filter(started_at__lt=value)


class CreditEntryFilter(django_filters.FilterSet):
    site = django_filters.ModelChoiceFilter(queryset=sites)
    outage = django_filters.ModelChoiceFilter(queryset=outages)
    dr_event = django_filters.NumberFilter(field_name="dr_event_id")

    class Meta:
        model = CreditEntry
        fields = ["site", "outage", "dr_event", "currency"]


class CreditBalanceFilter(django_filters.FilterSet):
    """Narrows the caller's visible sites to one."""

    site = django_filters.ModelChoiceFilter(queryset=sites, method="filter_site")

    class Meta:
        model = Site
        fields = ["site"]

    def filter_site(self, queryset, name, value):
        return queryset.filter(pk=value.pk)


class SuspectedOutageFilter(django_filters.FilterSet):
    feeder = django_filters.ModelChoiceFilter(queryset=feeders)
    status = django_filters.ChoiceFilter(choices=SuspectedStatus.choices)

    class Meta:
        model = SuspectedOutage
        fields = ["feeder", "status"]
