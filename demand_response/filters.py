"""Filters of the demand-response lists: a site is a choice only if the caller may see it, so
another resident's id is refused exactly as a missing one."""

import django_filters

from demand_response.models import Event, EventStatus, Invitation, InvitationStatus, Program
from devices import selectors as registry
from devices.models import Site
from energy_portal.filters import visible_to_caller

sites = visible_to_caller(Site, registry.site_list)


class EventFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=EventStatus.choices)
    program = django_filters.ModelChoiceFilter(queryset=Program.objects.all())
    start_after = django_filters.IsoDateTimeFilter(
        field_name="start", lookup_expr="gte", help_text="Events starting at or after this."
    )
    start_before = django_filters.IsoDateTimeFilter(
        field_name="start", lookup_expr="lt", help_text="Events starting before this."
    )

    class Meta:
        model = Event
        fields = ["status", "program"]


class InvitationFilter(django_filters.FilterSet):
    event = django_filters.NumberFilter(field_name="event_id", min_value=1, max_value=2**31 - 1)
    site = django_filters.ModelChoiceFilter(queryset=sites)
    status = django_filters.ChoiceFilter(choices=InvitationStatus.choices)

    class Meta:
        model = Invitation
        fields = ["event", "site", "status"]
