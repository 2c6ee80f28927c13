"""Plain PostgreSQL: marks by time. The fleet view asks which marks lie in a period for all
sensors at once; by the primary key (sensor_id, bucket) that was a scan of all of
`rollup_dirty`, whose file keeps the size of the largest backlog it ever held (after a catch-up
of 1M marks, 50 MB read for 1,000 marks left: 7-10 ms of every fleet query). TimescaleDB: no
marks, nothing to do."""

from django.db import migrations


def _run(schema_editor, sql: str) -> None:
    from telemetry.timescale import is_timescale

    if is_timescale(schema_editor.connection):
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(sql)


def create(apps, schema_editor):
    _run(schema_editor, "CREATE INDEX IF NOT EXISTS rollup_dirty_bucket ON rollup_dirty (bucket, sensor_id)")


def drop(apps, schema_editor):
    _run(schema_editor, "DROP INDEX IF EXISTS rollup_dirty_bucket")


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0008_rollup_site_today")]

    operations = [migrations.RunPython(create, drop)]
