"""`fleet_version`: one number that moves on with every change to what the fleet view's grid and
energy plan are made of (`telemetry.queries._GRID`, `_PLAN_SQL`), set by statement triggers in
the changing statement's transaction, whichever way the change is made (admin, API, shell, SQL):

- rows added, deleted or truncated in sites, feeders, transformers, substations, sensors,
  devices and polled appliances;
- updates of the columns those statements read: a site's name, time zone, tariff, currency and
  feeder; a feeder's code, name and transformer; a transformer's code, name, capacity and
  substation; a substation's code; a sensor's kind, unit, key and device; a device's kind, site
  and room; a polled appliance's device and store type. Updates of anything else (a device's
  online flag and last seen, an appliance's poll counters) leave it alone.

The fleet view reads this one number per call and reads the grid's and plan's rows again only
when it moved. Values come from a sequence, so a rolled-back change never hands its number to
another change. A column the grid or plan statements start to read must be added here.

On plain PostgreSQL and TimescaleDB alike.
"""

from django.db import migrations

WATCHED = {
    "devices_site": ["id", "name", "timezone", "tariff_per_kwh", "currency", "feeder_id"],
    "devices_feeder": ["id", "code", "name", "transformer_id"],
    "devices_transformer": ["id", "code", "name", "capacity_kva", "substation_id"],
    "devices_substation": ["id", "code"],
    "devices_sensor": ["id", "kind", "unit", "key", "device_id"],
    "devices_device": ["id", "kind", "site_id", "room_id"],
    "telemetry_polledappliance": ["id", "device_id", "store_type"],
}

CREATE = [
    "CREATE SEQUENCE fleet_version_seq",
    """CREATE TABLE fleet_version (
        id smallint PRIMARY KEY CHECK (id = 1),
        version bigint NOT NULL
    )""",
    "INSERT INTO fleet_version (id, version) VALUES (1, nextval('fleet_version_seq'))",
    """CREATE FUNCTION fleet_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE fleet_version SET version = nextval('fleet_version_seq') WHERE id = 1;
        RETURN NULL;
    END $$""",
    *(
        f"CREATE TRIGGER {table}_fleet_version AFTER INSERT OR DELETE OR TRUNCATE "
        f"OR UPDATE OF {', '.join(columns)} ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION fleet_version_bump()"
        for table, columns in WATCHED.items()
    ),
]

DROP = [
    *(f"DROP TRIGGER {table}_fleet_version ON {table}" for table in WATCHED),
    "DROP FUNCTION fleet_version_bump()",
    "DROP TABLE fleet_version",
    "DROP SEQUENCE fleet_version_seq",
]


class Migration(migrations.Migration):
    dependencies = [
        ("telemetry", "0011_rollup_site_plan"),
        ("devices", "0002_command"),
    ]

    operations = [migrations.RunSQL(CREATE, DROP)]
