"""Data migrations of the devices app, run against real tables."""

import importlib

from knox.models import AuthToken
from rest_framework.test import APIClient

from django.apps import apps
from django.db import connection

carried = importlib.import_module("devices.migrations.0003_api_tokens_hashed")

OLD_KEY = "3988e6bf6a1043bccf4d8dd8c00c223559dc899d"  # DRF's shape: 40 hex digits


def test_drf_tokens_are_carried_over_as_digests_and_the_clear_table_is_dropped(alice):
    # given DRF's table as rest_framework.authtoken left it, holding alice's token in clear
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, created timestamptz"
            " NOT NULL, user_id integer NOT NULL UNIQUE REFERENCES auth_user (id))"
        )
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, now(), %s)", [OLD_KEY, alice.id])
        cursor.execute(
            "INSERT INTO django_migrations (app, name, applied) VALUES"
            " ('authtoken', '0001_initial', now())"
        )

    # when the migration runs
    with connection.schema_editor() as schema_editor:
        carried.carry_over_tokens(apps, schema_editor)

    # then the old token still signs alice in, and no copy of it in clear is left
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {OLD_KEY}")
    assert client.get("/api/v1/sites/").status_code == 200
    assert AuthToken.objects.get(user=alice).expiry is not None
    assert "authtoken_token" not in connection.introspection.table_names()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_migrations WHERE app = 'authtoken'")
        assert cursor.fetchone()[0] == 0


def test_without_drf_tokens_the_migration_changes_nothing(db):
    with connection.schema_editor() as schema_editor:
        carried.carry_over_tokens(apps, schema_editor)

    assert not AuthToken.objects.exists()
