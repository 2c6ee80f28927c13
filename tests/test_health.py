"""`GET /api/v1/health/`: 200 while database, Redis, ingest buffer and beat are fine, 503 if not."""

import socket
import time

import pytest
from rest_framework.test import APIClient

from energy_portal.health import BEAT_KEY, beat_heartbeat_record
from energy_portal.redis_client import sync_client, sync_client_reset
from telemetry.services import INGEST_STREAM

URL = "/api/v1/health/"


@pytest.fixture
def redis_state(db):
    """Redis without a beat heartbeat or buffered readings, before and after the test."""
    client = sync_client()
    client.delete(BEAT_KEY, INGEST_STREAM)
    yield client
    client.delete(BEAT_KEY, INGEST_STREAM)


@pytest.fixture
def unreachable_redis(settings, db):
    """Point the portal at a port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    sync_client_reset()
    yield
    sync_client_reset()


def get_health():
    """Anonymous, as a load balancer or monitor asks."""
    response = APIClient().get(URL)
    return response.status_code, response.json()


def test_health_is_200_with_every_check_ok_when_all_is_well(redis_state):
    beat_heartbeat_record()

    status, body = get_health()

    assert status == 200
    assert body["healthy"] is True
    assert {"database", "redis", "beat"} <= set(body["checks"])
    assert all(check["ok"] for check in body["checks"].values()), body
    assert body["checks"]["beat"]["age_s"] < 5


def test_health_is_200_before_beat_has_ever_run(redis_state):
    status, body = get_health()

    assert status == 200
    assert body["checks"]["beat"] == {"ok": True, "last_run": None, "age_s": None}


def test_health_is_503_when_redis_is_unreachable(unreachable_redis):
    status, body = get_health()

    assert status == 503
    assert body["healthy"] is False
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["error"]
    assert body["checks"]["beat"]["ok"] is False


def test_health_is_503_when_the_beat_heartbeat_is_stale(redis_state, settings):
    # given: the last beat run is older than the limit
    settings.BEAT_STALE_AFTER = 60
    redis_state.set(BEAT_KEY, f"{time.time() - 75:.3f}")

    # when
    status, body = get_health()

    # then
    assert status == 503
    beat = body["checks"]["beat"]
    assert beat["ok"] is False
    assert beat["age_s"] >= 75
    assert "limit 60 s" in beat["error"]
    assert body["checks"]["redis"]["ok"] is True


def test_health_is_503_when_buffered_readings_wait_too_long(redis_state, settings):
    # given: a reading buffered long ago that no writer has taken
    settings.INGEST_LAG_LIMIT = 30
    beat_heartbeat_record()
    waited_since_ms = int((time.time() - 120) * 1000)
    redis_state.xadd(INGEST_STREAM, {"rows": "[]"}, id=f"{waited_since_ms}-0")

    status, body = get_health()

    assert status == 503
    buffer = body["checks"]["ingest_buffer"]
    assert (buffer["ok"], buffer["entries"]) == (False, 1)
    assert buffer["lag_s"] >= 120
    assert "writer" in buffer["error"]
