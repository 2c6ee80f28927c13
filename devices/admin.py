from knox.models import AuthToken

from django.apps import apps
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils import timezone

from devices import services
from devices.models import (
    Command,
    Device,
    Feeder,
    Room,
    Sensor,
    Site,
    Substation,
    Transformer,
)


class TransformerInline(admin.TabularInline):
    model = Transformer
    extra = 0


class FeederInline(admin.TabularInline):
    model = Feeder
    extra = 0


@admin.register(Substation)
class SubstationAdmin(admin.ModelAdmin):
    list_display = ["code", "name"]
    search_fields = ["code", "name"]
    inlines = [TransformerInline]


@admin.register(Transformer)
class TransformerAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "substation", "capacity_kva"]
    list_filter = ["substation"]
    search_fields = ["code", "name", "substation__code"]
    list_select_related = ["substation"]
    inlines = [FeederInline]


@admin.register(Feeder)
class FeederAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "transformer"]
    list_filter = ["transformer__substation", "transformer"]
    search_fields = ["code", "name"]
    list_select_related = ["transformer"]


class RoomInline(admin.TabularInline):
    model = Room
    extra = 0


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ["name", "cpe", "feeder", "timezone", "tariff_per_kwh", "currency"]
    list_filter = ["feeder__transformer__substation", "feeder", "currency", "timezone"]
    search_fields = ["name", "address", "cpe", "residents__username", "residents__email"]
    list_select_related = ["feeder"]
    filter_horizontal = ["residents"]
    inlines = [RoomInline]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "site"]
    search_fields = ["name", "site__name"]
    list_select_related = ["site"]


class SensorInline(admin.TabularInline):
    model = Sensor
    extra = 0


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ["uid", "name", "kind", "site", "room", "controllable", "online", "last_seen"]
    list_filter = ["online", "kind", "controllable", "site__feeder", "site"]
    search_fields = ["uid", "name", "site__name"]
    # A room shows as "site / room", so its site is loaded with it.
    list_select_related = ["site", "room__site"]
    readonly_fields = ["online", "last_seen", "token_rotated_at", "created_at"]
    autocomplete_fields = ["site"]
    inlines = [SensorInline]
    actions = ["rotate_tokens"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
        else:
            # A new device gets its first token here; the token page is shown by response_add.
            obj._issued_token = services.device_issue_token(device=obj)

    def response_add(self, request, obj, post_url_continue=None):
        token = getattr(obj, "_issued_token", None)
        if token:
            return self._token_page(request, [(obj, token)], "Device created")
        return super().response_add(request, obj, post_url_continue)

    @admin.action(description="Rotate token of selected devices (shows the new tokens once)")
    def rotate_tokens(self, request, queryset):
        issued = [(device, services.device_issue_token(device=device)) for device in queryset]
        self.message_user(
            request,
            f"Issued {len(issued)} new token(s); old tokens no longer work.",
            messages.WARNING,
        )
        return self._token_page(request, issued, "New device tokens")

    def _token_page(self, request, issued, title):
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "issued": issued,
            "opts": self.model._meta,
        }
        response = TemplateResponse(request, "admin/devices/device/tokens.html", context)
        response["Cache-Control"] = "no-store"  # the page holds secrets
        return response


@admin.register(Sensor)
class SensorAdmin(admin.ModelAdmin):
    list_display = ["__str__", "kind", "unit"]
    list_filter = ["kind"]
    search_fields = ["key", "device__uid"]
    list_select_related = ["device"]


@admin.register(Command)
class CommandAdmin(admin.ModelAdmin):
    """Commands as sent and answered; issued from the API, the resident's page or demand
    response (through `services.command_issue`), never edited here."""

    list_display = [
        "name",
        "device",
        "status",
        "created_at",
        "sent_at",
        "completed_at",
        "created_by",
    ]
    list_filter = ["status", "name"]
    search_fields = ["device__uid", "name"]
    list_select_related = ["device", "created_by"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Command._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# knox's own admin lists each token's digest and searches by the token's first characters; this
# one shows whose token it is and until when, never any part of it.
admin.site.unregister(AuthToken)
# and names them as people here know them (knox calls them "Auth tokens" under "Knox").
apps.get_app_config("knox").verbose_name = "API access"
AuthToken._meta.verbose_name = "API token"
AuthToken._meta.verbose_name_plural = "API tokens"


@admin.register(AuthToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["user", "created", "expiry", "active"]
    list_filter = ["created", "expiry"]
    search_fields = ["user__username"]
    list_select_related = ["user"]
    fields = readonly_fields = ["user", "created", "expiry"]
    ordering = ["-created"]

    @admin.display(boolean=True)
    def active(self, obj) -> bool:
        return obj.expiry is None or obj.expiry > timezone.now()

    def has_add_permission(self, request):
        return False  # tokens come from signing in (POST /api/v1/auth/token/)

    def has_change_permission(self, request, obj=None):
        return False  # deleting one revokes it; nothing else about a token may change
