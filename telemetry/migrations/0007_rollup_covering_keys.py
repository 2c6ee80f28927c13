"""Plain PostgreSQL: the hourly and daily rollups' primary keys carry every column (INCLUDE),
so reading one sensor's range is an index-only scan over adjacent index pages instead of one
heap page per row (rows of one sensor are spread over the heap, written time-major). At 50M
readings a year of one sensor's hours (8,760 rows) read 16 ms of scattered heap pages
(bench/query, daily_1y). TimescaleDB: continuous aggregates, nothing to do."""

from django.db import migrations

TABLES = ("rollup_1h", "rollup_1d")


def _primary_keys(schema_editor, include: str) -> None:
    from telemetry.timescale import is_timescale

    if is_timescale(schema_editor.connection):
        return
    with schema_editor.connection.cursor() as cursor:
        for table in TABLES:
            cursor.execute(
                f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey, "
                f"ADD CONSTRAINT {table}_pkey PRIMARY KEY (sensor_id, bucket) {include}"
            )


def cover(apps, schema_editor):
    _primary_keys(schema_editor, "INCLUDE (sum, count, min, max, last)")


def uncover(apps, schema_editor):
    _primary_keys(schema_editor, "")


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0006_site_day_by_day")]

    operations = [migrations.RunPython(cover, uncover)]
