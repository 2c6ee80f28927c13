"""Paths, environment and small helpers shared by the query benchmark's modules.

The benchmark loads tens of millions of rows into a database of its own, so it never reads the
caller's DATABASE_URL / REDIS_URL (they usually point at a dev or test database): it uses
BENCH_QUERY_DATABASE_URL / BENCH_QUERY_REDIS_URL (or --database-url / --redis-url), or the
defaults below.
"""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var"
WORK = VAR / "bench-query"  # secret key, EXPLAIN files, logs; per database: <name>/data.json

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/energy_portal_bench_query"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/4"

PREFIX = "bq-"  # uids and names of everything the benchmark makes
OTHER_BENCHMARKS = r"bench\.(live|ingest)\.run"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def set_urls(database_url: str | None, redis_url: str | None) -> None:
    if database_url:
        os.environ["BENCH_QUERY_DATABASE_URL"] = database_url
    if redis_url:
        os.environ["BENCH_QUERY_REDIS_URL"] = redis_url


def database_url() -> str:
    return os.environ.get("BENCH_QUERY_DATABASE_URL", DEFAULT_DATABASE_URL)


def redis_url() -> str:
    return os.environ.get("BENCH_QUERY_REDIS_URL", DEFAULT_REDIS_URL)


def database_name(url: str | None = None) -> str:
    return (url or database_url()).rsplit("/", 1)[1].split("?")[0]


def db_dir(name: str | None = None) -> Path:
    """Files of one benchmark database: data.json (the fleet's ids, what is loaded) and the
    migrations fingerprint it was made with."""
    return WORK / (name or database_name())


def data_file(name: str | None = None) -> Path:
    return db_dir(name) / "data.json"


def psycopg_url() -> str:
    """The database URL as libpq takes it; plain PostgreSQL only (binary COPY, rollup tables)."""
    scheme, _, rest = database_url().partition("://")
    if scheme not in ("postgres", "postgresql"):
        raise SystemExit(
            f"the query benchmark needs plain PostgreSQL (postgres://...), not {scheme}://"
        )
    return f"postgresql://{rest}"


def secret_key() -> str:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


def django_setup() -> None:
    """Django in this process, production-like (DEBUG off: no query log), on the benchmark's
    database and Redis. `testserver` is allowed for the HTTP round trips of the test client."""
    for name in ("DATABASE_URL", "REDIS_URL", "CHANNEL_LAYER"):
        os.environ.pop(name, None)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="energy_portal.settings",
        DATABASE_URL=database_url(),
        REDIS_URL=redis_url(),
        DJANGO_DEBUG="0",
        # Production settings, but plain http on the loopback: no TLS proxy in front.
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_SECRET_KEY=secret_key(),
        FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
    )
    import django

    django.setup()


# -- quiet machine ------------------------------------------------------------------------------


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def other_benchmarks() -> list[str]:
    """Command lines of the other benchmarks running now (bench.live / bench.ingest). One
    queued behind the shared benchmark lock (`flock <lock> python -m bench...`, which this
    run may be holding) does not run yet and is not counted."""
    found = subprocess.run(
        ["pgrep", "-af", OTHER_BENCHMARKS], capture_output=True, text=True, check=False
    ).stdout
    return [
        line
        for line in found.splitlines()
        if line.strip() and line.split()[1:2] != ["flock"] and "/flock " not in line
    ]


def wait_quiet(*, max_wait_s: float = 30 * 60, threshold: float = 1.0, poll_s: float = 30) -> dict:
    """Wait until no other benchmark runs and the 1-minute load is below `threshold`, polling
    every `poll_s`; give up after `max_wait_s`. Says which happened."""
    started = time.monotonic()
    while True:
        others = other_benchmarks()
        load = load1()
        waited = time.monotonic() - started
        if not others and load < threshold:
            return {
                "quiet": True,
                "waited_s": round(waited),
                "load1": load,
                "note": f"quiet: no other benchmark, 1-min load {load} < {threshold} "
                f"(waited {waited / 60:.1f} min)",
            }
        if waited >= max_wait_s:
            return {
                "quiet": False,
                "waited_s": round(waited),
                "load1": load,
                "others": others,
                "note": f"NOT quiet: measured after {waited / 60:.0f} min of waiting regardless "
                f"(1-min load {load}, other benchmarks running: {len(others)})",
            }
        why = f"{len(others)} other benchmark(s) running" if others else f"1-min load {load}"
        log(f"  waiting for a quiet machine: {why}; {waited / 60:.1f} min waited")
        time.sleep(poll_s)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
