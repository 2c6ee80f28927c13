"""Readings: one narrow table, `energy_readings`, one row per (sensor, time).

On TimescaleDB it is a hypertable (see migration 0002). The composite primary key is also the
duplicate guard: a repeat of the same (sensor, time) is dropped by the writer's
`ON CONFLICT DO NOTHING`, never stored twice. django-timescaledb's TimescaleDateTimeField is not
used because it drops the primary key to create the hypertable, and with it that guarantee.
"""

from django.contrib.postgres.indexes import BrinIndex
from django.db import models

from devices.models import Sensor, validate_timezone
from energy_portal.field_encryption import EncryptedTextField


class Reading(models.Model):
    pk = models.CompositePrimaryKey("sensor_id", "time")
    # The primary key's leading column already indexes sensor_id; a second index would only slow
    # every insert. No constraint in the database: checking it was 43 % of a writer batch, and
    # every insert already joins devices_sensor (telemetry.services.readings_insert_rows), so a
    # reading of an unknown sensor is never written. Deleting a sensor deletes its readings through
    # Django's cascade (one DELETE, readings have no signals).
    sensor = models.ForeignKey(
        Sensor,
        on_delete=models.CASCADE,
        related_name="readings",
        db_index=False,
        db_constraint=False,
    )
    time = models.DateTimeField()
    value = models.FloatField()

    class Meta:
        db_table = "energy_readings"
        permissions = [("ingest_readings", "Can ingest readings for any sensor")]
        # Time-range work across sensors (retention, fleet rollups) on plain PostgreSQL; BRIN is
        # tiny and nearly free to maintain on an append-mostly table.
        indexes = [BrinIndex(fields=["time"], name="energy_readings_time_brin")]

    def __str__(self) -> str:
        return f"{self.sensor_id} @ {self.time.isoformat()} = {self.value}"


class SourceStatus(models.TextChoices):
    OK = "ok", "OK"
    FAILING = "failing", "Failing"
    NEVER_RUN = "never_run", "Never run"


class FtpSource(models.Model):
    """A remote folder of `.sgl_v2` load-profile files, fetched on a schedule."""

    name = models.CharField(max_length=80, unique=True)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=21)
    username = models.CharField(max_length=120, default="anonymous")
    # Needed in clear to log in to the server, so encrypted (FIELD_ENCRYPTION_KEY), not hashed;
    # never shown back, in the admin or the API.
    password = EncryptedTextField(blank=True)
    folder = models.CharField(max_length=255, default="/")
    timezone = models.CharField(
        max_length=64,
        default="Europe/Lisbon",
        validators=[validate_timezone],
        help_text="Time zone of the local times inside the files.",
    )
    interval_s = models.PositiveIntegerField(
        "interval (s)", default=300, help_text="How often the folder is listed."
    )
    enabled = models.BooleanField(default=True)
    schedule = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="ftp_source",
    )
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    runs = models.PositiveIntegerField(default=0, editable=False)
    files_ingested = models.PositiveIntegerField(default=0, editable=False)
    files_quarantined = models.PositiveIntegerField(default=0, editable=False)
    rows_ingested = models.PositiveBigIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class FileStatus(models.TextChoices):
    INGESTED = "ingested", "Ingested"
    QUARANTINED = "quarantined", "Quarantined"
    DUPLICATE = "duplicate", "Duplicate content"


class IngestedFile(models.Model):
    """Every file a source has seen: the same content is never ingested twice, whatever its name."""

    source = models.ForeignKey(FtpSource, on_delete=models.CASCADE, related_name="files")
    name = models.CharField(max_length=255)
    size = models.PositiveBigIntegerField()
    checksum = models.CharField("SHA-256", max_length=64)
    status = models.CharField(max_length=12, choices=FileStatus.choices)
    rows = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)
    unknown_cpes = models.JSONField(default=list, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(fields=["source", "name"], name="ingested_file_name_once"),
            models.UniqueConstraint(
                fields=["checksum"],
                condition=models.Q(status="ingested"),
                name="ingested_file_content_once",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class PollSource(models.Model):
    """HTTP-polled appliances of one site, imported from an `iots-right.json` file."""

    site = models.ForeignKey("devices.Site", on_delete=models.CASCADE, related_name="poll_sources")
    name = models.CharField(max_length=80)
    config = models.JSONField(help_text="The imported iots-right.json, as validated.")
    monitoring_period_s = models.PositiveIntegerField(default=5)
    enabled = models.BooleanField(default=True)
    schedule = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="poll_source",
    )
    imported_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["site_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["site", "name"], name="poll_source_name_per_site")
        ]

    def __str__(self) -> str:
        return f"{self.site} / {self.name}"


class PolledAppliance(models.Model):
    """One appliance polled over HTTP, with its health counters."""

    source = models.ForeignKey(PollSource, on_delete=models.CASCADE, related_name="appliances")
    device = models.OneToOneField(
        "devices.Device", on_delete=models.CASCADE, related_name="polled_appliance"
    )
    uri = models.URLField(max_length=500)
    store_type = models.CharField(max_length=12)
    store_period_s = models.PositiveIntegerField()
    values = models.JSONField(help_text="[{type, tag, data, unit, sensor_key}]")
    polls = models.PositiveBigIntegerField(default=0, editable=False)
    failures = models.PositiveBigIntegerField(default=0, editable=False)
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    last_latency_ms = models.FloatField(null=True, blank=True, editable=False)
    last_polled_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    rows_ingested = models.PositiveBigIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["source_id", "device_id"]

    def __str__(self) -> str:
        return f"{self.device_id} ← {self.uri}"


# --- rollups and metrics (see telemetry/rollups.py) --------------------------------------------


class Rollup(models.Model):
    """Per-sensor aggregates of one bucket: sum, count, min, max and the value of the latest
    reading (`last`, for energy counters); the average is sum / count.

    Not managed by Django: on plain PostgreSQL these are tables that the `rollups_refresh` job
    keeps up to date; on TimescaleDB they are continuous aggregates (views) of the same name and
    columns. Migration 0004 creates one or the other.
    """

    pk = models.CompositePrimaryKey("sensor_id", "bucket")
    # No constraint in the database; rows of deleted sensors are cleaned up daily (rollups.py).
    sensor = models.ForeignKey(
        Sensor, on_delete=models.DO_NOTHING, db_index=False, db_constraint=False
    )
    bucket = models.DateTimeField()
    sum = models.FloatField()
    count = models.BigIntegerField()
    min = models.FloatField()
    max = models.FloatField()
    last = models.FloatField()

    class Meta:
        abstract = True
        managed = False

    def __str__(self) -> str:
        return f"{self.sensor_id} @ {self.bucket.isoformat()}: {self.count} readings"

    @property
    def avg(self) -> float:
        return self.sum / self.count


class Rollup15m(Rollup):
    class Meta(Rollup.Meta):
        db_table = "rollup_15m"


class Rollup1h(Rollup):
    class Meta(Rollup.Meta):
        db_table = "rollup_1h"


class Rollup1d(Rollup):
    class Meta(Rollup.Meta):
        db_table = "rollup_1d"


class RollupDirty(models.Model):
    """A 15-minute bucket of a sensor whose readings changed since its rollups were computed.

    Rows are added by a statement trigger on `energy_readings` (plain PostgreSQL only), in the
    inserting transaction; `seq` changes on every new mark, so the refresh job deletes only the
    marks it has seen.
    """

    pk = models.CompositePrimaryKey("sensor_id", "bucket")
    # The table exists on plain PostgreSQL only; see Rollup.sensor.
    sensor = models.ForeignKey(
        Sensor, on_delete=models.DO_NOTHING, db_index=False, db_constraint=False
    )
    bucket = models.DateTimeField()
    seq = models.BigIntegerField()

    class Meta:
        db_table = "rollup_dirty"
        managed = False

    def __str__(self) -> str:
        return f"{self.sensor_id} @ {self.bucket.isoformat()} (dirty)"


class SiteDay(models.Model):
    """Energy of a site on one local day (its time zone; DST days have 23 or 25 hours).

    `energy_kwh` follows the site-energy rule of telemetry/queries.py: the utility meter's
    energy when the meter has data that day (`source` 'meter'), else the sum of its devices'
    ('devices'); `source` is empty when nothing was measured. `cost` is by the site's tariff
    when the day was computed. Kept by `rollups.site_days_refresh` (plain PostgreSQL) from
    `SiteDayDirty`; queries use a row only when no newer readings of the site's day are waiting
    (telemetry/queries.py: `grid_energy`), so answers are always current.
    """

    pk = models.CompositePrimaryKey("site_id", "day")
    # The primary key's leading column indexes site_id.
    site = models.ForeignKey(
        "devices.Site", on_delete=models.CASCADE, related_name="days", db_index=False
    )
    day = models.DateField()
    energy_kwh = models.FloatField()
    source = models.CharField(max_length=8, blank=True)
    cost = models.DecimalField(max_digits=14, decimal_places=4)
    currency = models.CharField(max_length=3)
    computed_at = models.DateTimeField()

    class Meta:
        db_table = "rollup_site_day"
        # The fleet view reads one day (week, month) of every site.
        indexes = [models.Index(fields=["day"], name="rollup_site_day_day")]

    def __str__(self) -> str:
        return f"site {self.site_id} on {self.day}: {self.energy_kwh:.3f} kWh"


class SiteDayDirty(models.Model):
    """A site's local day whose readings changed since its `SiteDay` was computed; added by the
    rollup refresh when it recomputes the quarter-hours of that day (or, for an energy counter,
    of the day of the next reading, whose difference changed)."""

    pk = models.CompositePrimaryKey("site_id", "day")
    site = models.ForeignKey("devices.Site", on_delete=models.CASCADE, db_index=False)
    day = models.DateField()

    class Meta:
        db_table = "rollup_site_day_dirty"

    def __str__(self) -> str:
        return f"site {self.site_id} on {self.day} (dirty)"


class AreaMetrics(models.Model):
    """Figures of a site or room for its dashboard, recomputed every few minutes by a beat job.

    Power now: the sum of the latest reading (under 15 minutes old) of each power sensor. Energy
    and cost today: from the start of the local day (site time zone) until `computed_at`. Peak:
    the highest 15-minute average of the summed power of the day, with the start of that
    quarter-hour.
    """

    day = models.DateField(help_text="Local day (site time zone) the energy and peak are for.")
    power_w = models.FloatField(null=True, blank=True)
    power_at = models.DateTimeField(null=True, blank=True)
    energy_kwh = models.FloatField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=4, default=0)
    currency = models.CharField(max_length=3)
    peak_w = models.FloatField(null=True, blank=True)
    peak_at = models.DateTimeField(null=True, blank=True)
    computed_at = models.DateTimeField()

    class Meta:
        abstract = True


class SiteMetrics(AreaMetrics):
    site = models.OneToOneField(
        "devices.Site", on_delete=models.CASCADE, primary_key=True, related_name="metrics"
    )
    energy_source = models.CharField(
        max_length=8, default="devices", help_text="'meter' when the utility meter's data is used."
    )

    class Meta:
        verbose_name_plural = "site metrics"

    def __str__(self) -> str:
        return f"metrics of site {self.site_id} on {self.day}"


class RoomMetrics(AreaMetrics):
    room = models.OneToOneField(
        "devices.Room", on_delete=models.CASCADE, primary_key=True, related_name="metrics"
    )
    site = models.ForeignKey("devices.Site", on_delete=models.CASCADE, related_name="room_metrics")

    class Meta:
        verbose_name_plural = "room metrics"

    def __str__(self) -> str:
        return f"metrics of room {self.room_id} on {self.day}"
