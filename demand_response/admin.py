"""Admin for programs and auto-responses (editable), and for events, invitations and settlement
results (read only: they change only through `demand_response.services`, which keeps the status
history, the invitations and the ledger in step)."""

from django.contrib import admin

from demand_response.models import (
    Event,
    EventStatusChange,
    Invitation,
    Program,
    SettlementResult,
    SiteAutoResponse,
)
from outages.admin import ReadOnlyAdmin


@admin.register(Program)
class ProgramAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "reward_per_kwh",
        "currency",
        "baseline_method",
        "notification_lead_time",
    ]
    list_filter = ["currency", "baseline_method"]
    search_fields = ["name"]
    filter_horizontal = ["eligible_sites", "eligible_feeders"]


@admin.register(SiteAutoResponse)
class SiteAutoResponseAdmin(admin.ModelAdmin):
    list_display = ["site", "mode", "max_level"]
    list_filter = ["mode"]
    list_select_related = ["site"]
    autocomplete_fields = ["site"]
    search_fields = ["site__name"]


class EventStatusChangeInline(admin.TabularInline):
    model = EventStatusChange
    extra = 0
    can_delete = False
    readonly_fields = ["status", "at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["id", "program", "start", "end", "signal_type", "signal_value", "status"]
    list_filter = ["status", "program", "signal_type"]
    list_select_related = ["program"]
    date_hierarchy = "start"
    inlines = [EventStatusChangeInline]


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyAdmin):
    list_display = ["event", "site", "status", "answered_by", "answered_at"]
    list_filter = ["status", "answered_by"]
    list_select_related = ["event__program", "site"]
    search_fields = ["site__name"]


@admin.register(SettlementResult)
class SettlementResultAdmin(ReadOnlyAdmin):
    list_display = [
        "event",
        "site",
        "status",
        "baseline_kwh",
        "actual_kwh",
        "delivered_kwh",
        "reward",
        "currency",
    ]
    list_filter = ["status", "currency"]
    list_select_related = ["event__program", "site"]
    search_fields = ["site__name"]
