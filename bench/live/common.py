"""Paths and environment shared by the driver, the data set-up and the servers under test.

The benchmark never reads the caller's DATABASE_URL / REDIS_URL (they usually point at a dev or test
database): it uses BENCH_DATABASE_URL / BENCH_REDIS_URL, or the defaults below.
"""

import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var"
WORK = VAR / "bench-live"  # data set, secret key, relay token map, server logs
DATA_FILE = WORK / "data.json"
RELAY_TOKENS = WORK / "relay-tokens.json"
LOG_DIR = WORK / "logs"

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/energy_portal_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"

PYTHON = sys.executable


def database_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)


def secret_key() -> str:
    """A key of the benchmark's own, kept so the stored sessions stay valid between runs."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


def portal_env(*, channel_layer: str = "core") -> dict[str, str]:
    """Environment of a portal process under test (and of the data set-up): production-like
    (DEBUG off), the benchmark's database and Redis, and a device rate limit that never bites."""
    env = dict(os.environ)
    for name in ("DATABASE_URL", "REDIS_URL", "CHANNEL_LAYER"):
        env.pop(name, None)
    env.update(
        DJANGO_SETTINGS_MODULE="energy_portal.settings",
        DATABASE_URL=database_url(),
        REDIS_URL=redis_url(),
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secret_key(),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        CHANNEL_LAYER=channel_layer,
        DEVICE_RATE_PER_S="1000000",
        DEVICE_RATE_BURST="1000000",
        DEVICE_HEARTBEAT_TIMEOUT="60",
        PYTHONPATH=str(ROOT),
    )
    return env
