"""Baselines on the same table, with plain psycopg (no Django, no Redis): what the database alone
can take, to measure the pipeline against.

- `copy_raw`: binary COPY of the rows straight into `energy_readings` in one transaction (the
  ceiling: no duplicate handling at all; a duplicate would abort the whole COPY).
- `copy_dedup`: per batch, binary COPY into a temporary staging table, then
  `INSERT INTO energy_readings SELECT ... FROM staging ON CONFLICT DO NOTHING`, one transaction
  per batch (the ceiling with duplicate-dropping).
- `per_row`: one `INSERT ... ON CONFLICT DO NOTHING` per reading in autocommit (a commit, so a
  WAL flush, per reading: the simple design of seed prototypes), on a sample, extrapolated as a
  per-row rate.
- diagnostics: the writer's own statement (`telemetry.services._INSERT_ROWS`) run
  directly in the same batches (the writer minus Redis and Python), and raw COPY with the table's
  triggers off (foreign-key check and rollup marks; `session_replication_role = replica`), which
  shows what those cost per row.

Each function returns the elapsed seconds of the timed part only (the data is built before).
"""

# SQL here is built from constant names only; every value is a bound parameter.
# ruff: noqa: S608

import time
from datetime import UTC, datetime

import psycopg

from bench.ingest.rows import COPY_COLUMNS, RowSet

STAGING = "bench_ingest_staging"


def sensor_type(conn: psycopg.Connection) -> str:
    """'int8' or 'int4': binary COPY must send sensor_id in the column's own width."""
    typ = conn.execute(
        "SELECT atttypid::regtype::text FROM pg_attribute "
        "WHERE attrelid = 'energy_readings'::regclass AND attname = 'sensor_id'"
    ).fetchone()[0]
    return {"bigint": "int8", "integer": "int4"}[typ]


def _copy(cursor: psycopg.Cursor, table: str, data: bytes) -> None:
    with cursor.copy(f"COPY {table} {COPY_COLUMNS} FROM STDIN (FORMAT BINARY)") as copy:
        view = memoryview(data)
        for i in range(0, len(data), 1 << 20):
            copy.write(view[i : i + (1 << 20)])


def copy_raw(conn: psycopg.Connection, data: bytes, *, triggers: bool = True) -> float:
    started = time.perf_counter()
    with conn.transaction(), conn.cursor() as cursor:
        if not triggers:
            cursor.execute("SET LOCAL session_replication_role = replica")
        _copy(cursor, "energy_readings", data)
    return time.perf_counter() - started


def copy_dedup(conn: psycopg.Connection, batches: list[bytes], sensor_sql_type: str) -> float:
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} "
        f"(sensor_id {sensor_sql_type}, time timestamptz, value double precision) "
        "ON COMMIT DELETE ROWS"
    )
    started = time.perf_counter()
    for data in batches:
        with conn.transaction(), conn.cursor() as cursor:
            _copy(cursor, STAGING, data)
            cursor.execute(
                f"INSERT INTO energy_readings {COPY_COLUMNS} "
                f"SELECT sensor_id, time, value FROM {STAGING} "
                "ON CONFLICT (sensor_id, time) DO NOTHING"
            )
    return time.perf_counter() - started


def writer_statement(conn: psycopg.Connection, rows: RowSet, rows_per_batch: int) -> float:
    """The writer's INSERT ... FROM (array literal) JOIN devices_sensor ON CONFLICT DO NOTHING,
    in batches of about `rows_per_batch`, one transaction each; literals built before timing."""
    from telemetry.services import _INSERT_ROWS

    steps = max(1, rows_per_batch // len(rows.sensor_ids))
    batches = [
        RowSet(
            rows.sensor_ids, rows.base_us, first, min(steps, rows.first_step + rows.steps - first)
        ).array_literal()
        for first in range(rows.first_step, rows.first_step + rows.steps, steps)
    ]
    started = time.perf_counter()
    for literal in batches:
        with conn.transaction():
            conn.execute(_INSERT_ROWS, [literal])
    return time.perf_counter() - started


def per_row(conn: psycopg.Connection, rows: RowSet) -> float:
    """Autocommit: every execute is its own transaction and commit."""
    assert conn.autocommit
    params = [
        (sensor_id, datetime.fromtimestamp(us / 1_000_000, UTC), value)
        for sensor_id, us, value in rows.tuples()
    ]
    sql = (
        f"INSERT INTO energy_readings {COPY_COLUMNS} VALUES (%s, %s, %s) "
        "ON CONFLICT (sensor_id, time) DO NOTHING"
    )
    started = time.perf_counter()
    with conn.cursor() as cursor:
        for p in params:
            cursor.execute(sql, p, prepare=True)
    return time.perf_counter() - started
