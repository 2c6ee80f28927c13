"""Readings: one narrow table, `energy_readings`, one row per (sensor, time).

On TimescaleDB it is a hypertable (see migration 0002). The composite primary key is also the
duplicate guard: a repeat of the same (sensor, time) is dropped by the writer's
`ON CONFLICT DO NOTHING`, never stored twice. django-timescaledb's TimescaleDateTimeField is not
used because it drops the primary key to create the hypertable, and with it that guarantee.
"""

from django.contrib.postgres.indexes import BrinIndex
from django.db import models

from devices.models import Sensor


class Reading(models.Model):
    pk = models.CompositePrimaryKey("sensor_id", "time")
    # The primary key's leading column already indexes sensor_id; a second index would only slow
    # every insert.
    sensor = models.ForeignKey(
        Sensor, on_delete=models.CASCADE, related_name="readings", db_index=False
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
