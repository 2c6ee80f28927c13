"""Paths and environment shared by the driver, the data set-up, the load generator and the
processes under test.

The benchmark TRUNCATEs `energy_readings` and flushes its Redis DB, so it never reads the caller's
DATABASE_URL / REDIS_URL (they usually point at a dev or test database): it uses
BENCH_INGEST_DATABASE_URL / BENCH_INGEST_REDIS_URL (or --database-url / --redis-url), or the
defaults below.
"""

import os
import sys

from bench import common as shared

ROOT = shared.ROOT
VAR = ROOT / "var"
WORK = VAR / "bench-ingest"  # data set, secret key, logs, profiles
DATA_FILE = WORK / "data.json"
LOG_DIR = WORK / "logs"

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/energy_portal_bench_ingest"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/5"

PYTHON = sys.executable

# The data set: DEVICES devices of SENSOR_KEYS each (1,000 sensors), one site each; plus
# CPE_SITES sites with a CPE (the first DEVICES of them are the devices' sites) for `.sgl_v2`.
PREFIX = "bench-ingest-"
SENSOR_KEYS = [
    ("power_w", "power", "W"),
    ("energy_kwh", "energy", "kWh"),
    ("voltage_v", "voltage", "V"),
    ("current_a", "current", "A"),
    ("temperature_c", "temperature", "°C"),
]
CPE_PREFIX = "PTBENCH"


def set_urls(database_url: str | None, redis_url: str | None) -> None:
    """Command-line overrides; children get them through their environment."""
    if database_url:
        os.environ["BENCH_INGEST_DATABASE_URL"] = database_url
    if redis_url:
        os.environ["BENCH_INGEST_REDIS_URL"] = redis_url


def database_url() -> str:
    return os.environ.get("BENCH_INGEST_DATABASE_URL", DEFAULT_DATABASE_URL)


def redis_url() -> str:
    return os.environ.get("BENCH_INGEST_REDIS_URL", DEFAULT_REDIS_URL)


def psycopg_url() -> str:
    """The database URL as libpq takes it (postgres:// and postgresql:// only)."""
    url = database_url()
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgres", "postgresql"):
        raise SystemExit(
            f"the benchmark needs plain PostgreSQL (postgres://...), not {scheme}:// "
            "(COPY baselines and psycopg connections)"
        )
    return f"postgresql://{rest}"


def portal_env() -> dict[str, str]:
    """Environment of a portal process under test (server, writers, the driver's own Django);
    the channel layer is the portal's default unless a pipeline spec asks for one."""
    return shared.portal_env(
        database_url=database_url(), redis_url=redis_url(), secret_key=shared.secret_key(WORK)
    )
