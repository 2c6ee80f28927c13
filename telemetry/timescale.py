"""TimescaleDB set-up of `energy_readings`: hypertable, compression and retention policies.

Only runs when the database backend is django-timescaledb's (`DATABASE_URL=timescale://…`).
Chunk interval: 1 day. A fleet of 1,000 Pis sending 3 values a second writes ~260 M rows a
day (~14 GB with indexes before compression); TimescaleDB advises that a chunk's indexes fit in
a quarter of memory, which a 1-day chunk of a typical fleet (tens to a few hundred Pis, plus
15-minute meter profiles) does on a 16-32 GB server, while keeping chunk counts — and planning
time over years of data — small. Larger fleets set TIMESCALE_CHUNK_INTERVAL lower.
"""

from django.conf import settings

TABLE = "energy_readings"


def is_timescale(connection) -> bool:
    return connection.settings_dict["ENGINE"].startswith("timescale.")


def hypertable_create(connection) -> None:
    with connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        cursor.execute(
            "SELECT create_hypertable(%s, 'time', chunk_time_interval => %s::interval, "
            "if_not_exists => TRUE, migrate_data => TRUE)",
            [TABLE, settings.TIMESCALE_CHUNK_INTERVAL],
        )


def policies_apply(connection) -> None:
    """(Re)apply compression and retention as the settings say; safe to run again."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"ALTER TABLE {TABLE} SET (timescaledb.compress, "
            "timescaledb.compress_segmentby = 'sensor_id', "
            "timescaledb.compress_orderby = 'time DESC')"
        )
        cursor.execute("SELECT remove_compression_policy(%s, if_exists => TRUE)", [TABLE])
        cursor.execute(
            "SELECT add_compression_policy(%s, compress_after => %s::interval)",
            [TABLE, settings.READINGS_COMPRESS_AFTER],
        )
        cursor.execute("SELECT remove_retention_policy(%s, if_exists => TRUE)", [TABLE])
        if settings.READINGS_RETENTION:
            cursor.execute(
                "SELECT add_retention_policy(%s, drop_after => %s::interval)",
                [TABLE, settings.READINGS_RETENTION],
            )
