"""The project's own migrations on a real TimescaleDB (`DATABASE_URL=timescale://…`): the
hypertable, its compression and retention policies and the continuous aggregates exist, and the
writer's insert and the API's queries answer right on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.timescale.conftest import url_for_database

BASE_DIR = Path(__file__).resolve().parents[2]

# Run inside the project, against the TimescaleDB database: the writer's set-based insert
# (duplicates included) and the aggregate/stats queries the API calls.
EXERCISE = """
import json
from datetime import UTC, datetime, timedelta
from devices.models import Site
from devices.services import device_create
from telemetry import queries
from telemetry.services import readings_insert

site = Site.objects.create(name="TS home", timezone="Europe/Lisbon")
device, _ = device_create(uid="pi-ts", site=site, sensors=[{"key": "power_w", "kind": "power"}])
sensor = device.sensors.get()
start = datetime(2026, 11, 20, tzinfo=UTC)
us = [int((start + timedelta(minutes=5 * i)).timestamp()) * 1_000_000 for i in range(24)]
values = [float(i) for i in range(24)]
first = readings_insert(sensor_ids=[sensor.id] * 24, times_us=us, values=values)
again = readings_insert(sensor_ids=[sensor.id] * 24, times_us=us, values=[9.0] * 24)
end = start + timedelta(hours=2)
hourly = queries.aggregates(sensor_id=sensor.id, start=start, end=end, bucket="1h")
print(json.dumps({
    "inserted": first, "duplicates_inserted": again,
    "hourly": [[row["count"], row["sum"], row["min"], row["max"]] for row in hourly],
    "stats": {k: v for k, v in queries.stats(sensor_id=sensor.id, start=start, end=end).items()},
}))
"""


def test_migrations_make_a_hypertable_with_policies_and_continuous_aggregates(timescale_server):
    # given an empty database on a TimescaleDB server
    with psycopg.connect(timescale_server, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS ep_migrations")
        admin.execute("CREATE DATABASE ep_migrations")
    env = {
        **os.environ,
        "DATABASE_URL": url_for_database(timescale_server, "ep_migrations", scheme="timescale"),
    }
    manage = [sys.executable, str(BASE_DIR / "manage.py")]
    # when the project's migrations run through django-timescaledb's backend
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=BASE_DIR, check=True, timeout=600)
    # then
    with psycopg.connect(url_for_database(timescale_server, "ep_migrations")) as conn:
        hypertable = conn.execute(
            "SELECT compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'energy_readings'"
        ).fetchone()
        assert hypertable == (True,)
        jobs = dict(
            conn.execute(
                "SELECT proc_name, config FROM timescaledb_information.jobs "
                "WHERE hypertable_name = 'energy_readings'"
            ).fetchall()
        )
        assert jobs["policy_compression"]["compress_after"] == "7 days"
        assert jobs["policy_retention"]["drop_after"] == "730 days"
        views = dict(
            conn.execute(
                "SELECT view_name, materialized_only "
                "FROM timescaledb_information.continuous_aggregates"
            ).fetchall()
        )
        assert views == {"rollup_15m": False, "rollup_1h": False, "rollup_1d": False}

    # and the writer's insert and the API's queries answer right on it
    done = subprocess.run(
        [*manage, "shell", "-c", EXERCISE],
        env=env,
        cwd=BASE_DIR,
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["inserted"] == 24
    assert answer["duplicates_inserted"] == 0
    assert answer["hourly"] == [
        [12, float(sum(range(12))), 0.0, 11.0],
        [12, float(sum(range(12, 24))), 12.0, 23.0],
    ]
    assert answer["stats"]["count"] == 24
    assert answer["stats"]["max"] == 23.0
