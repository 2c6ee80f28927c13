"""Admin for programs, auto-responses and VTN connections (editable), and for events,
invitations, settlement results, VTN events and the VEN's messages (read only: they change only
through the services, which keep the status history, the invitations and the ledger in step)."""

from django import forms
from django.contrib import admin

from demand_response.models import (
    Event,
    EventStatusChange,
    Invitation,
    Program,
    SettlementResult,
    SiteAutoResponse,
    VtnConnection,
    VtnEvent,
    VtnMessage,
)
from demand_response.openadr import mapping
from outages.admin import ReadOnlyAdmin
from outages.forms import STRICT_DURATIONS


@admin.register(Program)
class ProgramAdmin(admin.ModelAdmin):
    formfield_overrides = STRICT_DURATIONS
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
    list_display = [
        "id", "program", "start", "end", "signal_type", "signal_value", "status", "vtn_source",
    ]  # fmt: skip
    list_filter = ["status", "program", "signal_type"]
    list_select_related = ["program", "vtn_source__connection"]
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


class VtnEventInline(admin.TabularInline):
    model = VtnEvent
    extra = 0
    can_delete = False
    fields = [
        "vtn_event_id",
        "event",
        "modification_number",
        "vtn_status",
        "opt_type",
        "updated_at",
    ]
    readonly_fields = fields
    ordering = ["-received_at"]

    def has_add_permission(self, request, obj=None):
        return False


class VtnMessageInline(admin.TabularInline):
    model = VtnMessage
    extra = 0
    can_delete = False
    fields = ["sent_at", "kind", "vtn_event", "opt_type", "report_name", "value", "ok", "detail"]
    readonly_fields = fields
    ordering = ["-sent_at", "-id"]
    max_num = 0

    def get_queryset(self, request):
        recent = VtnMessage.objects.order_by("-sent_at", "-id").values("pk")[:50]
        return (
            super().get_queryset(request).filter(pk__in=list(recent.values_list("pk", flat=True)))
        )


class _WriteOnlyTextarea(forms.Textarea):
    """A textarea (a PEM key has line breaks) that never renders the stored value back."""

    def format_value(self, value):
        return ""


class VtnConnectionForm(forms.ModelForm):
    vtn_url = forms.URLField(
        max_length=500,
        assume_scheme="https",
        help_text=VtnConnection._meta.get_field("vtn_url").help_text,
    )
    client_key = forms.CharField(
        required=False,
        strip=False,
        widget=_WriteOnlyTextarea(attrs={"rows": 4}),
        help_text="PEM private key of the client certificate: stored encrypted and never "
        "shown. Leave empty to keep the current key.",
    )

    class Meta:
        model = VtnConnection
        fields = [
            "vtn_url", "ven_name", "program", "enabled", "poll_interval_s", "target_map",
            "opt_rule", "client_cert", "client_key", "vtn_ca_cert", "vtn_fingerprint",
        ]  # fmt: skip

    def clean_client_key(self):
        key = self.cleaned_data["client_key"]
        if not key and self.instance.pk is not None:
            return self.instance.client_key
        return key

    def clean(self):
        data = super().clean()
        errors = mapping.target_map_errors(data.get("target_map") or {})
        if errors:
            self.add_error("target_map", errors)
        if bool(data.get("client_cert")) != bool(data.get("client_key")):
            self.add_error("client_cert", "Give the certificate and its key together (or neither).")
        return data


@admin.register(VtnConnection)
class VtnConnectionAdmin(admin.ModelAdmin):
    """The VTNs the OpenADR VEN polls: configuration here, state written by the VEN process."""

    form = VtnConnectionForm
    list_display = ["ven_name", "vtn_url", "program", "enabled", "state", "last_poll_at", "ven_id"]
    list_filter = ["state", "enabled", "program"]
    list_select_related = ["program"]
    search_fields = ["ven_name", "vtn_url", "ven_id"]
    readonly_fields = VtnConnection.VEN_WRITTEN
    inlines = [VtnEventInline, VtnMessageInline]


@admin.register(VtnEvent)
class VtnEventAdmin(ReadOnlyAdmin):
    list_display = [
        "vtn_event_id", "connection", "event", "modification_number", "vtn_status", "opt_type",
        "received_at",
    ]  # fmt: skip
    list_filter = ["connection", "vtn_status", "opt_type"]
    list_select_related = ["connection", "event__program"]
    search_fields = ["vtn_event_id"]


@admin.register(VtnMessage)
class VtnMessageAdmin(ReadOnlyAdmin):
    list_display = [
        "sent_at",
        "connection",
        "kind",
        "vtn_event",
        "opt_type",
        "report_name",
        "value",
        "ok",
    ]
    list_filter = ["connection", "kind", "ok", "report_name"]
    list_select_related = ["connection", "vtn_event"]
    date_hierarchy = "sent_at"
