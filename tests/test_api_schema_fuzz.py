"""Schemathesis over the OpenAPI schema: requests generated for every operation, valid and
invalid, as a resident and as an admin, never get a 5xx, and the answers the schema documents
match it.

The requests go in-process through Django's WSGI handler, inside the test's transaction: the
fixtures' rows are there to be found and changed, and all of it is rolled back afterwards.
Examples are bounded so the two runs take well under a minute; API_FUZZ_EXAMPLES=200 digs deeper.
"""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction

from energy_portal.redis_client import sync_client
from telemetry.services import INGEST_STREAM
from telemetry.writer import DEAD_LETTER_STREAM

schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", WSGIHandler()).exclude(
    # Its 503 is its answer whenever beat or the writer is not running, as in tests.
    path="/api/v1/health/"
)
# The coverage phase (every boundary of every parameter) would take minutes; the fuzzing phase
# draws valid and invalid requests alike.
schema.config.phases.coverage.enabled = False
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
FUZZ = settings(
    max_examples=int(os.environ.get("API_FUZZ_EXAMPLES", "6")),  # per operation and user
    deadline=None,
    database=None,
    # Fixtures are made once per operation and its examples share them, which is what the
    # first check warns of; the second would fail a loaded machine, not the API.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def requests_share_the_test_transaction(db):
    # As Django's test client does: a request's start and end must not close the connection
    # that holds the test's transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def empty_ingest_buffer():
    """The admin's ingest requests buffer readings in Redis; no other test should find them."""
    client = sync_client()
    client.delete(INGEST_STREAM, DEAD_LETTER_STREAM)
    yield
    client.delete(INGEST_STREAM, DEAD_LETTER_STREAM)


def authorization(client) -> str:
    """The `Authorization` header an `api_client_for` client sends, however tokens are made."""
    return client._credentials["HTTP_AUTHORIZATION"]


@pytest.fixture
def resident(alice, alice_home, bob_home, api_client_for):
    return authorization(api_client_for(alice))


@pytest.fixture
def admin(admin_user, alice_home, bob_home, api_client_for):
    return authorization(api_client_for(admin_user))


def call_alone(case, authorization: str) -> None:
    """One generated request, in a savepoint rolled back afterwards. In production each request
    has its own transaction; here they share the test's, so a request the database refused (and
    the API answered with a 400) would otherwise leave it aborted for the next one."""
    savepoint = transaction.savepoint()
    try:
        case.call_and_validate(headers={"Authorization": authorization}, checks=CHECKS)
    finally:
        transaction.savepoint_rollback(savepoint)


@schema.parametrize()
@FUZZ
def test_a_resident_gets_no_5xx_and_answers_match_the_schema(case, resident):
    call_alone(case, resident)


@schema.parametrize()
@FUZZ
def test_an_admin_gets_no_5xx_and_answers_match_the_schema(case, admin):
    call_alone(case, admin)


# --- real answers with real figures, against the schema --------------------------------------


@pytest.fixture
def history_data(alice_home, bob_home):
    """A day of Alice's meter (thirds of a kWh: rounding shows), a silent device, and Bob's
    home with nothing: the history, grid and not-reporting answers all have rows."""
    from datetime import UTC, datetime, timedelta

    from devices import services as device_services
    from telemetry.services import readings_insert

    site = alice_home["site"]
    meter, _ = device_services.device_create(
        uid="meter-docs",
        site=site,
        kind="meter",
        sensors=[{"key": "energy_kwh", "kind": "energy", "unit": "kWh"}],
    )
    start = datetime(2026, 5, 10, tzinfo=UTC)
    times = [start + timedelta(minutes=15 * n) for n in range(96)]
    with transaction.atomic():
        readings_insert(
            sensor_ids=[meter.sensors.get().id] * len(times),
            times_us=[int(t.timestamp() * 1_000_000) for t in times],
            values=[1 / 3] * len(times),
        )
    return {"site": site.id, "sensor": "meter-docs.energy_kwh"}


REAL_ANSWERS = [
    ("/api/v1/sites/{site_id}/energy/", {"period": "day", "date": "2026-05-10"}),
    ("/api/v1/sites/{site_id}/energy/", {"period": "week", "date": "2026-05-10"}),
    ("/api/v1/sites/{site_id}/energy/", {"period": "year", "date": "2026-05-10"}),
    ("/api/v1/sites/{site_id}/energy/", {"period": "day", "date": "2099-12-31"}),
    ("/api/v1/analytics/energy/", {"period": "day", "date": "2026-05-10"}),
    ("/api/v1/analytics/energy/", {"period": "year", "date": "2026-05-10"}),
    ("/api/v1/analytics/energy/", {"period": "month", "date": "2099-12-31"}),
    ("/api/v1/analytics/not-reporting/", {}),
    ("/api/v1/aggregates/", {"bucket": "1h"}),
    ("/api/v1/stats/", {}),
]


@pytest.mark.parametrize(("path", "query"), REAL_ANSWERS)
def test_real_answers_match_the_schema(path, query, history_data, admin):
    operation = schema[path]["GET"]
    if "sensor" not in query and path in ("/api/v1/aggregates/", "/api/v1/stats/"):
        query = {**query, "sensor": history_data["sensor"],
                 "start": "2026-05-10T00:00:00Z", "end": "2026-05-11T00:00:00Z"}  # fmt: skip
    case = operation.Case(
        path_parameters={"site_id": history_data["site"]} if "{site_id}" in path else {},
        query=query,
    )

    response = case.call(headers={"Authorization": admin})

    assert response.status_code == 200, response.text
    case.validate_response(response, checks=[response_schema_conformance])
    body = response.json()
    if "results" in body and path != "/api/v1/analytics/not-reporting/":
        assert body["results"]


def test_health_answers_match_the_schema_whether_healthy_or_not(db):
    operation = schemathesis.openapi.from_wsgi("/api/v1/schema/", WSGIHandler())["/api/v1/health/"][
        "GET"
    ]
    case = operation.Case()

    response = case.call()

    assert response.status_code in (200, 503)  # 503 here: beat and the writer are not running
    case.validate_response(response, checks=[response_schema_conformance])
    assert set(response.json()["checks"]) == {"database", "redis", "ingest_buffer", "beat"}
