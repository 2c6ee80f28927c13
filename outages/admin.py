"""Admin for credit policies and their assignment to sites (editable), outages and the credit
ledger (read only: outages are derived from power events, and the ledger is append-only)."""

from django.contrib import admin

from outages.credit_rules import round_money
from outages.models import CreditEntry, CreditPolicy, Outage, PowerEvent, SitePolicy


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(CreditPolicy)
class CreditPolicyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "currency",
        "threshold",
        "base_amount",
        "count_started_periods",
        "cap",
        "min_sites_affected",
        "is_default",
    ]
    list_filter = ["currency", "is_default"]
    search_fields = ["name"]


@admin.register(SitePolicy)
class SitePolicyAdmin(admin.ModelAdmin):
    list_display = ["site", "policy"]
    list_select_related = ["site", "policy"]
    autocomplete_fields = ["site"]
    list_filter = ["policy"]
    search_fields = ["site__name"]


@admin.register(Outage)
class OutageAdmin(ReadOnlyAdmin):
    list_display = ["id", "kind", "site", "started_at", "ended_at", "momentary", "status"]
    list_filter = ["kind", "status", "momentary"]
    list_select_related = ["site"]
    date_hierarchy = "started_at"
    search_fields = ["site__name"]


@admin.register(CreditEntry)
class CreditEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "site", "shown_amount", "reason", "revision", "memo"]
    list_filter = ["currency"]
    list_select_related = ["site"]
    date_hierarchy = "created_at"
    search_fields = ["site__name", "memo"]

    @admin.display(description="amount", ordering="amount")
    def shown_amount(self, entry: CreditEntry) -> str:
        return f"{round_money(entry.amount, entry.currency)} {entry.currency}"


@admin.register(PowerEvent)
class PowerEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "device", "site", "state", "received_at"]
    list_filter = ["state"]
    list_select_related = ["device", "site"]
    date_hierarchy = "at"
    search_fields = ["device__uid", "site__name"]
