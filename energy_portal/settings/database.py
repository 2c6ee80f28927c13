"""Database: `postgres://` selects Django's backend, `timescale://` django-timescaledb's."""

import dj_database_url

from energy_portal.settings.base import ENV

DATABASES = {"default": dj_database_url.parse(ENV.database_url, conn_max_age=60)}
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# No JIT compilation: the portal's statements are short, and once a table is large the planner's
# cost estimates pass jit_above_cost and compiling takes longer than running (bench/query: the
# fleet's today at 50M rows spent 16 of its 20 ms in JIT).
DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off"
# Statements run through a server-binding cursor are prepared on the connection (PostgreSQL
# plans them once), from their 5th run or at once when asked (`telemetry.queries._fetch_prepared`:
# the dashboard's energy statement, 1.5 ms of planning at each run). Django's own cursors bind
# on the client and never prepare; Django would otherwise turn preparing off altogether (None).
# Prepared statements belong to a connection, which Django's pool hands back whole.
DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 5
if ENV.database_pool_size:
    # A process that runs sync code on a new thread per request (ASGI: Django's views, Channels'
    # database calls) would otherwise open a PostgreSQL connection, so fork a backend, for every
    # request, and leave it open until the thread's objects are collected. Django's own pool
    # (psycopg_pool) hands the connection back at the end of the request instead; it excludes
    # persistent connections.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": ENV.database_pool_size,
        "timeout": 10,
    }
TIMESCALE_ENABLED = DATABASES["default"]["ENGINE"].startswith("timescale.")

# TimescaleDB only (see telemetry/timescale.py for the reasoning behind the chunk interval).
TIMESCALE_CHUNK_INTERVAL = ENV.timescale_chunk_interval
READINGS_COMPRESS_AFTER = ENV.readings_compress_after
# Raw readings older than this are dropped (TimescaleDB policy; a beat job on plain PostgreSQL).
# Empty keeps them forever.
READINGS_RETENTION = ENV.readings_retention
