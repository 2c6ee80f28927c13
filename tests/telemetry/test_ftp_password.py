"""FTP source passwords: encrypted in the table, in clear only to log in, never shown back."""

from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet, MultiFernet

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse

from telemetry.ftp_ingest import ftp_source_poll
from telemetry.models import FtpSource
from tests.conftest import PASSWORD as USER_PASSWORD
from tests.telemetry.ftp_server import PASSWORD, USER, FtpServer

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
SECRET = "load-profiles-Ω"


def stored_password(source_id: int) -> str:
    """The password column as PostgreSQL holds it, bypassing the model."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT password FROM telemetry_ftpsource WHERE id = %s", [source_id])
        return cursor.fetchone()[0]


@pytest.fixture
def ftp_server(tmp_path):
    root = tmp_path / "ftp"
    root.mkdir()
    with FtpServer(root) as server:
        yield server


def source_for(server: FtpServer, password: str) -> FtpSource:
    return FtpSource.objects.create(
        name="sa4cps", host=server.host, port=server.port, username=USER, password=password
    )


@pytest.mark.django_db
def test_the_column_holds_a_fernet_token_not_the_password():
    source = FtpSource.objects.create(name="s", host="ftp.example", password=SECRET)

    raw = stored_password(source.id)

    assert SECRET not in raw
    keys = MultiFernet([Fernet(key) for key in settings.FIELD_ENCRYPTION_KEYS])
    assert keys.decrypt(raw.encode()).decode() == SECRET
    assert FtpSource.objects.get(id=source.id).password == SECRET


@pytest.mark.django_db
def test_the_same_password_is_stored_differently_each_time():
    a = FtpSource.objects.create(name="a", host="ftp.example", password=SECRET)
    b = FtpSource.objects.create(name="b", host="ftp.example", password=SECRET)

    assert stored_password(a.id) != stored_password(b.id)


@pytest.mark.django_db
def test_no_password_is_stored_as_empty():
    source = FtpSource.objects.create(name="anonymous", host="ftp.example")

    assert stored_password(source.id) == ""
    assert FtpSource.objects.get(id=source.id).password == ""


@pytest.mark.django_db
def test_a_password_encrypted_under_a_retired_key_still_reads_once_the_new_key_is_in_front(
    settings,
):
    source = FtpSource.objects.create(name="s", host="ftp.example", password=SECRET)
    old_keys = list(settings.FIELD_ENCRYPTION_KEYS)

    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), *old_keys]

    assert FtpSource.objects.get(id=source.id).password == SECRET


@pytest.mark.django_db
def test_a_password_under_a_key_no_longer_listed_fails_with_a_clear_message(settings):
    source = FtpSource.objects.create(name="s", host="ftp.example", password=SECRET)

    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(ImproperlyConfigured, match="cannot be decrypted with FIELD_ENCRYPTION"):
        FtpSource.objects.get(id=source.id)


@pytest.mark.django_db
def test_ingestion_logs_in_to_a_real_ftp_server_with_the_decrypted_password(
    ftp_server, ingest_stream
):
    source = source_for(ftp_server, PASSWORD)
    assert PASSWORD not in stored_password(source.id)

    summary = ftp_source_poll(source_id=source.id, now=NOW)

    source.refresh_from_db()
    assert summary["error"] == source.last_error == ""
    assert source.runs == 1


@pytest.mark.django_db
def test_ingestion_with_a_wrong_stored_password_is_refused_by_the_server(ftp_server, ingest_stream):
    source = source_for(ftp_server, "not-" + PASSWORD)

    ftp_source_poll(source_id=source.id, now=NOW)

    source.refresh_from_db()
    assert "refused login" in source.last_error


@pytest.fixture
def admin_client(admin_user) -> Client:
    client = Client()
    assert client.login(username=admin_user.username, password=USER_PASSWORD)
    return client


@pytest.mark.django_db
def test_the_admin_change_page_never_shows_the_password(admin_client):
    source = FtpSource.objects.create(name="s", host="ftp.example", password=SECRET)

    page = admin_client.get(reverse("admin:telemetry_ftpsource_change", args=[source.id]))

    assert page.status_code == 200
    html = page.content.decode()
    assert 'type="password"' in html
    assert SECRET not in html
    assert stored_password(source.id) not in html


@pytest.mark.django_db
def test_the_sources_api_never_returns_the_password(api_client_for, admin_user):
    FtpSource.objects.create(name="s", host="ftp.example", password=SECRET)

    response = api_client_for(admin_user).get("/api/v1/sources/")

    assert response.status_code == 200
    body = response.content.decode()
    assert "ftp.example" in body
    assert SECRET not in body
    assert "password" not in body


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_passwords_stored_in_clear():
    executor = MigrationExecutor(connection)
    before, after = (
        [("telemetry", "0012_fleet_version")],
        [("telemetry", "0013_ftp_password_encrypted")],
    )
    executor.migrate(before)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO telemetry_ftpsource (name, host, port, username, password, folder,"
                " timezone, interval_s, enabled, last_error, runs, files_ingested,"
                " files_quarantined, rows_ingested) VALUES ('old', 'ftp.example', 21, 'u', %s,"
                " '/', 'UTC', 300, false, '', 0, 0, 0, 0) RETURNING id",
                [SECRET],
            )
            source_id = cursor.fetchone()[0]

        executor = MigrationExecutor(connection)
        executor.migrate(after)

        assert SECRET not in stored_password(source_id)
        assert FtpSource.objects.get(id=source_id).password == SECRET
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
