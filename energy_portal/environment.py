"""The one place that reads the process environment.

Every setting that can change between machines comes from here. When neither `DATABASE_URL` nor
`REDIS_URL` is given, the embedded PostgreSQL and Valkey servers under the data folder stand in,
so a fresh checkout runs with no configuration at all.
"""

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

TRUE_WORDS = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Environment:
    debug: bool
    secret_key: str
    allowed_hosts: list[str]
    csrf_trusted_origins: list[str]
    database_url: str
    database_pool_size: int
    redis_url: str
    data_dir: Path
    embedded: bool
    time_zone: str
    celery_eager: bool
    heartbeat_timeout_s: int
    device_rate_per_s: int
    device_rate_burst: int
    channel_layer: str
    timescale_chunk_interval: str
    readings_compress_after: str
    readings_retention: str
    beat_stale_after_s: int
    ingest_lag_limit_s: int
    ingest_claim_idle_ms: int
    outage_momentary_s: int


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    return default if raw is None else raw.strip().lower() in TRUE_WORDS


def _list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def int_setting(name: str, default: int) -> int:
    """The whole number in environment variable `name` (`default` when unset), or a clear error."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {raw!r}") from exc


def _choice(name: str, default: str, allowed: set[str]) -> str:
    value = os.environ.get(name, default)
    if value not in allowed:
        raise ImproperlyConfigured(f"{name} must be one of {sorted(allowed)}, got {value!r}")
    return value


def _secret_key(debug: bool, data_dir: Path) -> str:
    key = os.environ.get("DJANGO_SECRET_KEY")
    if key:
        return key
    if not debug:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off; "
            "set it to a long random string."
        )
    # A development key kept under the data folder, so sessions survive restarts.
    key_file = data_dir / "dev-secret-key"
    data_dir.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
    return key_file.read_text().strip()


def load() -> Environment:
    """Read the environment once and start embedded services for what it leaves out."""
    from energy_portal import embedded

    debug = _flag("DJANGO_DEBUG", True)
    data_dir = Path(os.environ.get("ENERGY_PORTAL_DATA_DIR", BASE_DIR / "var")).resolve()
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    embedded_used = not database_url or not redis_url
    if not database_url:
        database_url = embedded.database_url(data_dir)
        os.environ["DATABASE_URL"] = database_url  # child processes reuse the same server
    if not redis_url:
        redis_url = embedded.redis_url(data_dir)
        os.environ["REDIS_URL"] = redis_url
    return Environment(
        debug=debug,
        secret_key=_secret_key(debug, data_dir),
        allowed_hosts=_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]"),
        csrf_trusted_origins=_list("DJANGO_CSRF_TRUSTED_ORIGINS", ""),
        database_url=database_url,
        database_pool_size=int_setting("DATABASE_POOL_SIZE", 0),
        redis_url=redis_url,
        data_dir=data_dir,
        embedded=embedded_used,
        time_zone=os.environ.get("ENERGY_PORTAL_TIME_ZONE", "UTC"),
        celery_eager=_flag("CELERY_TASK_ALWAYS_EAGER", False),
        heartbeat_timeout_s=int_setting("DEVICE_HEARTBEAT_TIMEOUT", 60),
        device_rate_per_s=int_setting("DEVICE_RATE_PER_S", 20),
        device_rate_burst=int_setting("DEVICE_RATE_BURST", 100),
        channel_layer=_choice("CHANNEL_LAYER", "pubsub", {"core", "pubsub"}),
        timescale_chunk_interval=os.environ.get("TIMESCALE_CHUNK_INTERVAL", "1 day"),
        readings_compress_after=os.environ.get("READINGS_COMPRESS_AFTER", "7 days"),
        readings_retention=os.environ.get("READINGS_RETENTION", "730 days"),
        beat_stale_after_s=int_setting("BEAT_STALE_AFTER", 180),
        ingest_lag_limit_s=int_setting("INGEST_LAG_LIMIT", 300),
        ingest_claim_idle_ms=int_setting("INGEST_CLAIM_IDLE_MS", 30_000),
        outage_momentary_s=int_setting("OUTAGE_MOMENTARY_S", 180),
    )
