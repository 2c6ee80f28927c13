"""POST /api/v1/ingest/: device tokens, API tokens with the ingest permission, per-item errors."""

import gc
from datetime import UTC, datetime

import pytest
from asgiref.sync import async_to_sync
from rest_framework.test import APIClient

from django.contrib.auth.models import Permission

from devices.groups import site_group
from energy_portal import realtime
from telemetry import apis, services
from tests.telemetry.conftest import stream_rows

URL = "/api/v1/ingest/"
NOW = datetime.now(UTC).replace(microsecond=0)


def _ts(seconds_ago: int = 0) -> str:
    return datetime.fromtimestamp(NOW.timestamp() - seconds_ago, UTC).isoformat()


def _device_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def ingester(make_user):
    user = make_user("tool")
    user.user_permissions.add(Permission.objects.get(codename="ingest_readings"))
    return user


@pytest.mark.django_db
def test_device_token_ingests_its_own_sensors_and_items_reach_the_stream(alice_home, ingest_stream):
    # given
    client = _device_client(alice_home["token"])
    body = [
        {"sensor_id": "pi-a1.power_w", "timestamp": _ts(2), "value": 25.3},
        {"sensor_id": "pi-a1.voltage_v", "timestamp": _ts(2), "value": 230},
    ]
    # when
    response = client.post(URL, body, format="json")
    # then
    assert response.status_code == 202, response.content
    assert response.json() == {"accepted": 2, "rejected": []}
    power = alice_home["device"].sensors.get(key="power_w")
    rows = stream_rows(ingest_stream)
    assert [power.id, int(datetime.fromisoformat(_ts(2)).timestamp() * 1_000_000), 25.3] in rows
    assert len(rows) == 2


@pytest.mark.django_db
def test_device_token_cannot_write_another_devices_sensor(alice_home, bob_home, ingest_stream):
    client = _device_client(alice_home["token"])
    body = [
        {"sensor_id": "pi-b1.power_w", "timestamp": _ts(), "value": 1},
        {"sensor_id": "pi-a1.power_w", "timestamp": _ts(), "value": 2},
    ]
    response = client.post(URL, body, format="json")
    assert response.status_code == 202
    data = response.json()
    assert data["accepted"] == 1
    assert data["rejected"] == [
        {"index": 0, "error": "unknown sensor, or not one of device pi-a1's"}
    ]
    assert len(stream_rows(ingest_stream)) == 1


@pytest.mark.django_db
def test_bad_items_are_rejected_by_index_and_the_rest_kept(
    ingester, alice_home, api_client_for, ingest_stream
):
    body = [
        {"sensor_id": "pi-a1.power_w", "timestamp": _ts(), "value": 1.5},
        {"sensor_id": "pi-a1.power_w", "timestamp": "2026-11-22T10:00:00", "value": 1},
        {"sensor_id": "pi-a1.power_w", "timestamp": _ts(1), "value": "high"},
        {"sensor_id": "nope.power_w", "timestamp": _ts(), "value": 1},
        "junk",
        {"timestamp": _ts(), "value": 1},
        {"sensor_id": "pi-a1.power_w", "timestamp": "2999-01-01T00:00:00Z", "value": 1},
    ]
    response = api_client_for(ingester).post(URL, body, format="json")
    assert response.status_code == 202
    data = response.json()
    assert data["accepted"] == 1
    assert [r["index"] for r in data["rejected"]] == [1, 2, 3, 4, 5, 6]
    errors = {r["index"]: r["error"] for r in data["rejected"]}
    assert "no time zone" in errors[1]
    assert errors[2] == "value must be a number"
    assert errors[3] == "unknown sensor"
    assert "future" in errors[6]
    assert len(stream_rows(ingest_stream)) == 1


@pytest.mark.django_db
def test_a_sensor_id_postgresql_cannot_store_is_rejected_by_index_and_the_rest_kept(
    ingester, alice_home, api_client_for, ingest_stream
):
    # Raw JSON: a lone surrogate only exists as an escape; NUL would sink the whole batch and a
    # surrogate would reach psycopg as a 500 if they were looked up.
    body = (
        f'[{{"sensor_id": "pi-a1.power_w", "timestamp": "{_ts()}", "value": 1}},'
        f' {{"sensor_id": "pi-a1.power_w\\u0000", "timestamp": "{_ts()}", "value": 2}},'
        f' {{"sensor_id": "pi-a1.\\ud800", "timestamp": "{_ts()}", "value": 3}}]'
    )

    response = api_client_for(ingester).post(URL, body, content_type="application/json")

    assert response.status_code == 202, response.content
    assert response.json() == {
        "accepted": 1,
        "rejected": [
            {"index": 1, "error": "sensor_id: Null characters are not allowed."},
            {"index": 2, "error": "sensor_id: Surrogate characters are not allowed: U+D800."},
        ],
    }
    assert len(stream_rows(ingest_stream)) == 1


@pytest.mark.django_db
def test_user_without_ingest_permission_is_refused(alice, alice_home, api_client_for):
    response = api_client_for(alice).post(URL, [], format="json")
    assert response.status_code == 403
    assert "ingest" in response.json()["detail"]


@pytest.mark.django_db
def test_anonymous_and_wrong_device_token_get_401(client, ingest_stream):
    assert APIClient().post(URL, [], format="json").status_code == 401
    response = _device_client("not-a-token").post(URL, [], format="json")
    assert response.status_code == 401
    assert "device token" in response.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{not json", "application/json", "Not valid JSON"),
        (b'{"sensor_id": "x"}', "application/json", "JSON list"),
    ],
)
def test_malformed_bodies_are_400_with_a_reason(
    ingester, api_client_for, body, content_type, message
):
    response = api_client_for(ingester).post(URL, body, content_type=content_type)
    assert response.status_code == 400
    assert message in str(response.json())
    assert gc.isenabled()  # the view paused the cyclic GC and resumed it on the way out


@pytest.mark.django_db
def test_cyclic_gc_is_off_while_a_batch_is_validated_and_on_again_after(
    monkeypatch, ingester, alice_home, api_client_for, ingest_stream
):
    seen = []
    validate = apis.readings_validate

    def watched(**kwargs):
        seen.append(gc.isenabled())
        return validate(**kwargs)

    monkeypatch.setattr(apis, "readings_validate", watched)
    body = [{"sensor_id": "pi-a1.power_w", "timestamp": _ts(i), "value": i} for i in range(50)]
    response = api_client_for(ingester).post(URL, body, format="json")
    assert response.json()["accepted"] == 50
    assert seen == [False]
    assert gc.isenabled()


@pytest.mark.django_db
def test_body_over_the_limit_is_413(ingester, api_client_for, settings):
    settings.INGEST_MAX_BODY_BYTES = 1000
    body = [{"sensor_id": "pi-a1.power_w", "timestamp": _ts(), "value": i} for i in range(100)]
    response = api_client_for(ingester).post(URL, body, format="json")
    assert response.status_code == 413
    assert "split the batch" in response.json()["detail"]


@pytest.mark.django_db
def test_the_same_batch_posted_twice_is_buffered_twice_and_stored_once(
    ingester, alice_home, api_client_for, ingest_stream
):
    from telemetry.models import Reading
    from telemetry.writer import Writer

    body = [{"sensor_id": "pi-a1.power_w", "timestamp": _ts(i), "value": i} for i in range(50)]
    client = api_client_for(ingester)
    assert client.post(URL, body, format="json").json()["accepted"] == 50
    assert client.post(URL, body, format="json").json()["accepted"] == 50
    writer = Writer(name="test", max_rows=10_000, max_age_s=0)
    writer.ensure_group()
    writer.run_once(writer_batch := __import__("telemetry.writer").writer.Batch(), block_ms=10)
    assert Reading.objects.filter(sensor__device__uid="pi-a1").count() == 50
    assert ingest_stream.xlen("ep:ingest") == 0
    del writer_batch


@pytest.mark.django_db
def test_live_messages_of_a_batch_go_only_to_groups_someone_watches(
    alice_home, bob_home, ingest_stream, monkeypatch
):
    # given a fresh process memory of watched groups, and the live sends recorded
    monkeypatch.setattr(realtime, "watched_groups", realtime.WatchedGroups())
    hops = []

    def send_all(pipe, messages):
        hops.append(messages)

    monkeypatch.setattr(services, "_publish_all", send_all)
    alice_site = alice_home["site"].id

    def post(token: str, sensor: str, seconds_ago: int):
        body = [{"sensor_id": sensor, "timestamp": _ts(seconds_ago), "value": 1.0}]
        assert _device_client(token).post(URL, body, format="json").status_code == 202

    # when nobody watches: no message is built, no hop made; the readings are buffered
    post(alice_home["token"], "pi-a1.power_w", 5)
    assert hops == []
    assert len(stream_rows(ingest_stream)) == 1

    # when a viewer of Alice's site joins (in this process), her next batch reaches that group
    # only, and Bob's still goes nowhere
    async_to_sync(realtime.viewers_join)([site_group(alice_site)], "viewer-of-alice")
    try:
        post(alice_home["token"], "pi-a1.power_w", 4)
        post(bob_home["token"], "pi-b1.power_w", 4)
    finally:
        async_to_sync(realtime.viewers_leave)([site_group(alice_site)], "viewer-of-alice")
    assert [[groups for groups, _ in messages] for messages in hops] == [[[site_group(alice_site)]]]
    assert len(stream_rows(ingest_stream)) == 3
