import json

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q, Sum
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from telemetry import ftp_ingest, polling, tasks
from telemetry.iots_config import IotsConfigError
from telemetry.models import FtpSource, IngestedFile, PolledAppliance, PollSource

MAX_IOTS_FILE_BYTES = 1_048_576


class PollSourceForm(forms.ModelForm):
    """A source is made by uploading its `iots-right.json`; uploading again re-imports it."""

    iots_file = forms.FileField(
        label="iots-right.json",
        required=False,
        help_text="The file describing the appliances. On an existing source, upload a new "
        "version to re-import it, or leave empty to keep the current one.",
    )

    class Meta:
        model = PollSource
        fields = ["site", "name", "enabled"]

    def clean(self):
        cleaned = super().clean()
        upload = cleaned.get("iots_file")
        if upload is None:
            if self.instance.pk is None:
                self.add_error("iots_file", "Upload the iots-right.json file of the appliances.")
            return cleaned
        if upload.size > MAX_IOTS_FILE_BYTES:
            self.add_error("iots_file", "The file is larger than 1 MiB; is it the right one?")
            return cleaned
        site = self.instance.site if self.instance.pk else cleaned.get("site")
        name = self.instance.name if self.instance.pk else cleaned.get("name")
        if site is None or not name:
            return cleaned
        data = upload.read()
        try:
            polling.iots_plan(site=site, name=name, data=data)
        except IotsConfigError as exc:
            problems = [f"{path}: {message}" for path, message in exc.problems]
            self.add_error("iots_file", ["The file was refused; nothing was imported.", *problems])
        else:
            cleaned["iots_data"] = data
        return cleaned


class ReadOnlyInline(admin.TabularInline):
    """Records shown under their parent, never edited there."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class PolledApplianceInline(ReadOnlyInline):
    model = PolledAppliance
    fields = readonly_fields = [
        "device",
        "uri",
        "store_type",
        "store_period_s",
        "polls",
        "failures",
        "consecutive_failures",
        "last_error",
        "last_latency_ms",
        "last_polled_at",
        "last_success_at",
        "rows_ingested",
    ]


@admin.register(PollSource)
class PollSourceAdmin(admin.ModelAdmin):
    form = PollSourceForm
    list_display = [
        "name",
        "site",
        "monitoring_period_s",
        "enabled",
        "appliance_count",
        "failing_count",
        "poll_count",
        "failure_count",
        "imported_at",
    ]
    list_filter = ["enabled", "site"]
    search_fields = ["name", "site__name"]
    list_select_related = ["site"]
    actions = ["enable_sources", "disable_sources"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_appliances=Count("appliances"),
                n_failing=Count("appliances", filter=Q(appliances__consecutive_failures__gt=0)),
                n_polls=Sum("appliances__polls"),
                n_failures=Sum("appliances__failures"),
            )
        )

    add_fields = ["site", "name", "enabled", "iots_file"]
    # Shown read-only on an existing source: its identity, and what came from its file.
    from_file = ["monitoring_period_s", "imported_at", "schedule_link", "config_shown"]

    def get_fields(self, request, obj=None):
        return self.add_fields if obj is None else [*self.add_fields, *self.from_file]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["site", "name", *self.from_file]

    def get_inlines(self, request, obj):
        return [PolledApplianceInline] if obj is not None else []

    @admin.display(description="appliances", ordering="n_appliances")
    def appliance_count(self, obj):
        return obj.n_appliances

    @admin.display(description="failing now", ordering="n_failing")
    def failing_count(self, obj):
        return obj.n_failing

    @admin.display(description="polls", ordering="n_polls")
    def poll_count(self, obj):
        return obj.n_polls or 0

    @admin.display(description="failures", ordering="n_failures")
    def failure_count(self, obj):
        return obj.n_failures or 0

    @admin.display(description="schedule")
    def schedule_link(self, obj):
        if obj.schedule_id is None:
            return "—"
        url = reverse("admin:django_celery_beat_periodictask_change", args=[obj.schedule_id])
        return format_html('<a href="{}">{}</a>', url, obj.schedule)

    @admin.display(description="imported iots-right.json")
    def config_shown(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.config, indent=2, ensure_ascii=False))

    def save_model(self, request, obj, form, change):
        enabled = obj.enabled
        data = form.cleaned_data.get("iots_data")
        if data is not None:
            report = polling.iots_import(site=obj.site, name=obj.name, data=data)
            # On add, the import created the row; this form's object becomes that row.
            obj.pk = report.source.pk
            obj.refresh_from_db()
            for line in report.created + report.updated + report.removed:
                self.message_user(request, line, messages.INFO)
            if not report.changed:
                self.message_user(request, "The file changed nothing.", messages.INFO)
        obj.enabled = enabled
        obj.save(update_fields=["enabled"])
        polling.poll_source_schedule(source=obj)

    def delete_model(self, request, obj):
        polling.poll_source_delete(source=obj)

    def delete_queryset(self, request, queryset):
        for source in queryset:
            polling.poll_source_delete(source=source)

    @admin.action(description="Enable polling of the selected sources")
    def enable_sources(self, request, queryset):
        self._set_enabled(request, queryset, enabled=True)

    @admin.action(description="Disable polling of the selected sources")
    def disable_sources(self, request, queryset):
        self._set_enabled(request, queryset, enabled=False)

    def _set_enabled(self, request, queryset, *, enabled: bool):
        for source in queryset:
            source.enabled = enabled
            source.save(update_fields=["enabled"])
            polling.poll_source_schedule(source=source)
        state = "enabled" if enabled else "disabled"
        self.message_user(request, f"Polling {state} for {len(queryset)} source(s).")


class PollHealthFilter(admin.SimpleListFilter):
    title = "health"
    parameter_name = "health"

    def lookups(self, request, model_admin):
        return [("failing", "Failing now"), ("ok", "OK"), ("never", "Never polled")]

    def queryset(self, request, queryset):
        if self.value() == "failing":
            return queryset.filter(consecutive_failures__gt=0)
        if self.value() == "ok":
            return queryset.filter(consecutive_failures=0, last_polled_at__isnull=False)
        if self.value() == "never":
            return queryset.filter(last_polled_at__isnull=True)
        return queryset


@admin.register(PolledAppliance)
class PolledApplianceAdmin(admin.ModelAdmin):
    """Read-only: an appliance is defined by its source's file; re-import to change it."""

    list_display = [
        "device",
        "source",
        "uri",
        "store_type",
        "polls",
        "failures",
        "consecutive_failures",
        "last_error",
        "last_latency_ms",
        "last_polled_at",
        "last_success_at",
        "rows_ingested",
    ]
    list_filter = [PollHealthFilter, "store_type", "source__site", "source"]
    search_fields = ["device__uid", "device__name", "uri", "source__name"]
    list_select_related = ["device", "source__site"]
    readonly_fields = ["values", *list_display]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- FTP sources of .sgl_v2 load-profile files, and the files they delivered ---------------

RECENT_FILES = 20
MIN_FTP_INTERVAL_S = 10


class FtpSourceForm(forms.ModelForm):
    # Write-only: PasswordInput never renders the stored value back into the page.
    password = forms.CharField(
        required=False,
        max_length=255,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted and never shown. Leave empty to keep the current password.",
    )

    class Meta:
        model = FtpSource
        fields = [
            "name",
            "enabled",
            "host",
            "port",
            "username",
            "password",
            "folder",
            "timezone",
            "interval_s",
        ]

    def clean_password(self):
        # The password is never sent back to the browser, so an empty field means "unchanged".
        password = self.cleaned_data["password"]
        if not password and self.instance.pk is not None:
            return self.instance.password
        return password

    def clean_interval_s(self):
        interval = self.cleaned_data["interval_s"]
        if interval < MIN_FTP_INTERVAL_S:
            raise forms.ValidationError(
                f"List the folder at most every {MIN_FTP_INTERVAL_S} seconds; "
                "files arrive every 15 minutes at best."
            )
        return interval


class IngestedFileInline(ReadOnlyInline):
    model = IngestedFile
    verbose_name_plural = f"recent files (latest {RECENT_FILES})"
    fields = readonly_fields = ["name", "status", "rows", "size", "received_at"]
    show_change_link = True


@admin.register(FtpSource)
class FtpSourceAdmin(admin.ModelAdmin):
    form = FtpSourceForm
    list_display = [
        "name",
        "host",
        "folder",
        "enabled",
        "last_run_at",
        "runs",
        "files_ingested",
        "files_quarantined",
        "rows_ingested",
        "last_error_short",
    ]
    list_filter = ["enabled"]
    search_fields = ["name", "host", "folder"]
    status_fields = [
        "last_run_at",
        "runs",
        "files_ingested",
        "files_quarantined",
        "rows_ingested",
        "last_error",
        "schedule",
        "all_files",
    ]
    readonly_fields = status_fields
    fieldsets = [
        (None, {"fields": ["name", "enabled"]}),
        ("Server", {"fields": ["host", "port", "username", "password", "folder"]}),
        ("Files", {"fields": ["timezone", "interval_s"]}),
        ("Runs", {"fields": status_fields}),
    ]
    inlines = [IngestedFileInline]
    actions = ["poll_now"]

    def get_formset_kwargs(self, request, obj, inline, prefix):
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, IngestedFileInline) and obj is not None and obj.pk is not None:
            recent = obj.files.order_by("-received_at").values("pk")[:RECENT_FILES]
            kwargs["queryset"] = kwargs["queryset"].filter(pk__in=recent)
        return kwargs

    @admin.display(description="last error")
    def last_error_short(self, obj):
        first_line = obj.last_error.split("\n", 1)[0]
        return first_line if len(first_line) <= 80 else f"{first_line[:79]}…"

    @admin.display(description="files")
    def all_files(self, obj):
        if obj.pk is None:
            return "—"
        url = reverse("admin:telemetry_ingestedfile_changelist") + f"?source__id__exact={obj.pk}"
        return format_html('<a href="{}">All files of this source</a>', url)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        ftp_ingest.ftp_source_schedule(source=obj)

    def delete_model(self, request, obj):
        ftp_ingest.ftp_source_delete(source=obj)

    def delete_queryset(self, request, queryset):
        for source in queryset:
            ftp_ingest.ftp_source_delete(source=source)

    @admin.action(description="Poll the selected sources now", permissions=["change"])
    def poll_now(self, request, queryset):
        queued = 0
        for source in queryset:
            if not source.enabled:
                self.message_user(
                    request, f"{source} is disabled; enable it to poll it.", messages.WARNING
                )
                continue
            tasks.ftp_source_poll.delay(source.id)
            queued += 1
        if queued:
            self.message_user(
                request,
                f"Queued a poll of {queued} source(s); reload this page in a moment to see "
                "the files and counters.",
            )


@admin.register(IngestedFile)
class IngestedFileAdmin(admin.ModelAdmin):
    """Read-only: a record is what happened to a file. Deleting one makes the next poll fetch
    that file again (e.g. after giving a site an unknown CPE); stored readings are not doubled."""

    list_display = ["name", "source", "status", "rows", "size", "received_at"]
    list_filter = ["status", "source"]
    search_fields = ["name", "checksum"]
    list_select_related = ["source"]
    fields = readonly_fields = [
        "name",
        "source",
        "status",
        "rows",
        "size",
        "checksum",
        "received_at",
        "errors_shown",
        "unknown_cpes_shown",
    ]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="errors")
    def errors_shown(self, obj):
        if not obj.errors:
            return "—"
        items = ((error.get("message", ""),) for error in obj.errors)
        return format_html("<ul>{}</ul>", format_html_join("", "<li>{}</li>", items))

    @admin.display(description="unknown CPEs")
    def unknown_cpes_shown(self, obj):
        if not obj.unknown_cpes:
            return "—"
        items = ((entry["cpe"], entry["records"]) for entry in obj.unknown_cpes)
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}: {} records not ingested</li>", items)
        )
