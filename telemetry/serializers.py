from rest_framework import serializers

from telemetry.models import FtpSource, PolledAppliance, PollSource


class IngestItemSerializer(serializers.Serializer):
    """Documents one item of `POST ingest/`; items are checked one by one by the pipeline, so a
    bad item is reported by index and never sinks the rest."""

    sensor_id = serializers.CharField(help_text="Public sensor id, `<device uid>.<key>`.")
    timestamp = serializers.DateTimeField(help_text="RFC 3339 with a zone.")
    value = serializers.FloatField()


class IngestRejectionSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    error = serializers.CharField()


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    rejected = IngestRejectionSerializer(many=True)


class FtpSourceSerializer(serializers.ModelSerializer):
    kind = serializers.SerializerMethodField()

    class Meta:
        model = FtpSource
        fields = [
            "id",
            "kind",
            "name",
            "host",
            "port",
            "folder",
            "timezone",
            "interval_s",
            "enabled",
            "last_run_at",
            "last_error",
            "runs",
            "files_ingested",
            "files_quarantined",
            "rows_ingested",
        ]

    def get_kind(self, obj) -> str:
        return "ftp"


class PolledApplianceSerializer(serializers.ModelSerializer):
    device = serializers.SlugRelatedField(slug_field="uid", read_only=True)

    class Meta:
        model = PolledAppliance
        fields = [
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


class PollSourceSerializer(serializers.ModelSerializer):
    kind = serializers.SerializerMethodField()
    appliances = PolledApplianceSerializer(many=True, read_only=True)

    class Meta:
        model = PollSource
        fields = ["id", "kind", "name", "site", "monitoring_period_s", "enabled", "appliances"]

    def get_kind(self, obj) -> str:
        return "http"


class SourcesSerializer(serializers.Serializer):
    ftp = FtpSourceSerializer(many=True)
    http = PollSourceSerializer(many=True)


# --- answers of the history and analytics APIs (`history_apis.py`), for the schema -----------
# Energy is kWh rounded once per row as shown, to the watt-hour (0.001 kWh); money an exact
# decimal string in the currency's minor unit; every total is the sum of its rows as shown
# (`telemetry.queries.shown_kwh`).

SLOT_SOURCES = [("meter", "the utility meter"), ("devices", "the devices' own sensors")]


class HistorySiteSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    timezone = serializers.CharField(help_text="IANA zone of the site's local time.")
    currency = serializers.CharField(help_text="ISO 4217 code.")
    tariff_per_kwh = serializers.DecimalField(max_digits=8, decimal_places=4)


class HistorySlotSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text="Local start, with the site's offset.")
    end = serializers.DateTimeField()
    label = serializers.CharField(help_text="Short name for a chart axis, e.g. `01:00 WEST`.")
    name = serializers.CharField(help_text="Full name, e.g. `01:00 WEST\N{EN DASH}01:00 WET`.")
    energy_kwh = serializers.FloatField(allow_null=True, help_text="null: nothing measured.")
    cost = serializers.DecimalField(max_digits=14, decimal_places=4, allow_null=True)
    source = serializers.ChoiceField(choices=SLOT_SOURCES, allow_null=True)


class HistoryPreviousSerializer(serializers.Serializer):
    date = serializers.DateField(help_text="First day of the previous period.")
    energy_kwh = serializers.FloatField()
    cost = serializers.DecimalField(max_digits=14, decimal_places=4)
    results = HistorySlotSerializer(many=True)


class HistoryComparisonSerializer(serializers.Serializer):
    basis = serializers.ChoiceField(
        choices=[("whole", "the whole previous period"), ("to_date", "up to the same slot")]
    )
    previous_kwh = serializers.FloatField()
    change_pct = serializers.FloatField(allow_null=True, help_text="null: nothing before.")


class HistoryShareSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True, help_text="null: the devices in no room.")
    name = serializers.CharField()
    energy_kwh = serializers.FloatField()
    cost = serializers.DecimalField(max_digits=14, decimal_places=4)
    share_pct = serializers.FloatField(allow_null=True, help_text="Of the period's total.")


class HistoryDeviceShareSerializer(HistoryShareSerializer):
    id = serializers.IntegerField()
    uid = serializers.CharField()
    kind = serializers.CharField()
    room = serializers.CharField(allow_null=True)


class SiteEnergySerializer(serializers.Serializer):
    site = HistorySiteSerializer()
    period = serializers.ChoiceField(choices=["day", "week", "month", "year"])
    unit = serializers.ChoiceField(choices=["hour", "day", "month"])
    date = serializers.DateField(help_text="First day of the period.")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    in_progress = serializers.BooleanField()
    future = serializers.BooleanField(
        help_text="The whole period is still to come in the site's time: nothing can have "
        "been measured, and its zeros say so rather than that nothing was used."
    )
    energy_kwh = serializers.FloatField(help_text="The sum of `results` as given.")
    cost = serializers.DecimalField(
        max_digits=14, decimal_places=4, help_text="The sum of `results` as given."
    )
    results = HistorySlotSerializer(many=True)
    previous = HistoryPreviousSerializer()
    comparison = HistoryComparisonSerializer()
    devices = HistoryDeviceShareSerializer(many=True)
    rooms = HistoryShareSerializer(many=True)
    unattributed_kwh = serializers.FloatField(
        help_text="What the meter measured beyond the devices: `energy_kwh` less `devices`."
    )
    unattributed_cost = serializers.DecimalField(max_digits=14, decimal_places=4)


class GridSlotSerializer(serializers.Serializer):
    date = serializers.DateField(help_text="First local day of the slot.")
    end_date = serializers.DateField(help_text="Last local day of the slot.")
    label = serializers.CharField()
    name = serializers.CharField()
    energy_kwh = serializers.FloatField(allow_null=True, help_text="null: nothing measured.")


class GridFeederSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True, help_text="null: the sites without one.")
    code = serializers.CharField(allow_null=True)
    name = serializers.CharField()
    transformer_id = serializers.IntegerField(allow_null=True)
    transformer_code = serializers.CharField(allow_null=True)
    sites = serializers.IntegerField()
    energy_kwh = serializers.FloatField()


class GridTransformerSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    code = serializers.CharField()
    name = serializers.CharField()
    capacity_kva = serializers.DecimalField(max_digits=10, decimal_places=1, allow_null=True)
    substation_code = serializers.CharField()
    feeders = serializers.IntegerField()
    sites = serializers.IntegerField()
    energy_kwh = serializers.FloatField()


class GridTopSiteSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    feeder_code = serializers.CharField(allow_null=True)
    energy_kwh = serializers.FloatField()
    cost = serializers.DecimalField(
        max_digits=14, decimal_places=4, help_text="The sum of its local days' costs."
    )
    currency = serializers.CharField()
    source = serializers.CharField(help_text="`meter`, `devices` or `devices+meter`.")
    history_url = serializers.CharField(help_text="The site's history page of the period.")


class GridEnergySerializer(serializers.Serializer):
    period = serializers.ChoiceField(choices=["day", "week", "month", "year"])
    unit = serializers.ChoiceField(choices=["day", "month"], help_text="Of `results`.")
    date = serializers.DateField(help_text="First day of the period.")
    end_date = serializers.DateField(help_text="Last day of the period.")
    future = serializers.BooleanField(
        help_text="The period has begun nowhere yet: nothing can have been measured."
    )
    energy_kwh = serializers.FloatField(
        help_text="The sum of the sites' figures, of `feeders`, and of `results`."
    )
    sites = serializers.IntegerField()
    sites_with_data = serializers.IntegerField()
    results = GridSlotSerializer(many=True)
    feeders = GridFeederSerializer(many=True)
    transformers = GridTransformerSerializer(many=True)
    top_sites = GridTopSiteSerializer(many=True)


class NotReportingSiteSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class NotReportingDeviceSerializer(serializers.Serializer):
    uid = serializers.CharField()
    name = serializers.CharField()
    kind = serializers.CharField()
    state = serializers.ChoiceField(
        choices=[("silent", "online, nothing measured"), ("offline", "offline")]
    )
    last_seen = serializers.DateTimeField(allow_null=True)
    last_reading = serializers.DateTimeField(allow_null=True)
    site = NotReportingSiteSerializer()
    feeder_code = serializers.CharField(allow_null=True)


class NotReportingSerializer(serializers.Serializer):
    minutes = serializers.IntegerField()
    now = serializers.DateTimeField()
    count = serializers.IntegerField(help_text="All such devices; `results` holds `limit`.")
    online_silent = serializers.IntegerField()
    offline = serializers.IntegerField()
    results = NotReportingDeviceSerializer(many=True)
