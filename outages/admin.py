"""Admin for credit policies and their assignment to sites (editable), outages and the credit
ledger (read only: outages are derived from power events, and the ledger is append-only)."""

from django.contrib import admin
from django.forms.models import BaseInlineFormSet

from devices.admin import SiteAdmin as RegistrySiteAdmin
from devices.models import Site
from outages import services
from outages.credit_rules import round_money
from outages.forms import STRICT_DURATIONS
from outages.models import (
    CreditEntry,
    CreditPolicy,
    Outage,
    PowerEvent,
    SitePolicy,
    SuspectedOutage,
    SuspectedSite,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(CreditPolicy)
class CreditPolicyAdmin(admin.ModelAdmin):
    formfield_overrides = STRICT_DURATIONS
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


class SitePolicyFormSet(BaseInlineFormSet):
    def delete_existing(self, obj, commit=True):
        # Through the service, which deletes by query: `obj.delete()` would blank its primary
        # key, the site, and the change message's `str(obj)` would then fail.
        if commit:
            services.site_credit_policy_set(site_id=obj.site_id, policy_id=None)


class SitePolicyInline(admin.StackedInline):
    model = SitePolicy
    formset = SitePolicyFormSet
    verbose_name = "own credit policy (none: the default applies)"
    max_num = 1
    extra = 0


# The registry's site page with the site's credit policy on it: devices must not know about
# outages, so outages (installed after devices) swaps in this subclass.
admin.site.unregister(Site)


@admin.register(Site)
class SiteAdmin(RegistrySiteAdmin):
    inlines = [*RegistrySiteAdmin.inlines, SitePolicyInline]


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


class SuspectedSiteInline(admin.TabularInline):
    model = SuspectedSite
    fields = ["site", "dropped_at", "back_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(SuspectedOutage)
class SuspectedOutageAdmin(ReadOnlyAdmin):
    """Read only: derived from the devices' socket drops and the power reports."""

    list_display = ["id", "feeder", "started_at", "status", "resolved_at", "grid_outage"]
    list_filter = ["status", "feeder"]
    list_select_related = ["feeder", "grid_outage"]
    date_hierarchy = "started_at"
    inlines = [SuspectedSiteInline]
