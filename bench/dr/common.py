"""Paths and environment of the demand-response benchmark (driver, data set-up, servers).

It never reads the caller's DATABASE_URL / REDIS_URL: BENCH_DATABASE_URL / BENCH_REDIS_URL, or
the defaults below; servers listen on BENCH_PORT (and the next port up).
"""

import os
import sys
from datetime import UTC, datetime

from bench import common as shared

ROOT = shared.ROOT
VAR = ROOT / "var"
WORK = VAR / "bench-dr"  # data set (device tokens), secret key, server logs
DATA_FILE = WORK / "data.json"
LOG_DIR = WORK / "logs"

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/energy_portal_bench_dr"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
DEFAULT_PORT = 8141

PYTHON = sys.executable
PREFIX = "bench-dr-"
ZONE = "Europe/Lisbon"
# The settlement's event: Monday 2 November 2026, 18:00-20:00 local (UTC+0 then); the data run
# from FIRST_DAY 00:00 local to the event's end, every quarter-hour.
EVENT_START = datetime(2026, 11, 2, 18, 0, tzinfo=UTC)
EVENT_END = datetime(2026, 11, 2, 20, 0, tzinfo=UTC)
FIRST_DAY = datetime(2026, 10, 19, 0, 0, tzinfo=UTC)  # 10 weekdays (19-30 Oct) + weekends


def database_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)


def port() -> int:
    return int(os.environ.get("BENCH_PORT", DEFAULT_PORT))


def portal_env() -> dict[str, str]:
    return shared.portal_env(
        database_url=database_url(),
        redis_url=redis_url(),
        secret_key=shared.secret_key(WORK),
        CHANNEL_LAYER="core",
        DEVICE_RATE_PER_S="1000000",
        DEVICE_RATE_BURST="1000000",
        DEVICE_HEARTBEAT_TIMEOUT="600",
    )
