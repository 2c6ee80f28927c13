"""Configuration read from the environment, and the database backend a URL selects.

Both DATABASE_URL and REDIS_URL are always set here, so `load()` never starts embedded servers.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from energy_portal import asgi_server, environment
from energy_portal.settings import base

VARIABLES = [
    "DJANGO_DEBUG",
    "DJANGO_SECRET_KEY",
    "DJANGO_ALLOWED_HOSTS",
    "DJANGO_CSRF_TRUSTED_ORIGINS",
    "BEAT_STALE_AFTER",
    "CHANNEL_LAYER",
    "REQUEST_MAX_BODY_BYTES",
    "DJANGO_SECURE_SSL_REDIRECT",
    "DJANGO_SECURE_COOKIES",
    "DJANGO_SECURE_PROXY_SSL_HEADER",
    "DJANGO_SECURE_HSTS_SECONDS",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "DJANGO_SECURE_HSTS_PRELOAD",
    "FIELD_ENCRYPTION_KEY",
    "LOGIN_FAILURE_LIMIT",
    "LOGIN_LOCKOUT_MINUTES",
    "API_TOKEN_TTL_DAYS",
    "METRICS_TOKEN",
    "METRICS_ALLOW_IPS",
    "LOG_FORMAT",
]

FERNET_KEY = "Zm9ydHktdHdvLWJ5dGVzLW9mLWtleS1tYXRlcmlhbCE="


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment with external PostgreSQL and Redis and a private data folder."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgres://portal:pw@db.example:5432/portal")
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6379/0")
    monkeypatch.setenv("ENERGY_PORTAL_DATA_DIR", str(tmp_path))
    return monkeypatch


def database_settings(env, url: str):
    """Run `energy_portal/settings/database.py` afresh on what `load()` makes of `url`."""
    env.setenv("DATABASE_URL", url)
    env.setattr(base, "ENV", environment.load())
    spec = importlib.util.find_spec("energy_portal.settings.database")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_production_without_a_secret_key_is_refused_with_a_clear_message(env):
    env.setenv("DJANGO_DEBUG", "0")
    env.setenv("FIELD_ENCRYPTION_KEY", FERNET_KEY)

    with pytest.raises(ImproperlyConfigured, match="DJANGO_SECRET_KEY is required"):
        environment.load()


def test_production_with_a_secret_key_uses_the_given_services(env):
    env.setenv("DJANGO_DEBUG", "false")
    env.setenv("DJANGO_SECRET_KEY", "s3cret-" * 8)
    env.setenv("DJANGO_ALLOWED_HOSTS", "portal.example, api.example,")
    env.setenv("FIELD_ENCRYPTION_KEY", FERNET_KEY)

    loaded = environment.load()

    assert loaded.debug is False
    assert loaded.secret_key == "s3cret-" * 8
    assert loaded.embedded is False
    assert loaded.database_url == "postgres://portal:pw@db.example:5432/portal"
    assert loaded.redis_url == "redis://cache.example:6379/0"
    assert loaded.allowed_hosts == ["portal.example", "api.example"]
    assert loaded.field_encryption_keys == [FERNET_KEY]


def test_production_without_a_field_encryption_key_is_refused_with_a_clear_message(env):
    env.setenv("DJANGO_DEBUG", "0")
    env.setenv("DJANGO_SECRET_KEY", "s3cret-" * 8)

    with pytest.raises(ImproperlyConfigured, match="FIELD_ENCRYPTION_KEY is required"):
        environment.load()


def test_development_keeps_one_generated_field_encryption_key_in_the_data_folder(env, tmp_path):
    first = environment.load()
    second = environment.load()

    assert len(first.field_encryption_keys) == 1
    assert first.field_encryption_keys == second.field_encryption_keys
    assert (tmp_path / "dev-field-encryption-key").read_text().strip() == (
        first.field_encryption_keys[0]
    )


def test_sign_in_limits_and_token_lifetime_come_from_the_environment(env):
    env.setenv("LOGIN_FAILURE_LIMIT", "7")
    env.setenv("LOGIN_LOCKOUT_MINUTES", "30")
    env.setenv("API_TOKEN_TTL_DAYS", "2")

    loaded = environment.load()

    assert (loaded.login_failure_limit, loaded.login_lockout_minutes) == (7, 30)
    assert loaded.api_token_ttl_days == 2


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL"])
def test_production_without_a_service_url_is_refused_rather_than_embedded(env, tmp_path, missing):
    env.setenv("DJANGO_DEBUG", "0")
    env.setenv("DJANGO_SECRET_KEY", "s3cret-" * 8)
    env.setenv("FIELD_ENCRYPTION_KEY", FERNET_KEY)
    env.delenv(missing)

    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL and REDIS_URL are required"):
        environment.load()
    assert list(tmp_path.iterdir()) == []  # no embedded server was started


def test_production_serves_https_only_by_default(env):
    env.setenv("DJANGO_DEBUG", "0")
    env.setenv("DJANGO_SECRET_KEY", "s3cret-" * 8)
    env.setenv("FIELD_ENCRYPTION_KEY", FERNET_KEY)

    loaded = environment.load()

    assert loaded.secure_ssl_redirect is True
    assert loaded.secure_cookies is True
    assert loaded.secure_proxy_ssl_header == "X-Forwarded-Proto"
    assert loaded.secure_hsts_seconds == 365 * 24 * 3600
    assert loaded.secure_hsts_include_subdomains is True
    assert loaded.secure_hsts_preload is True


def test_development_serves_plain_http_and_each_https_setting_can_be_set(env):
    development = environment.load()
    env.setenv("DJANGO_SECURE_SSL_REDIRECT", "1")
    env.setenv("DJANGO_SECURE_PROXY_SSL_HEADER", "X-Scheme")
    env.setenv("DJANGO_SECURE_HSTS_SECONDS", "60")
    configured = environment.load()

    assert development.secure_ssl_redirect is False
    assert development.secure_cookies is False
    assert development.secure_proxy_ssl_header == ""
    assert development.secure_hsts_seconds == 0
    assert configured.secure_ssl_redirect is True
    assert configured.secure_proxy_ssl_header == "X-Scheme"
    assert configured.secure_hsts_seconds == 60


def test_development_keeps_one_generated_secret_key_in_the_data_folder(env, tmp_path):
    first = environment.load()
    second = environment.load()

    assert first.debug is True
    assert len(first.secret_key) >= 50
    assert first.secret_key == second.secret_key
    assert (tmp_path / "dev-secret-key").read_text().strip() == first.secret_key


def test_metrics_are_for_loopback_only_and_plain_logs_by_default(env):
    loaded = environment.load()

    assert loaded.metrics_token == ""
    assert [str(n) for n in loaded.metrics_allow_ips] == ["127.0.0.1/32", "::1/128"]
    assert loaded.log_format == "plain"


def test_metrics_access_and_log_format_come_from_the_environment(env):
    env.setenv("METRICS_TOKEN", " scrape-me ")
    env.setenv("METRICS_ALLOW_IPS", "10.0.0.0/8, 192.0.2.7,fd00::/8")
    env.setenv("LOG_FORMAT", "json")

    loaded = environment.load()

    assert loaded.metrics_token == "scrape-me"
    assert [str(n) for n in loaded.metrics_allow_ips] == ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]
    assert loaded.log_format == "json"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("BEAT_STALE_AFTER", "soon", "BEAT_STALE_AFTER must be a whole number, got 'soon'"),
        ("CHANNEL_LAYER", "carrier-pigeon", "CHANNEL_LAYER must be one of"),
        ("LOGIN_FAILURE_LIMIT", "0", "LOGIN_FAILURE_LIMIT must be 1 or more"),
        ("FIELD_ENCRYPTION_KEY", "too-short", "FIELD_ENCRYPTION_KEY must be Fernet keys"),
        ("METRICS_ALLOW_IPS", "10.0.0.0/8,prometheus", "METRICS_ALLOW_IPS must be .*'prometheus'"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT must be one of"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(env, name, value, says):
    env.setenv(name, value)

    with pytest.raises(ImproperlyConfigured, match=says):
        environment.load()


def test_timescale_url_selects_the_timescaledb_backend(env):
    settings = database_settings(env, "timescale://portal:pw@tsdb.example:5432/portal")

    database = settings.DATABASES["default"]
    assert database["ENGINE"] == "timescale.db.backends.postgresql"
    assert (database["HOST"], database["NAME"], database["USER"]) == (
        "tsdb.example",
        "portal",
        "portal",
    )
    assert settings.TIMESCALE_ENABLED is True


def test_postgres_url_selects_the_stock_backend(env):
    settings = database_settings(env, "postgres://portal:pw@db.example:5432/portal")

    database = settings.DATABASES["default"]
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert database["CONN_HEALTH_CHECKS"] is True
    assert settings.TIMESCALE_ENABLED is False


@pytest.mark.django_db
def test_database_sessions_run_without_jit():
    # JIT compiling cost more than the statements it compiled once tables were large
    with connection.cursor() as cursor:
        cursor.execute("SHOW jit")
        assert cursor.fetchone()[0] == "off"


def test_server_processes_come_from_web_concurrency_else_one_per_core(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert asgi_server.default_workers() == (os.cpu_count() or 1)
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert asgi_server.default_workers() == 3
    line = asgi_server.command(host="127.0.0.1", port=8000)
    assert line[line.index("--workers") + 1] == "3"


@pytest.mark.parametrize(("raw", "problem"), [("abc", "whole number"), ("0", "at least 1")])
def test_a_bad_web_concurrency_is_refused_with_its_name(monkeypatch, capsys, raw, problem):
    monkeypatch.setenv("WEB_CONCURRENCY", raw)
    with pytest.raises(SystemExit):
        asgi_server.main([])
    assert "WEB_CONCURRENCY" in capsys.readouterr().err
    with pytest.raises(ImproperlyConfigured, match=problem):
        asgi_server.default_workers()


def _collector_after_import(code: str) -> list:
    """What a fresh interpreter's cyclic collector looks like after `code` (run in a subprocess:
    the module tunes the collector of the process that starts Django through it)."""
    probe = (
        f"{code}\nimport gc, json\nprint(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_server_process_freezes_its_start_up_heap_and_collects_young_objects_less_often():
    threshold, frozen = _collector_after_import("import energy_portal.asgi")
    assert threshold == [30000, 10, 10]
    assert frozen > 50_000  # Django and the apps, out of every full collection's walk


def test_a_process_that_set_django_up_first_keeps_its_collector():
    threshold, frozen = _collector_after_import(
        "import django; django.setup(); import energy_portal.asgi"
    )
    assert threshold == _collector_after_import("")[0]  # the interpreter's default
    assert frozen == 0
