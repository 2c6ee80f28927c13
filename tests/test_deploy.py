"""Production settings (DJANGO_DEBUG=0) pass `manage.py check --deploy` with no warning.

The check runs in a subprocess with a production environment, as a deployment would run it:
Django's security checks, and drf-spectacular's, which generates the OpenAPI schema and warns
about anything it cannot describe (an authentication class without an extension, say).
"""

import os
import secrets
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet

from django.test import Client

from tests.e2e.servers import BASE_DIR

# Settings an operator may have exported; the test decides them.
SECURITY_VARIABLES = [
    "DJANGO_SECURE_SSL_REDIRECT",
    "DJANGO_SECURE_COOKIES",
    "DJANGO_SECURE_PROXY_SSL_HEADER",
    "DJANGO_SECURE_HSTS_SECONDS",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "DJANGO_SECURE_HSTS_PRELOAD",
]


def check_deploy(tmp_path, **overrides: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name not in SECURITY_VARIABLES}
    env.update(
        DJANGO_SETTINGS_MODULE="energy_portal.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        DJANGO_ALLOWED_HOSTS="portal.example",
        ENERGY_PORTAL_DATA_DIR=str(tmp_path),
        **overrides,
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_production_settings_pass_check_deploy_with_no_warning(tmp_path):
    result = check_deploy(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "Warning" not in result.stderr  # drf-spectacular's schema warnings go to stderr too


def test_check_deploy_reports_https_turned_off(tmp_path):
    # The same check fails when production is told to serve plain http: it is a real check.
    result = check_deploy(tmp_path, DJANGO_SECURE_SSL_REDIRECT="0", DJANGO_SECURE_COOKIES="no")

    assert result.returncode != 0
    for warning in ("security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr


@pytest.fixture
def production_https(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")


@pytest.mark.django_db
def test_plain_http_is_redirected_to_https_but_health_probes_are_not(production_https):
    client = Client()

    page = client.get("/login/")
    health = client.get("/api/v1/health/")
    behind_the_proxy = client.get("/login/", headers={"X-Forwarded-Proto": "https"})

    assert page.status_code == 301
    assert page["Location"] == "https://testserver/login/"
    assert health.status_code == 200
    assert behind_the_proxy.status_code == 200
