"""`fleet_version` (migration 0012) moves on with every change of what the fleet view's grid and
energy plan are made of, and with nothing else (the fleet view reads their rows again exactly
then: test_site_days)."""

import importlib

import pytest

from django.db import connection, transaction

from devices import services as device_services
from devices.models import Sensor, Site

migration = importlib.import_module("telemetry.migrations.0012_fleet_version")


def version() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT version FROM fleet_version")
        return cursor.fetchone()[0]


def execute(sql: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql)


WATCHED = [
    (table, column)
    for table, columns in migration.WATCHED.items()
    for column in columns
    if column != "id"
]


@pytest.mark.django_db
@pytest.mark.parametrize(("table", "column"), WATCHED)
def test_an_update_of_a_column_the_fleet_view_reads_moves_the_version(table, column):
    before = version()
    execute(f"UPDATE {table} SET {column} = {column}")  # noqa: S608 (names from the test)
    assert version() > before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("table", "column"),
    [
        ("devices_device", "online"),
        ("devices_device", "last_seen"),
        ("devices_site", "address"),
        ("telemetry_polledappliance", "polls"),
        ("telemetry_polledappliance", "last_polled_at"),
    ],
)
def test_an_update_of_anything_else_leaves_it(table, column):
    before = version()
    execute(f"UPDATE {table} SET {column} = {column}")  # noqa: S608 (names from the test)
    assert version() == before


@pytest.mark.django_db
def test_rows_added_deleted_or_truncated_move_it(alice_home):
    before = version()
    sensor = device_services.sensor_create(
        device=alice_home["device"], key="energy_kwh", kind="energy", unit="kWh"
    )
    added = version()
    Sensor.objects.filter(id=sensor.id).delete()
    deleted = version()
    execute("TRUNCATE telemetry_polledappliance")
    assert before < added < deleted < version()


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_change_never_hands_its_number_to_another(alice_home):
    site = alice_home["site"]
    before = version()
    with pytest.raises(RuntimeError), transaction.atomic():
        Site.objects.filter(id=site.id).update(name="never")
        rolled_back = version()
        raise RuntimeError("rolled back")
    assert version() == before
    Site.objects.filter(id=site.id).update(name="kept")
    assert version() not in (before, rolled_back)
