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
