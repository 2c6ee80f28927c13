"""Plain PostgreSQL: `rollup_site_plan`, each site's energy-plan key (a digest of its time zone,
sensors and how each counts, `telemetry.queries.plan_keys`) as of the last rollup refresh. The
refresh compares the keys it makes with these and has the stored days of a site whose key
changed computed again (`site_days_invalidate`), whichever way the site was changed (admin, API,
shell). A table without a model or foreign keys, like `rollup_site_today`; made on TimescaleDB
too (it stays empty there)."""

from django.db import migrations

CREATE = """
CREATE TABLE rollup_site_plan (
    site_id bigint PRIMARY KEY,
    plan_key text NOT NULL
)"""


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0010_rollup_counter_today")]

    operations = [migrations.RunSQL(CREATE, "DROP TABLE rollup_site_plan")]
