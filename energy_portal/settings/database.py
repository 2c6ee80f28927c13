"""Database: `postgres://` selects Django's backend, `timescale://` django-timescaledb's."""

import dj_database_url

from energy_portal.settings.base import ENV

DATABASES = {"default": dj_database_url.parse(ENV.database_url, conn_max_age=60)}
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
TIMESCALE_ENABLED = DATABASES["default"]["ENGINE"].startswith("timescale.")

# TimescaleDB only (see telemetry/timescale.py for the reasoning behind the chunk interval).
TIMESCALE_CHUNK_INTERVAL = ENV.timescale_chunk_interval
READINGS_COMPRESS_AFTER = ENV.readings_compress_after
# Raw readings older than this are dropped (TimescaleDB policy; a beat job on plain PostgreSQL).
# Empty keeps them forever.
READINGS_RETENTION = ENV.readings_retention
