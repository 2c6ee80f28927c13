"""Plain PostgreSQL: `rollup_counter_today`, for each cumulative counter of a site with a stored
beginning of today (`rollup_site_today`), its last reading before that beginning's `through`
(NULL: none), written by the rollup refresh in the same transaction. The fleet view's today
counts a counter's first quarter-hour after `through` from it instead of looking up each
counter's previous reading on every call (250 index probes of the readings at bench/query's
fleet). A table without a model or foreign keys, like `rollup_site_today` (Django's test flush
truncates devices_sensor without CASCADE); made on TimescaleDB too (it stays empty there)."""

from django.db import migrations

CREATE = """
CREATE TABLE rollup_counter_today (
    sensor_id bigint PRIMARY KEY,
    site_id bigint NOT NULL,
    through timestamptz NOT NULL,
    last double precision
)"""


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0009_rollup_dirty_by_bucket")]

    operations = [migrations.RunSQL(CREATE, "DROP TABLE rollup_counter_today")]
