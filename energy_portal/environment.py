"""The one place that reads the process environment.

Every setting that can change between machines comes from here. When neither `DATABASE_URL` nor
`REDIS_URL` is given, the embedded PostgreSQL and Valkey servers under the data folder stand in,
so a fresh checkout runs with no configuration at all.
"""

import ipaddress
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
    worker_nice: int
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
    request_max_body_bytes: int
    secure_ssl_redirect: bool
    secure_cookies: bool
    secure_proxy_ssl_header: str
    secure_hsts_seconds: int
    secure_hsts_include_subdomains: bool
    secure_hsts_preload: bool
    login_failure_limit: int
    login_lockout_minutes: int
    api_token_ttl_days: int
    field_encryption_keys: list[str]
    outage_momentary_s: int
    outage_correlation_s: int
    outage_min_grid_sites: int
    outage_suspected_grace_s: int
    metrics_token: str
    metrics_allow_ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    log_format: str


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


def _positive(name: str, default: int) -> int:
    value = int_setting(name, default)
    if value < 1:
        raise ImproperlyConfigured(f"{name} must be 1 or more, got {value}")
    return value


def _field_encryption_keys(debug: bool, data_dir: Path) -> list[str]:
    """Fernet keys for secrets stored in the database (FTP passwords), newest first.

    `FIELD_ENCRYPTION_KEY` may list several keys, comma-separated: the first encrypts, all
    decrypt, so a key is rotated by putting the new one in front.
    """
    from cryptography.fernet import Fernet

    keys = _list("FIELD_ENCRYPTION_KEY", "")
    if not keys:
        if not debug:
            raise ImproperlyConfigured(
                "FIELD_ENCRYPTION_KEY is required when DJANGO_DEBUG is off; make one with "
                '`python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"` and keep it safe: without it the '
                "stored FTP passwords cannot be read."
            )
        # A development key kept under the data folder, like the secret key.
        key_file = data_dir / "dev-field-encryption-key"
        data_dir.mkdir(parents=True, exist_ok=True)
        if not key_file.exists():
            key_file.write_text(Fernet.generate_key().decode())
            key_file.chmod(0o600)
        keys = [key_file.read_text().strip()]
    for key in keys:
        try:
            Fernet(key)
        except ValueError as exc:
            raise ImproperlyConfigured(
                "FIELD_ENCRYPTION_KEY must be Fernet keys (32 url-safe base64-encoded bytes), "
                "comma-separated."
            ) from exc
    return keys


def _networks(name: str, default: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A comma list of addresses and networks (`10.0.0.0/8`); a bare address is a network of one."""
    networks = []
    for entry in _list(name, default):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name} must be comma-separated addresses or networks (CIDR), got {entry!r}"
            ) from exc
    return networks


def load() -> Environment:
    """Read the environment once and start embedded services for what it leaves out."""
    from energy_portal import embedded

    debug = _flag("DJANGO_DEBUG", True)
    data_dir = Path(os.environ.get("ENERGY_PORTAL_DATA_DIR", BASE_DIR / "var")).resolve()
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    embedded_used = not database_url or not redis_url
    if embedded_used and not debug:
        # Production never falls back to servers under the data folder: a deployment that forgot
        # a URL would otherwise run healthy on an empty database of its own.
        raise ImproperlyConfigured(
            "DATABASE_URL and REDIS_URL are required when DJANGO_DEBUG is off; "
            "the embedded servers are for development only."
        )
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
        worker_nice=int_setting("WORKER_NICE", 10),
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
        # Any request body, any route: the batch ingest limit (8 MiB) and 1 MiB to spare, so the
        # ingest endpoint still answers with its own message up to a little past its limit.
        request_max_body_bytes=int_setting("REQUEST_MAX_BODY_BYTES", 9 * 1024 * 1024),
        # HTTPS (settings/security.py): on by default in production, which runs behind a proxy
        # that terminates TLS and says so in X-Forwarded-Proto; off while developing over http.
        secure_ssl_redirect=_flag("DJANGO_SECURE_SSL_REDIRECT", not debug),
        secure_cookies=_flag("DJANGO_SECURE_COOKIES", not debug),
        secure_proxy_ssl_header=os.environ.get(
            "DJANGO_SECURE_PROXY_SSL_HEADER", "" if debug else "X-Forwarded-Proto"
        ).strip(),
        secure_hsts_seconds=int_setting("DJANGO_SECURE_HSTS_SECONDS", 0 if debug else 31_536_000),
        secure_hsts_include_subdomains=_flag("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", True),
        secure_hsts_preload=_flag("DJANGO_SECURE_HSTS_PRELOAD", True),
        login_failure_limit=_positive("LOGIN_FAILURE_LIMIT", 5),
        login_lockout_minutes=_positive("LOGIN_LOCKOUT_MINUTES", 15),
        api_token_ttl_days=int_setting("API_TOKEN_TTL_DAYS", 30),
        field_encryption_keys=_field_encryption_keys(debug, data_dir),
        outage_momentary_s=int_setting("OUTAGE_MOMENTARY_S", 180),
        outage_correlation_s=int_setting("OUTAGE_CORRELATION_S", 120),
        outage_min_grid_sites=_positive("OUTAGE_MIN_GRID_SITES", 2),
        outage_suspected_grace_s=int_setting("OUTAGE_SUSPECTED_GRACE_S", 120),
        metrics_token=os.environ.get("METRICS_TOKEN", "").strip(),
        metrics_allow_ips=_networks("METRICS_ALLOW_IPS", "127.0.0.1,::1"),
        log_format=_choice("LOG_FORMAT", "plain", {"plain", "json"}),
    )
