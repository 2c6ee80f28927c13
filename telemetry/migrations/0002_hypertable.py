from django.db import migrations


def make_hypertable(apps, schema_editor):
    from telemetry.timescale import hypertable_create, is_timescale, policies_apply

    if is_timescale(schema_editor.connection):
        hypertable_create(schema_editor.connection)
        policies_apply(schema_editor.connection)


class Migration(migrations.Migration):
    # create_hypertable cannot run inside the transaction that created the table on every
    # TimescaleDB version; keep it on its own.
    atomic = False

    dependencies = [("telemetry", "0001_initial")]

    operations = [migrations.RunPython(make_hypertable, migrations.RunPython.noop)]
