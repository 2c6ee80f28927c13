"""Paths and environment shared by the driver, the data set-up and the processes under test.

The benchmark never reads the caller's DATABASE_URL / REDIS_URL (they usually point at a dev or test
database): it uses BENCH_DATABASE_URL / BENCH_REDIS_URL, or the defaults below.
"""

import os
import sys

from bench import common as shared

ROOT = shared.ROOT
VAR = ROOT / "var"
WORK = VAR / "bench-outages"  # data set, secret key, relay token map, process logs
DATA_FILE = WORK / "data.json"
RELAY_TOKENS = WORK / "relay-tokens.json"
LOG_DIR = WORK / "logs"

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/energy_portal_bench_outages"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"

PYTHON = sys.executable

# The grid: FEEDERS feeders, FEEDERS_PER_TRANSFORMER to a transformer; the devices (one per site)
# spread evenly over the feeders. The storm cuts the feeders of even index: half of them, and
# half of every transformer's (so transformer outages form too).
FEEDERS = 50
FEEDERS_PER_TRANSFORMER = 10


def database_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)


def portal_env() -> dict[str, str]:
    """Environment of a portal process under test (and of the data set-up): production-like
    (DEBUG off), the benchmark's database and Redis, a device rate limit that never bites."""
    return shared.portal_env(
        database_url=database_url(),
        redis_url=redis_url(),
        secret_key=shared.secret_key(WORK),
        DEVICE_RATE_PER_S="1000000",
        DEVICE_RATE_BURST="1000000",
        DEVICE_HEARTBEAT_TIMEOUT="120",
    )


def affected(feeder_index: int) -> bool:
    return feeder_index % 2 == 0
