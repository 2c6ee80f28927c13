"""Plain PostgreSQL: `rollup_site_today`, each site's energy of its local day in progress up to
a quarter-hour (`through`), kept by the rollup refresh every minute, so the fleet view computes
only the minutes since then (see telemetry/queries.py: `_site_energy_by_day`). A table without
a model and, like the rollups, without a foreign key (Django's test flush truncates
devices_site without CASCADE); the refresh drops rows of deleted sites. Made on TimescaleDB too (it stays empty there), so code that clears
it needs no backend check."""

from django.db import migrations

CREATE = """
CREATE TABLE rollup_site_today (
    site_id bigint PRIMARY KEY,
    day date NOT NULL,
    through timestamptz NOT NULL,
    plan_key text NOT NULL,
    meter_kwh double precision,
    devices_kwh double precision,
    computed_at timestamptz NOT NULL
)"""


class Migration(migrations.Migration):
    dependencies = [("devices", "0002_command"), ("telemetry", "0007_rollup_covering_keys")]

    operations = [migrations.RunSQL(CREATE, "DROP TABLE rollup_site_today")]
