"""The device protocol at /ws/devices/ and the browsers' live feed at /ws/live/, driven through
the project's ASGI application with the Redis channel layer, PostgreSQL and the ingest stream."""

import asyncio
import json
import uuid
from collections import deque
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import psycopg
import pytest
import pytest_asyncio
import redis.asyncio
import redis.exceptions
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from django.contrib.sessions.backends.db import SessionStore
from django.db import connections, transaction
from django.test import Client
from django.utils import timezone
from django.utils.module_loading import import_string

from devices import command_results as command_results_module
from devices import consumers, services, socket_registry
from devices import sent_marks as sent_marks_module
from devices.consumers import (
    CLOSE_BUFFER_DOWN,
    CLOSE_FLOOD,
    CLOSE_INTERNAL_ERROR,
    CLOSE_REPLACED,
    CLOSE_SILENT,
    MAX_FRAME_BYTES,
)
from devices.models import Command, CommandStatus, Device
from devices.silence_watch import silence_watch
from energy_portal import gc_settle
from energy_portal.asgi import application
from energy_portal.live_hub import live_hub
from energy_portal.redis_client import sync_client
from energy_portal.settings.realtime import channel_layer_config
from outages.models import PowerEvent
from telemetry import services as telemetry_services
from telemetry.services import INGEST_STREAM

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The ingest stream and what it remembers of each device's samples, the socket registry, the
# channel layer's queues and groups, and the count of live viewers per group.
REDIS_PATTERNS = [f"{INGEST_STREAM}*", "ep:devices:*", "ep:asgi*", "ep:live:*"]


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """Users are made per test; the production hasher would dominate the run time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest_asyncio.fixture(autouse=True)
async def close_sync_thread_connections():
    """ORM calls made off the event loop keep a connection in a helper thread (connections
    live for a while); close it so the test database can be dropped at the end."""
    yield
    await database_sync_to_async(connections.close_all)()


def socket_keys_delete() -> None:
    """Delete the Redis keys sockets use (`REDIS_PATTERNS`)."""
    client = sync_client()
    for pattern in REDIS_PATTERNS:
        for key in client.scan_iter(match=pattern):
            client.delete(key)


@pytest.fixture(autouse=True)
def clean_redis():
    """The Redis keys sockets use, empty before and after the test."""
    socket_keys_delete()
    yield
    socket_keys_delete()


# --- helpers -----------------------------------------------------------------------------------


def recent(seconds_ago: float = 60, now: datetime | None = None) -> tuple[str, int]:
    """A time a little in the past as a device writes it (RFC 3339, ms, Z) and in epoch µs: in
    a whole second of `now` (default: the clock) less `seconds_ago`, so calls that must give
    distinct instants pass the same `now`."""
    at = ((now or datetime.now(UTC)) - timedelta(seconds=seconds_ago)).replace(microsecond=250_000)
    text = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return text, (at - EPOCH) // timedelta(microseconds=1)


def device_communicator(token: str | None) -> WebsocketCommunicator:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
    return WebsocketCommunicator(application, "/ws/devices/", headers=headers)


@asynccontextmanager
async def device_socket(token: str):
    """A connected Pi; disconnected however the test ends."""
    communicator = device_communicator(token)
    connected, _ = await communicator.connect()
    try:
        assert connected, "the device's handshake was refused"
        yield communicator
    finally:
        await communicator.disconnect()


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class LiveFeed(WebsocketCommunicator):
    """A browser's live socket, read message by message: a frame holding several (a JSON array,
    as the server sends those that waited together) gives them one at a time. `frames` counts
    the frames received."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: deque = deque()
        self.frames = 0

    async def receive_json_from(self, timeout=1):
        if not self.pending:
            frame = await super().receive_json_from(timeout)
            self.frames += 1
            self.pending.extend(frame if isinstance(frame, list) else [frame])
        return self.pending.popleft()

    async def receive_nothing(self, timeout=0.1, interval=0.01):
        return not self.pending and await super().receive_nothing(timeout, interval)


def live_communicator(
    cookie: str | None, *, origin: bytes = b"http://127.0.0.1", query: str = ""
) -> LiveFeed:
    headers = [(b"origin", origin)]
    if cookie is not None:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return LiveFeed(application, f"/ws/live/{query}", headers=headers)


@asynccontextmanager
async def live_socket(user, query: str = ""):
    """A browser's live feed, logged in as `user` through a real session cookie."""
    cookie = await database_sync_to_async(session_cookie)(user)
    communicator = live_communicator(cookie, query=query)
    connected, _ = await communicator.connect()
    try:
        assert connected, "the live socket was refused"
        yield communicator
    finally:
        await communicator.disconnect()


async def settle(pi: WebsocketCommunicator) -> None:
    """Wait until the consumer has handled everything sent before (the connect included).

    A consumer handles its messages one at a time, in order, so the answer to a frame of an
    unknown type comes only after all earlier work is done."""
    await pi.send_json_to({"type": "settle"})
    answer = await pi.receive_json_from()
    assert answer["code"] == "unknown_type", answer


async def to_socket(device_id: int, message: dict) -> None:
    """Send `message` through the channel layer to the device's socket, on the channel the
    registry names (the socket joins no group)."""
    channel = await socket_registry.connected_channel(device_id)
    assert channel is not None, "the device has no socket"
    await get_channel_layer().send(channel, message)


def telemetry(msg_id: str, ts: str, **values) -> dict:
    return {"type": "telemetry", "msg_id": msg_id, "ts": ts, "values": values}


async def assert_acked(pi: WebsocketCommunicator, frame: dict, accepted: int) -> dict:
    await pi.send_json_to(frame)
    ack = await pi.receive_json_from()
    assert ack["type"] == "ack", ack
    assert ack["msg_id"] == frame["msg_id"]
    assert ack["accepted"] == accepted, ack
    return ack


async def receive_close(communicator: WebsocketCommunicator, timeout: float = 1) -> int:
    message = await communicator.receive_output(timeout)
    assert message["type"] == "websocket.close", message
    return message["code"]


def stream_rows() -> list[tuple[str, list]]:
    return [
        (fields[b"src"].decode(), json.loads(fields[b"rows"]))
        for _, fields in sync_client().xrange(INGEST_STREAM)
    ]


@database_sync_to_async
def sensor_ids(device: Device) -> dict[str, int]:
    return dict(device.sensors.values_list("key", "id"))


@database_sync_to_async
def device_online(device: Device) -> bool:
    return Device.objects.get(pk=device.pk).online


@database_sync_to_async
def command_fresh(command: Command) -> Command:
    return Command.objects.get(pk=command.pk)


issue_command = database_sync_to_async(services.command_issue)


async def command_marked_sent(command: Command, timeout: float = 3.0) -> Command:
    """The command once its socket's batch of sent marks was written (`sent_marks`: about
    0.1 s after its frame went out), or as it is after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        fresh = await command_fresh(command)
        if fresh.sent_at is not None or asyncio.get_running_loop().time() > deadline:
            return fresh
        await asyncio.sleep(0.02)


# --- handshake ---------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "not-a-device-token"], ids=["missing", "wrong"])
async def test_device_handshake_without_a_valid_token_is_refused(alice_home, token):
    communicator = device_communicator(token)

    connected, _ = await communicator.connect()
    await communicator.disconnect()

    assert connected is False
    assert await device_online(alice_home["device"]) is False


async def test_device_handshake_with_another_scheme_is_refused(alice_home):
    communicator = WebsocketCommunicator(
        application,
        "/ws/devices/",
        headers=[(b"authorization", f"Token {alice_home['token']}".encode())],
    )

    connected, _ = await communicator.connect()
    await communicator.disconnect()

    assert connected is False


# --- telemetry ---------------------------------------------------------------------------------


async def test_single_telemetry_frame_is_acked_and_its_known_readings_land_in_the_stream(
    alice_home,
):
    ids = await sensor_ids(alice_home["device"])
    ts, epoch_us = recent()

    async with device_socket(alice_home["token"]) as pi:
        await pi.send_json_to(telemetry("m1", ts, power_w=512.3, voltage_v=231, bogus=1))
        ack = await pi.receive_json_from()

    assert ack == {
        "type": "ack",
        "msg_id": "m1",
        "accepted": 2,
        "rejected": [{"key": "bogus", "error": "unknown sensor"}],
    }
    assert stream_rows() == [
        ("socket", [[ids["power_w"], epoch_us, 512.3], [ids["voltage_v"], epoch_us, 231.0]])
    ]


async def test_frame_resent_after_a_lost_ack_is_acked_again_but_buffered_once(alice_home):
    ids = await sensor_ids(alice_home["device"])
    ts, epoch_us = recent()
    frame = telemetry("m1", ts, power_w=512.3, voltage_v=231)

    async with device_socket(alice_home["token"]) as pi:
        await assert_acked(pi, frame, accepted=2)
    async with device_socket(alice_home["token"]) as pi:  # reconnected, it resends
        await assert_acked(pi, frame, accepted=2)

    assert stream_rows() == [
        ("socket", [[ids["power_w"], epoch_us, 512.3], [ids["voltage_v"], epoch_us, 231.0]])
    ]


async def test_a_sample_twice_in_one_batch_is_buffered_once_and_its_resend_not_at_all(
    alice_home, alice
):
    # A Pi whose clock gave two readings the same millisecond: one instant of one sensor is
    # one sample, whether the copies come in one frame or in two, and viewers see the value
    # that is stored.
    ids = await sensor_ids(alice_home["device"])
    ts, epoch_us = recent()
    twice = {
        "type": "telemetry",
        "msg_id": "b1",
        "batch": [
            {"ts": ts, "values": {"power_w": 512.3, "voltage_v": 231}},
            {"ts": ts, "values": {"power_w": 600.0, "voltage_v": 232}},
        ],
    }
    async with live_socket(alice) as browser, device_socket(alice_home["token"]) as pi:
        await assert_acked(pi, twice, accepted=4)
        await assert_acked(pi, telemetry("m2", ts, power_w=512.3, voltage_v=231), accepted=2)
        live = await browser.receive_json_from()
        while live["type"] != "readings":
            live = await browser.receive_json_from()

    assert [point["values"] for point in live["points"]] == [{"power_w": 512.3, "voltage_v": 231}]
    assert stream_rows() == [
        ("socket", [[ids["power_w"], epoch_us, 512.3], [ids["voltage_v"], epoch_us, 231.0]])
    ]


async def test_batch_frame_is_acked_with_bad_entries_reported_by_index(alice_home):
    ids = await sensor_ids(alice_home["device"])
    ts0, us0 = recent(120)
    ts1, us1 = recent(60)
    frame = {
        "type": "telemetry",
        "msg_id": "b1",
        "batch": [
            {"ts": ts0, "values": {"power_w": 100, "voltage_v": 230.5}},
            {"ts": ts1, "values": "not an object"},
            {"ts": ts1, "values": {"power_w": 101.5, "bogus": 3}},
            {"ts": "2026-11-22T10:00:00", "values": {"power_w": 7}},
        ],
    }

    async with device_socket(alice_home["token"]) as pi:
        ack = await assert_acked(pi, frame, accepted=3)

    assert [(r["index"], r.get("key")) for r in ack["rejected"]] == [
        (1, None),
        (2, "bogus"),
        (3, "power_w"),
    ]
    assert "no time zone" in ack["rejected"][2]["error"]
    assert stream_rows() == [
        (
            "socket",
            [
                [ids["power_w"], us0, 100.0],
                [ids["voltage_v"], us0, 230.5],
                [ids["power_w"], us1, 101.5],
            ],
        )
    ]


async def test_nan_value_is_rejected_per_key_and_the_rest_of_the_frame_is_kept(alice_home):
    ts, _ = recent()
    # Python's json (like many Pi-side encoders) writes NaN, which JSON itself does not have.
    raw = json.dumps(telemetry("n1", ts, power_w=float("nan"), voltage_v=230))

    async with device_socket(alice_home["token"]) as pi:
        await pi.send_to(text_data=raw)
        ack = await pi.receive_json_from()

    assert (ack["accepted"], ack["rejected"]) == (
        1,
        [{"key": "power_w", "error": "value must be a finite number"}],
    )
    assert [[row[2] for row in rows] for _, rows in stream_rows()] == [[230.0]]


BAD_VALUES = {
    # JSON text of a value: the error the ack gives for it
    "Infinity": "value must be a finite number",
    "-Infinity": "value must be a finite number",
    "1e400": "value must be a finite number",
    "1" + "0" * 400: "value must be a finite number",
    '"512"': "value must be a number",
    "true": "value must be a number",
    "null": "value must be a number",
    "[1]": "value must be a number",
}


async def test_values_that_are_not_finite_numbers_are_rejected_per_entry(alice_home):
    ts, _ = recent()
    batch = ", ".join(
        f'{{"ts": "{ts}", "values": {{"power_w": {text}, "voltage_v": 230}}}}'
        for text in BAD_VALUES
    )
    raw = f'{{"type": "telemetry", "msg_id": "v1", "batch": [{batch}]}}'

    async with device_socket(alice_home["token"]) as pi:
        await pi.send_to(text_data=raw)
        ack = await pi.receive_json_from()

    assert ack["accepted"] == len(BAD_VALUES)
    assert ack["rejected"] == [
        {"key": "power_w", "error": error, "index": index}
        for index, error in enumerate(BAD_VALUES.values())
    ]


async def test_sensor_added_after_connect_is_accepted_without_reconnecting(alice_home):
    ts, _ = recent()

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        await database_sync_to_async(services.sensor_create)(
            device=alice_home["device"], key="energy_wh", kind="energy", unit="Wh"
        )
        ack = await assert_acked(pi, telemetry("s1", ts, energy_wh=5), accepted=1)

    assert ack["rejected"] == []


def _frame(**fields) -> str:
    return json.dumps({"type": "telemetry", "msg_id": "e1", **fields})


def _future() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


BAD_FRAMES = {
    # id: (text or bytes, expected code, expected msg_id, words in the detail)
    "invalid-json": (lambda: "{not json", "invalid_json", None, "not valid JSON"),
    "unknown-type": (
        lambda: json.dumps({"type": "selfie", "msg_id": "u1"}),
        "unknown_type",
        "u1",
        "telemetry",
    ),
    "not-an-object": (lambda: "[1, 2]", "invalid_payload", None, "JSON object"),
    "missing-msg-id": (
        lambda: json.dumps({"type": "telemetry", "ts": recent()[0], "values": {"power_w": 1}}),
        "invalid_payload",
        None,
        "msg_id",
    ),
    "values-not-an-object": (
        lambda: _frame(ts=recent()[0], values=[1, 2]),
        "invalid_payload",
        "e1",
        "values must be a non-empty object",
    ),
    "neither-values-nor-batch": (lambda: _frame(ts=recent()[0]), "invalid_payload", "e1", "batch"),
    "naive-ts": (
        lambda: _frame(ts="2026-11-22T10:00:00", values={"power_w": 1}),
        "invalid_payload",
        "e1",
        "no time zone",
    ),
    "far-future-ts": (
        lambda: _frame(ts=_future(), values={"power_w": 1}),
        "invalid_payload",
        "e1",
        "in the future",
    ),
    "ts-out-of-range": (
        lambda: _frame(ts="9999-12-31T23:59:59-01:00", values={"power_w": 1}),
        "invalid_payload",
        "e1",
        "out of range",
    ),
    "too-large": (
        lambda: _frame(ts=recent()[0], values={"power_w": 1}, pad="x" * MAX_FRAME_BYTES),
        "too_large",
        None,
        "limited",
    ),
    "too-large-in-utf8": (  # fewer characters than the limit, but more bytes
        lambda: _frame(ts=recent()[0], values={"power_w": 1}, pad="é" * (MAX_FRAME_BYTES // 2)),
        "too_large",
        None,
        "limited",
    ),
    "deeply-nested": (lambda: "[" * 50_000, "invalid_json", None, "not valid JSON"),
    "binary": (lambda: b'{"type": "heartbeat"}', "invalid_json", None, "binary"),
    "power-bad-state": (
        lambda: json.dumps({"type": "power", "msg_id": "p9", "state": "flickering"}),
        "invalid_payload",
        "p9",
        "lost",
    ),
    "command-result-status-not-a-string": (
        lambda: json.dumps({"type": "command_result", "id": str(uuid.uuid4()), "status": ["done"]}),
        "invalid_payload",
        None,
        "status must be done, failed or rejected",
    ),
    "command-result-bad-id": (
        lambda: json.dumps({"type": "command_result", "id": "abc", "status": "done"}),
        "invalid_payload",
        None,
        "UUID",
    ),
    "type-a-list": (
        lambda: json.dumps({"type": ["telemetry"], "msg_id": "t1"}),
        "unknown_type",
        "t1",
        "known types",
    ),
    "type-an-object": (
        lambda: json.dumps({"type": {"telemetry": 1}, "msg_id": "t2"}),
        "unknown_type",
        "t2",
        "known types",
    ),
    "command-result-id-nested": (  # (str() of one nested near the recursion limit fails)
        lambda: '{"type": "command_result", "status": "done", "id": ' + "[" * 500 + "]" * 500 + "}",
        "invalid_payload",
        None,
        "UUID",
    ),
    "command-result-detail-not-a-string": (
        lambda: json.dumps(
            {"type": "command_result", "id": str(uuid.uuid4()), "status": "done", "detail": [1]}
        ),
        "invalid_payload",
        None,
        "detail must be a string",
    ),
}


async def test_each_bad_frame_gets_an_error_and_the_socket_keeps_working(alice_home):
    answers = {}
    start = datetime.now(UTC)

    async with device_socket(alice_home["token"]) as pi:
        for name, (make, *_) in BAD_FRAMES.items():
            frame = make()
            if isinstance(frame, bytes):
                await pi.send_to(bytes_data=frame)
            else:
                await pi.send_to(text_data=frame)
            error = await pi.receive_json_from()
            # Each at its own instant: a sample seen before is acked but not buffered again.
            # (Counted from one start: a loop crossing a second would give one instant twice.)
            ts = recent(seconds_ago=len(answers) + 1, now=start)[0]
            ack = await assert_acked(pi, telemetry(f"ok-{name}", ts, power_w=1), accepted=1)
            answers[name] = (error, ack["msg_id"])

    for name, (_, code, msg_id, words) in BAD_FRAMES.items():
        error, acked = answers[name]
        assert (error["type"], error["code"], error.get("msg_id")) == ("error", code, msg_id), name
        assert words in error["detail"], (name, error)
        assert acked == f"ok-{name}"
    assert len(stream_rows()) == len(BAD_FRAMES)  # only the valid frames' readings


# --- the ingest buffer: frames of one moment travel together --------------------------------


class Trips:
    """The socket buffer's trips to Redis: the devices whose frames each carried. While `open` is
    clear, trips wait before reaching Redis; `failure`, if set, is what the next trip raises."""

    def __init__(self):
        self.devices: list[list[int]] = []
        self.open = asyncio.Event()
        self.open.set()
        self.failure: Exception | None = None

    async def started(self, count: int, timeout: float = 5) -> None:
        """Wait until `count` trips have started."""
        async with asyncio.timeout(timeout):
            while len(self.devices) < count:
                await asyncio.sleep(0.005)


@pytest.fixture
def trips(monkeypatch):
    record = Trips()
    trip = telemetry_services._SocketBuffer._trip

    async def recorded_trip(self, frames):
        record.devices.append([frame.device_id for frame in frames])
        await record.open.wait()
        if record.failure is not None:
            failure, record.failure = record.failure, None
            raise failure
        await trip(self, frames)

    monkeypatch.setattr(telemetry_services._SocketBuffer, "_trip", recorded_trip)
    return record


async def test_a_frame_is_acked_only_once_its_readings_are_in_the_stream(alice_home, trips):
    ts, epoch_us = recent()

    async with device_socket(alice_home["token"]) as pi:
        trips.open.clear()
        await pi.send_json_to(telemetry("m1", ts, power_w=1))
        no_ack_while_on_the_way = await pi.receive_nothing(timeout=0.3)
        rows_while_on_the_way = stream_rows()
        trips.open.set()
        await pi.receive_json_from()
        rows_at_ack = stream_rows()

    assert no_ack_while_on_the_way
    assert rows_while_on_the_way == []
    assert [[us for _, us, _ in rows] for _, rows in rows_at_ack] == [[epoch_us]]


async def test_frames_of_two_sockets_in_one_moment_share_one_trip(alice_home, bob_home, trips):
    ts, _ = recent()
    alices, bobs = alice_home["device"].id, bob_home["device"].id

    async with (
        device_socket(alice_home["token"]) as alices_pi,
        device_socket(bob_home["token"]) as bobs_pi,
    ):
        await settle(alices_pi)
        await settle(bobs_pi)
        await alices_pi.send_json_to(telemetry("a1", ts, power_w=1))
        await bobs_pi.send_json_to(telemetry("b1", ts, power_w=2))
        acks = [await alices_pi.receive_json_from(), await bobs_pi.receive_json_from()]

    assert [ack["msg_id"] for ack in acks] == ["a1", "b1"]
    assert [sorted(devices) for devices in trips.devices] == [sorted([alices, bobs])]
    # one stream entry for both: the entry format is the same, the rows are the two frames'
    assert sorted(value for _, rows in stream_rows() for _, _, value in rows) == [1.0, 2.0]


async def test_a_failed_trip_fails_its_own_frames_only(alice_home, bob_home, trips):
    ts, _ = recent()
    bobs_ids = await sensor_ids(bob_home["device"])
    alices_pi = device_communicator(alice_home["token"])
    assert (await alices_pi.connect())[0]

    async with device_socket(bob_home["token"]) as bobs_pi:
        await settle(alices_pi)
        await settle(bobs_pi)
        # given Alice's frame on a trip that will fail, and Bob's waiting for the next trip
        trips.open.clear()
        trips.failure = redis.exceptions.ConnectionError("Connection lost")
        await alices_pi.send_json_to(telemetry("a1", ts, power_w=1))
        await alices_pi.receive_nothing(timeout=0.2)
        await bobs_pi.send_json_to(telemetry("b1", ts, power_w=2))
        await bobs_pi.receive_nothing(timeout=0.2)
        # when the trip fails
        trips.open.set()
        # then Alice's socket is closed unacked (her Pi resends after reconnecting); Bob's frame
        # goes on the next trip and is acked
        alices_close = await receive_close(alices_pi, timeout=5)
        await alices_pi.disconnect()
        bobs_ack = await bobs_pi.receive_json_from()

    assert alices_close == CLOSE_BUFFER_DOWN
    assert bobs_ack["msg_id"] == "b1"
    assert [len(devices) for devices in trips.devices] == [1, 1]
    assert [[row[0] for row in rows] for _, rows in stream_rows()] == [[bobs_ids["power_w"]]]
    assert await device_online(alice_home["device"]) is False


async def test_frames_read_while_an_earlier_one_travels_share_the_next_trip_acked_in_order(
    alice_home, trips
):
    ts, _ = recent()
    device_id = alice_home["device"].id

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        # given a first frame whose trip to the buffer is held on the way
        trips.open.clear()
        await pi.send_json_to(telemetry("m1", ts, power_w=1))
        await trips.started(1)
        # when two more frames come meanwhile
        await pi.send_json_to(telemetry("m2", recent(50)[0], power_w=2))
        await pi.send_json_to(telemetry("m3", recent(40)[0], power_w=3))
        acked_early = not await pi.receive_nothing(timeout=0.3)
        trips.open.set()
        acks = [await pi.receive_json_from(timeout=5) for _ in range(3)]

    # then they were read at once and went on the next trip together; the acks keep the order
    assert not acked_early
    assert trips.devices == [[device_id], [device_id, device_id]]
    assert [(ack["type"], ack["msg_id"]) for ack in acks] == [("ack", f"m{n}") for n in (1, 2, 3)]
    assert sorted(value for _, rows in stream_rows() for _, _, value in rows) == [1.0, 2.0, 3.0]


async def test_an_error_for_a_later_frame_waits_behind_an_earlier_frames_ack(alice_home, trips):
    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        trips.open.clear()
        await pi.send_json_to(telemetry("m1", recent()[0], power_w=1))
        await pi.send_to(text_data="{not json")
        answered_early = not await pi.receive_nothing(timeout=0.3)
        trips.open.set()
        answers = [await pi.receive_json_from(timeout=5) for _ in range(2)]

    assert not answered_early
    assert [answer["type"] for answer in answers] == ["ack", "error"]
    assert (answers[0]["msg_id"], answers[1]["code"]) == ("m1", "invalid_json")


async def test_a_failed_trip_leaves_it_and_every_later_frame_unacked(alice_home, trips):
    pi = device_communicator(alice_home["token"])
    assert (await pi.connect())[0]
    await settle(pi)
    # given a frame on a trip that will fail, and a second frame waiting for the next trip
    trips.open.clear()
    trips.failure = redis.exceptions.ConnectionError("Connection lost")
    await pi.send_json_to(telemetry("m1", recent()[0], power_w=1))
    await pi.send_json_to(telemetry("m2", recent(50)[0], power_w=2))
    await pi.receive_nothing(timeout=0.2)
    # when the trip fails
    trips.open.set()
    # then the socket closes with nothing acked: the Pi resends both after reconnecting
    output = await pi.receive_output(timeout=5)
    await pi.disconnect()

    assert output == {"type": "websocket.close", "code": CLOSE_BUFFER_DOWN}


async def test_a_trip_failing_on_a_defect_closes_the_socket_unacked(alice_home, trips, caplog):
    pi = device_communicator(alice_home["token"])
    assert (await pi.connect())[0]
    await settle(pi)
    trips.failure = ValueError("a defect in the trip")

    await pi.send_json_to(telemetry("m1", recent()[0], power_w=1))
    output = await pi.receive_output(timeout=5)
    await pi.disconnect()

    assert output == {"type": "websocket.close", "code": CLOSE_BUFFER_DOWN}
    assert "buffering failed" in caplog.text and "a defect in the trip" in caplog.text


async def test_a_socket_closed_while_acks_wait_sends_none_of_them(alice_home, trips):
    async with device_socket(alice_home["token"]) as first:
        await settle(first)
        # given an ack waiting for its trip
        trips.open.clear()
        await first.send_json_to(telemetry("m1", recent()[0], power_w=1))
        await trips.started(1)
        # when the device connects again (the first socket is replaced) and the trip comes back
        async with device_socket(alice_home["token"]) as second:
            close_code = await receive_close(first)
            trips.open.set()
            await settle(second)
            nothing_after_close = await first.receive_nothing(timeout=0.3)

    # then the replaced socket got its close and nothing after it: the Pi resends m1
    assert close_code == CLOSE_REPLACED
    assert nothing_after_close


async def test_a_pi_that_does_not_read_its_acks_is_read_no_further(alice_home, trips, monkeypatch):
    # given a socket whose answers cannot be sent (the Pi stopped reading) until `reading` is set
    monkeypatch.setattr(consumers, "MAX_UNANSWERED", 1)
    reading = asyncio.Event()
    send_text = consumers.DeviceConsumer.send_text

    async def stuck_send_text(self, text):
        await reading.wait()
        await send_text(self, text)

    monkeypatch.setattr(consumers.DeviceConsumer, "send_text", stuck_send_text)
    device_id = alice_home["device"].id

    async with device_socket(alice_home["token"]) as pi:
        # when it sends four frames, each trip done at once
        for n in range(1, 5):
            await pi.send_json_to(telemetry(f"m{n}", recent(60 - n)[0], power_w=n))
        await pi.receive_nothing(timeout=0.3)
        buffered_while_stuck = sum(len(devices) for devices in trips.devices)
        reading.set()
        acks = [await pi.receive_json_from(timeout=5) for _ in range(4)]

    # then the fourth waited in the socket while three answers waited to be sent
    assert buffered_while_stuck == 3
    assert [ack["msg_id"] for ack in acks] == ["m1", "m2", "m3", "m4"]
    assert trips.devices and all(set(devices) == {device_id} for devices in trips.devices)


async def test_a_socket_reads_no_further_while_too_many_of_its_frames_wait_for_answers(
    alice_home, trips, monkeypatch
):
    monkeypatch.setattr(consumers, "MAX_UNANSWERED", 1)
    device_id = alice_home["device"].id

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        # given a first frame held on its trip and a second waiting for the next trip
        trips.open.clear()
        await pi.send_json_to(telemetry("m1", recent()[0], power_w=1))
        await trips.started(1)
        await pi.send_json_to(telemetry("m2", recent(50)[0], power_w=2))
        # when a third comes
        await pi.send_json_to(telemetry("m3", recent(40)[0], power_w=3))
        await pi.receive_nothing(timeout=0.3)
        waiting = [frame.device_id for frame in telemetry_services._socket_buffer()._waiting]
        trips.open.set()
        acks = [await pi.receive_json_from(timeout=5) for _ in range(3)]

    # then it stays unread (in the socket) until the oldest is answered, and is then handled
    assert waiting == [device_id]
    assert [ack["msg_id"] for ack in acks] == ["m1", "m2", "m3"]


# --- rate limiting -----------------------------------------------------------------------------


@pytest.fixture
def tight_rate(settings):
    """Two frames of burst and (practically) no refill, so the test does not race the clock."""
    settings.DEVICE_RATE_PER_S = 0.001
    settings.DEVICE_RATE_BURST = 2


async def test_frames_beyond_the_burst_get_rate_limited_errors(alice_home, tight_rate):
    async with device_socket(alice_home["token"]) as pi:
        await assert_acked(pi, telemetry("r1", recent(3)[0], power_w=1), accepted=1)
        await assert_acked(pi, telemetry("r2", recent(2)[0], power_w=2), accepted=1)
        await pi.send_json_to(telemetry("r3", recent(1)[0], power_w=3))
        error = await pi.receive_json_from()

    assert error["type"] == "error"
    assert error["code"] == "rate_limited"
    assert len(stream_rows()) == 2


async def test_sustained_flood_closes_the_socket(alice_home, tight_rate):
    async with device_socket(alice_home["token"]) as pi:
        codes = []
        for _ in range(4):  # two allowed (unknown type: answered), two refused
            await pi.send_json_to({"type": "flood"})
            codes.append((await pi.receive_json_from())["code"])
        await pi.send_json_to({"type": "flood"})
        close_code = await receive_close(pi)

    assert codes == ["unknown_type", "unknown_type", "rate_limited", "rate_limited"]
    assert close_code == CLOSE_FLOOD


# --- presence ----------------------------------------------------------------------------------


async def test_connect_marks_the_device_online_and_disconnect_offline(alice_home):
    device = alice_home["device"]

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        online_while_connected = await device_online(device)
        registered = await socket_registry.connected_channel(device.id)

    assert online_while_connected is True
    assert registered is not None
    assert await device_online(device) is False
    assert await socket_registry.connected_channel(device.id) is None


@pytest.fixture
def releasing_fails(monkeypatch):
    """The registry cannot give the socket's entry back, as when Redis drops the connection
    mid-close."""

    async def release(device_id, channel_name):
        raise ConnectionError("Redis connection lost")

    monkeypatch.setattr(socket_registry, "release", release)


async def test_a_failing_step_of_the_disconnect_is_one_line_and_the_next_steps_still_run(
    alice_home, releasing_fails, caplog
):
    device = alice_home["device"]
    pi = device_communicator(alice_home["token"])
    connected, _ = await pi.connect()
    assert connected
    await settle(pi)
    channel = await socket_registry.connected_channel(device.id)

    await pi.disconnect()

    # The entry stays (the Redis call failed), so the offline step, which still runs, sees the
    # device held and leaves it online: the silent-devices job marks it offline later.
    assert await socket_registry.connected_channel(device.id) == channel
    assert await device_online(device) is True
    # the failure is reported, in one line
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "device pi-a1: leaving its socket failed in part: "
            "releasing its registry entry: ConnectionError: Redis connection lost",
        )
    ]


def one_line_failure(caplog) -> str:
    """The message of the one record logged, checked to be a single line without a traceback."""
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
    record = caplog.records[0]
    assert record.exc_info is None and "\n" not in record.getMessage()
    return record.getMessage()


async def test_a_connect_that_fails_after_accepting_closes_with_1011_and_gives_its_place_back(
    alice_home, monkeypatch, caplog
):
    device = alice_home["device"]

    def open_commands_fail(**kwargs):
        raise ConnectionError("database went away")

    monkeypatch.setattr(consumers.selectors, "open_commands_of", open_commands_fail)
    pi = device_communicator(alice_home["token"])
    connected, _ = await pi.connect()
    close_code = await receive_close(pi)
    await pi.wait()

    assert connected
    assert close_code == CLOSE_INTERNAL_ERROR
    assert await socket_registry.connected_channel(device.id) is None
    assert await device_online(device) is False
    assert "pi-a1: handling its socket failed (ConnectionError: database went away at " in (
        one_line_failure(caplog)
    )


async def test_a_defect_handling_a_frame_closes_with_1011_logs_one_line_and_gives_its_place_back(
    alice_home, monkeypatch, caplog
):
    device = alice_home["device"]
    command = await issue_command(device=device, name="ping")

    def commands_complete_fails(**kwargs):
        raise KeyError("a defect")

    async with device_socket(alice_home["token"]) as pi:
        await pi.receive_json_from()  # the command
        monkeypatch.setattr(consumers.services, "commands_complete", commands_complete_fails)
        await pi.send_json_to({"type": "command_result", "id": str(command.id), "status": "done"})
        close_code = await receive_close(pi)
        await pi.wait()

    assert close_code == CLOSE_INTERNAL_ERROR
    assert await socket_registry.connected_channel(device.id) is None
    assert await device_online(device) is False
    assert "handling its socket failed (KeyError: 'a defect' at " in one_line_failure(caplog)


async def test_a_channel_message_it_cannot_handle_closes_with_1011_and_gives_its_place_back(
    alice_home, caplog
):
    # A message of a type the consumer has no handler for, sent to the device's socket through the
    # real channel layer: a defect on the layer's side of the consumer, not the socket's.
    device = alice_home["device"]

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        await to_socket(device.id, {"type": "device.bogus"})
        close_code = await receive_close(pi, timeout=5)
        await pi.wait()

    assert close_code == CLOSE_INTERNAL_ERROR
    assert await socket_registry.connected_channel(device.id) is None
    assert await device_online(device) is False
    assert "(ValueError: No handler for message type device.bogus at " in one_line_failure(caplog)


async def test_a_consumer_cancelled_by_the_server_still_gives_its_place_back(alice_home):
    # The server cancels what is left of its consumers when it shuts down past its grace time.
    device = alice_home["device"]
    pi = device_communicator(alice_home["token"])
    connected, _ = await pi.connect()
    await settle(pi)
    watched = len(silence_watch())

    pi.future.cancel()
    await pi.wait(timeout=5)

    assert connected
    assert await socket_registry.connected_channel(device.id) is None
    assert await device_online(device) is False
    assert (watched, len(silence_watch())) == (1, 0)


async def test_second_connection_of_a_device_closes_the_first_and_it_stays_online(alice_home):
    device = alice_home["device"]

    async with device_socket(alice_home["token"]) as first:
        await settle(first)
        async with device_socket(alice_home["token"]) as second:
            close_code = await receive_close(first)
            await first.disconnect()  # what the server does once the close handshake is done
            await settle(second)
            online_after_first_left = await device_online(device)
            await assert_acked(second, telemetry("m2", recent()[0], power_w=2), accepted=1)
        online_after_second_left = await device_online(device)

    assert close_code == CLOSE_REPLACED
    assert online_after_first_left is True
    assert online_after_second_left is False


async def test_silent_socket_is_closed_after_the_heartbeat_timeout_and_goes_offline(
    alice_home, settings
):
    settings.DEVICE_HEARTBEAT_TIMEOUT = 1
    device = alice_home["device"]

    async with device_socket(alice_home["token"]) as pi:
        close_code = await receive_close(pi, timeout=5)
        await pi.disconnect()  # the server's side of the close handshake
        online = await device_online(device)

    assert close_code == CLOSE_SILENT
    assert online is False


async def test_heartbeats_keep_a_socket_open_past_the_timeout(alice_home, settings):
    settings.DEVICE_HEARTBEAT_TIMEOUT = 1

    async with device_socket(alice_home["token"]) as pi:
        for _ in range(6):
            await pi.send_json_to({"type": "heartbeat"})
            assert await pi.receive_nothing(timeout=0.3)
        await assert_acked(pi, telemetry("hb", recent()[0], power_w=1), accepted=1)


@asynccontextmanager
async def table_locked(table: str):
    """Another session holds a lock on `table` that blocks inserts until the block ends: a
    database slow to take writes."""
    params = connections["default"].settings_dict
    holder = await asyncio.to_thread(
        psycopg.connect,
        dbname=params["NAME"],
        host=params["HOST"],
        port=params["PORT"] or None,
        user=params["USER"],
        password=params["PASSWORD"] or None,
    )
    try:
        await asyncio.to_thread(holder.execute, f"LOCK TABLE {table} IN SHARE MODE")
        yield
    finally:
        await asyncio.to_thread(holder.rollback)
        await asyncio.to_thread(holder.close)


async def test_frames_queued_behind_a_slow_frame_keep_the_socket_open(alice_home, settings):
    settings.DEVICE_HEARTBEAT_TIMEOUT = 1
    lost = {"type": "power", "msg_id": "p1", "state": "lost", "ts": recent()[0]}

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        async with table_locked("outages_powerevent"):
            # given a frame whose write waits on the database for longer than the timeout
            await pi.send_json_to(lost)
            # when the device goes on talking meanwhile (its frames wait behind that one)
            for _ in range(8):
                await pi.send_json_to({"type": "heartbeat"})
                await asyncio.sleep(0.3)
        # then the slow frame is acked once the database takes it, and the socket is open
        ack = await pi.receive_json_from(timeout=5)
        await assert_acked(pi, telemetry("t1", recent()[0], power_w=1), accepted=1)

    assert (ack["type"], ack["msg_id"]) == ("ack", "p1")


async def wait_for_last_seen(device_id: int, timeout: float = 5) -> float | None:
    """When Redis says the device was last seen, once a note arrives there (None if none did)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if (noted := sync_client().hget(socket_registry.LAST_SEEN_KEY, device_id)) is not None:
            return float(noted)
        await asyncio.sleep(0.02)
    return None


async def test_a_talking_devices_last_seen_reaches_redis(alice_home, monkeypatch):
    monkeypatch.setattr(socket_registry, "WRITE_EVERY_S", 0.05)
    device_id = alice_home["device"].id
    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        assert await wait_for_last_seen(device_id) is not None  # the connect is a sign of life
        sync_client().hdel(socket_registry.LAST_SEEN_KEY, device_id)
        before = datetime.now(UTC).timestamp()
        await assert_acked(pi, telemetry("m1", recent()[0], power_w=1), accepted=1)
        seen = await wait_for_last_seen(device_id)

    assert seen is not None and seen >= before - 0.01


async def test_a_sign_of_life_that_cannot_be_written_does_not_end_the_socket(
    alice_home, monkeypatch
):
    # given a Redis that refuses every last-seen write (its connections all busy under overload)
    monkeypatch.setattr(socket_registry, "WRITE_EVERY_S", 0.02)
    refused = []
    hset = redis.asyncio.Redis.hset

    async def refusing_hset(self, *args, **kwargs):
        if refusing:
            refused.append(args)
            raise redis.exceptions.ConnectionError("No connection available.")
        return await hset(self, *args, **kwargs)

    refusing = True

    monkeypatch.setattr(redis.asyncio.Redis, "hset", refusing_hset)
    device_id = alice_home["device"].id

    async with device_socket(alice_home["token"]) as pi:
        # when frames come while the writes fail
        first = await assert_acked(pi, telemetry("m1", recent(50)[0], power_w=1), accepted=1)
        await asyncio.sleep(0.1)
        second = await assert_acked(pi, telemetry("m2", recent(40)[0], power_w=2), accepted=1)
        # then each is handled and acked, the socket open throughout
        assert [first["msg_id"], second["msg_id"]] == ["m1", "m2"]
        # and once Redis takes writes again (after refusing m2's note too), the kept sign of
        # life reaches it
        tried = len(refused)

        async def refused_again():
            while len(refused) == tried:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(refused_again(), timeout=10)
        refusing = False
        assert await wait_for_last_seen(device_id) is not None


# --- power -------------------------------------------------------------------------------------


async def test_power_reports_are_acked_and_stored_once_even_when_repeated(alice_home, alice):
    lost_at, _ = recent(30)
    restored_at, _ = recent(10)
    lost = {"type": "power", "msg_id": "p1", "state": "lost", "ts": lost_at}
    restored = {"type": "power", "msg_id": "p2", "state": "restored", "ts": restored_at}

    async with live_socket(alice) as browser, device_socket(alice_home["token"]) as pi:
        await assert_acked(pi, lost, accepted=1)
        await assert_acked(pi, lost, accepted=1)  # the Pi resends until it sees an ack
        await assert_acked(pi, restored, accepted=1)
        seen = [await browser.receive_json_from() for _ in range(3)]

    events = await database_sync_to_async(list)(
        PowerEvent.objects.filter(device=alice_home["device"])
        .order_by("at")
        .values_list("state", "at", "site_id")
    )
    site_id = alice_home["site"].id
    assert events == [
        ("lost", datetime.fromisoformat(lost_at), site_id),
        ("restored", datetime.fromisoformat(restored_at), site_id),
    ]
    assert [(m["type"], m.get("state")) for m in seen] == [
        ("status", None),
        ("power", "lost"),
        ("power", "restored"),
    ]


async def test_a_lost_report_reaches_the_residents_socket_before_it_is_stored(alice_home, alice):
    lost = {"type": "power", "msg_id": "p1", "state": "lost", "ts": recent(5)[0]}

    async with live_socket(alice) as browser, device_socket(alice_home["token"]) as pi:
        await settle(pi)
        assert (await browser.receive_json_from())["type"] == "status"  # the device came online
        async with table_locked("outages_powerevent"):
            # given a database that cannot store the report yet
            await pi.send_json_to(lost)
            # then the resident hears the cut from the device's instant meanwhile, unacked yet
            heard = await browser.receive_json_from(timeout=2)
            await pi.receive_nothing(timeout=0.2)
        ack = await pi.receive_json_from(timeout=5)  # stored once the database takes it

    assert {k: heard[k] for k in ("type", "state", "ts", "site")} == {
        "type": "power",
        "state": "lost",
        "ts": datetime.fromisoformat(lost["ts"]).isoformat(),
        "site": alice_home["site"].id,
    }
    assert (ack["type"], ack["msg_id"]) == ("ack", "p1")
    assert await database_sync_to_async(PowerEvent.objects.filter(state="lost").count)() == 1


# --- live feed ---------------------------------------------------------------------------------


async def test_residents_live_socket_hears_its_device_go_online_and_offline(alice_home, alice):
    async with live_socket(alice) as browser:
        async with device_socket(alice_home["token"]):
            online = await browser.receive_json_from()
        offline = await browser.receive_json_from()

    assert {k: online[k] for k in ("type", "device", "site", "online")} == {
        "type": "status",
        "device": "pi-a1",
        "site": alice_home["site"].id,
        "online": True,
    }
    assert (offline["type"], offline["device"], offline["online"]) == ("status", "pi-a1", False)


async def test_readings_reach_the_owners_live_socket_but_not_another_residents(
    alice_home, bob_home, alice, bob
):
    ts, _ = recent()

    async with (
        live_socket(alice) as alices_browser,
        live_socket(bob) as bobs_browser,
        device_socket(alice_home["token"]) as pi,
    ):
        await assert_acked(pi, telemetry("m1", ts, power_w=512.3, voltage_v=231), accepted=2)
        status = await alices_browser.receive_json_from()
        readings = await alices_browser.receive_json_from()
        await bobs_browser.receive_nothing(timeout=0.5)

    assert status["type"] == "status"
    assert readings == {
        "type": "readings",
        "device": "pi-a1",
        "site": alice_home["site"].id,
        "points": [{"ts": ts, "values": {"power_w": 512.3, "voltage_v": 231.0}}],
    }


async def test_operators_live_socket_gets_the_whole_fleet(alice_home, bob_home, operator):
    ts, _ = recent()

    async with live_socket(operator) as browser:
        async with device_socket(alice_home["token"]) as alices_pi:
            await assert_acked(alices_pi, telemetry("a1", ts, power_w=1), accepted=1)
        async with device_socket(bob_home["token"]) as bobs_pi:
            await assert_acked(bobs_pi, telemetry("b1", ts, power_w=2), accepted=1)
        seen = [await browser.receive_json_from() for _ in range(6)]

    assert [(m["type"], m["device"], m.get("online")) for m in seen] == [
        ("status", "pi-a1", True),
        ("readings", "pi-a1", None),
        ("status", "pi-a1", False),
        ("status", "pi-b1", True),
        ("readings", "pi-b1", None),
        ("status", "pi-b1", False),
    ]


async def test_resident_asking_for_another_residents_site_hears_nothing_of_it(
    alice_home, bob_home, alice
):
    async with (
        live_socket(alice, query=f"?site={bob_home['site'].id}") as alices_browser,
        device_socket(bob_home["token"]) as bobs_pi,
    ):
        await assert_acked(bobs_pi, telemetry("b1", recent()[0], power_w=1), accepted=1)
        heard_nothing = await alices_browser.receive_nothing(timeout=0.5)

    assert heard_nothing


async def test_operator_asking_for_one_site_hears_only_that_site(alice_home, bob_home, operator):
    async with (
        live_socket(operator, query=f"?site={alice_home['site'].id}") as browser,
        device_socket(bob_home["token"]) as bobs_pi,
        device_socket(alice_home["token"]) as alices_pi,
    ):
        await assert_acked(bobs_pi, telemetry("b1", recent()[0], power_w=1), accepted=1)
        await assert_acked(alices_pi, telemetry("a1", recent()[0], power_w=2), accepted=1)
        seen = [await browser.receive_json_from() for _ in range(2)]
        heard_nothing_more = await browser.receive_nothing(timeout=0.5)

    assert [(m["type"], m["device"]) for m in seen] == [("status", "pi-a1"), ("readings", "pi-a1")]
    assert heard_nothing_more


async def test_anonymous_live_socket_is_refused():
    communicator = live_communicator(None)

    connected, _ = await communicator.connect()
    await communicator.disconnect()

    assert connected is False


async def test_live_socket_with_a_session_that_does_not_exist_is_refused():
    communicator = live_communicator("no-such-session-key-0123456789")

    connected, _ = await communicator.connect()
    await communicator.disconnect()

    assert connected is False


async def test_live_socket_of_a_logged_out_session_is_refused(alice):
    # given a session cookie whose session has since ended (logged out elsewhere)
    cookie = await database_sync_to_async(session_cookie)(alice)
    await database_sync_to_async(SessionStore(cookie).delete)()
    communicator = live_communicator(cookie)

    connected, _ = await communicator.connect()
    await communicator.disconnect()

    assert connected is False


async def test_live_socket_from_a_foreign_origin_is_refused(alice):
    cookie = await database_sync_to_async(session_cookie)(alice)
    communicator = live_communicator(cookie, origin=b"https://evil.example")

    connected, _ = await communicator.connect()
    await communicator.disconnect()

    assert connected is False


# --- commands ----------------------------------------------------------------------------------


async def test_command_issued_while_connected_is_delivered_and_its_result_recorded(alice_home):
    device = alice_home["device"]

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        command = await issue_command(device=device, name="relay", args={"state": "off"})
        frame = await pi.receive_json_from()
        sent = await command_marked_sent(command)
        await pi.send_json_to(
            {"type": "command_result", "id": frame["id"], "status": "done", "detail": "relay off"}
        )
        await settle(pi)

    assert {k: frame[k] for k in ("type", "id", "name", "args")} == {
        "type": "command",
        "id": str(command.id),
        "name": "relay",
        "args": {"state": "off"},
    }
    assert datetime.fromisoformat(frame["expires_at"]) == command.expires_at
    assert sent.status == CommandStatus.SENT
    done = await command_fresh(command)
    assert (done.status, done.detail) == (CommandStatus.DONE, "relay off")
    assert done.completed_at is not None


async def test_a_command_message_carries_its_frame_and_the_sent_mark_follows_in_a_batch(
    alice_home, monkeypatch
):
    """The frame goes out without the socket reading the command: written before any sent
    mark, which comes with the process's next batch."""
    device = alice_home["device"]
    claims = []
    monkeypatch.setattr(
        services, "command_mark_sent", lambda **kwargs: claims.append(kwargs) or None
    )

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        first = await issue_command(device=device, name="relay", args={"state": "off"})
        second = await issue_command(device=device, name="ping")
        frames = [await pi.receive_json_from(), await pi.receive_json_from()]
        # The same message again (e.g. from a retry): sent at most once per socket.
        await to_socket(device.id, services.command_message(first))
        await settle(pi)
        assert await pi.receive_nothing(timeout=0.2)
        marked = [await command_marked_sent(first), await command_marked_sent(second)]

    assert claims == []  # no per-command claim on the way to the socket
    assert [f["id"] for f in frames] == [str(first.id), str(second.id)]
    assert [f["name"] for f in frames] == ["relay", "ping"]
    assert [c.status for c in marked] == [CommandStatus.SENT, CommandStatus.SENT]
    assert all(c.sent_at is not None for c in marked)


async def test_a_command_sent_but_never_marked_stays_pending_and_is_sent_again_on_reconnect(
    alice_home, monkeypatch
):
    """The process stops between writing the frame and its batch of sent marks (here: the mark
    is lost): the command is still pending, so the device's next socket gets it again."""
    device = alice_home["device"]
    monkeypatch.setattr(sent_marks_module.SentMarks, "note", lambda self, command_id: None)

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        command = await issue_command(device=device, name="ping")
        first = await pi.receive_json_from()
    still = await command_marked_sent(command, timeout=0.3)

    monkeypatch.undo()
    async with device_socket(alice_home["token"]) as pi:
        again = await pi.receive_json_from()
        await settle(pi)
        # claimed by the reconnect's delivery, or marked by the batch if the process's inbox,
        # subscribing anew, handed it out first (devices.command_inbox)
        claimed = await command_marked_sent(command)

    assert first["id"] == again["id"] == str(command.id)
    assert (still.status, still.sent_at) == (CommandStatus.PENDING, None)
    assert claimed.status == CommandStatus.SENT


async def test_an_expired_command_message_is_not_sent_and_is_recorded_expired(alice_home):
    device = alice_home["device"]

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        command = await issue_command(device=device, name="ping")
        await pi.receive_json_from()
        await command_marked_sent(command)
        stale = await issue_command(device=device, name="ping", ttl=timedelta(seconds=-1))
        await settle(pi)
        await to_socket(device.id, services.command_message(stale))
        await settle(pi)
        nothing = await pi.receive_nothing(timeout=0.2)
    expired = await command_fresh(stale)

    assert nothing
    assert expired.status == CommandStatus.EXPIRED


async def test_command_issued_while_offline_is_delivered_on_connect(alice_home):
    command = await issue_command(device=alice_home["device"], name="ping")

    async with device_socket(alice_home["token"]) as pi:
        frame = await pi.receive_json_from()
        # claimed by the connect, or marked by the batch if the inbox handed it out first
        sent = await command_marked_sent(command)

    assert (frame["type"], frame["id"], frame["name"], frame["args"]) == (
        "command",
        str(command.id),
        "ping",
        {},
    )
    assert sent.status == CommandStatus.SENT


async def test_expired_command_is_not_delivered_and_is_marked_expired(alice_home):
    command = await issue_command(device=alice_home["device"], name="ping")
    await database_sync_to_async(Command.objects.filter(pk=command.pk).update)(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)  # the first answer is the settle's: no command frame came before it

    expired = await command_fresh(command)
    assert expired.status == CommandStatus.EXPIRED
    assert expired.sent_at is None


@pytest.mark.parametrize("whose", ["unknown", "other-device"])
async def test_command_result_for_a_command_not_of_this_device_gets_an_error(
    alice_home, bob_home, whose
):
    bobs_command = await issue_command(device=bob_home["device"], name="ping")
    command_id = str(uuid.uuid4()) if whose == "unknown" else str(bobs_command.id)

    async with device_socket(alice_home["token"]) as pi:
        await pi.send_json_to({"type": "command_result", "id": command_id, "status": "done"})
        error = await pi.receive_json_from()

    assert (error["type"], error["code"]) == ("error", "invalid_payload")
    assert "no such command" in error["detail"]
    assert (await command_fresh(bobs_command)).status == CommandStatus.PENDING


async def test_command_already_delivered_on_this_socket_is_not_sent_again(alice_home):
    device = alice_home["device"]
    first = await issue_command(device=device, name="ping")

    async with device_socket(alice_home["token"]) as pi:
        delivered = await pi.receive_json_from()
        # The announcement of a command can arrive after the connect already delivered it.
        await to_socket(device.id, {"type": "device.command", "id": str(first.id)})
        # The socket handles its channel's messages in order: what comes next is either a repeat
        # of the first command or, correctly, the second one.
        second = await issue_command(device=device, name="restore")
        following = await pi.receive_json_from()

    assert delivered["id"] == str(first.id)
    assert following["id"] == str(second.id)


@database_sync_to_async
def issue_commands(devices: list[Device], name: str) -> list[Command]:
    """Commands for several devices at once, as a demand-response event issues them: published
    to the server processes' inboxes once committed. In the order of `devices`."""
    with transaction.atomic():
        ids = services.commands_issue(device_ids=[d.pk for d in devices], name=name)
    return [Command.objects.get(pk=ids[d.pk]) for d in devices]


@database_sync_to_async
def spare_device(home: dict) -> tuple[Device, str]:
    return services.device_create(uid="pi-spare", site=home["site"], controllable=True)


async def test_a_batch_of_commands_reaches_each_connected_device_once_and_a_later_socket_too(
    alice_home, bob_home
):
    """One published batch for every device: those connected here get theirs (a batch heard
    twice sends nothing twice); one connected nowhere gets its command on its next socket."""
    spare, spare_token = await spare_device(alice_home)
    devices = [alice_home["device"], bob_home["device"], spare]

    async with (
        device_socket(alice_home["token"]) as alices,
        device_socket(bob_home["token"]) as bobs,
    ):
        await settle(alices)
        await settle(bobs)
        commands = await issue_commands(devices, "ping")
        got = [await alices.receive_json_from(), await bobs.receive_json_from()]
        # the same batch again (a sender retrying): nothing new for either socket
        await database_sync_to_async(services.commands_publish)(
            [services.command_entry(c) for c in commands]
        )
        await asyncio.sleep(0.2)
        await settle(alices)  # the next frame is the settle's answer, not a repeat
        await settle(bobs)
        marked = [await command_marked_sent(c) for c in commands[:2]]
    unsent = await command_fresh(commands[2])
    async with device_socket(spare_token) as spares:
        later = await spares.receive_json_from()
        spare_marked = await command_marked_sent(commands[2])

    assert [f["id"] for f in got] == [str(c.id) for c in commands[:2]]
    assert [c.status for c in marked] == [CommandStatus.SENT, CommandStatus.SENT]
    assert (unsent.status, unsent.sent_at) == (CommandStatus.PENDING, None)
    assert later["id"] == str(commands[2].id)
    assert spare_marked.status == CommandStatus.SENT


async def test_a_command_published_while_the_inbox_was_not_listening_comes_once_it_listens_again(
    alice_home, monkeypatch
):
    """PUB/SUB keeps nothing for a process whose connection to Redis is down: the commands it
    missed are read from the database once its subscription is confirmed again."""
    published = []
    monkeypatch.setattr(services, "commands_publish", published.append)  # heard by nobody

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        command = await issue_command(device=alice_home["device"], name="ping")
        missed = await pi.receive_nothing(timeout=0.3)
        hub = live_hub()
        connections_before = hub.connections
        hub._writer.transport.abort()  # the connection to Redis is lost; the hub makes it again
        frame = await pi.receive_json_from(timeout=5)
        sent = await command_marked_sent(command)

    assert len(published) == 1  # it was published, and lost
    assert missed
    assert hub.connections == connections_before + 1
    assert frame["id"] == str(command.id)
    assert sent.status == CommandStatus.SENT


async def test_a_command_reaches_the_socket_that_replaced_another_in_the_same_process(
    alice_home,
):
    """The replaced socket leaving does not take its successor out of the inbox."""
    async with device_socket(alice_home["token"]) as first:
        await settle(first)
        async with device_socket(alice_home["token"]) as second:
            assert await receive_close(first) == CLOSE_REPLACED
            await first.disconnect()
            await settle(second)
            command = await issue_command(device=alice_home["device"], name="ping")
            frame = await second.receive_json_from()

    assert frame["id"] == str(command.id)


async def test_results_of_two_devices_in_one_moment_are_recorded_by_one_statement(
    alice_home, bob_home, monkeypatch
):
    # one moment, even on a slow machine
    monkeypatch.setattr(command_results_module.CommandResults, "write_every_s", 0.5)
    calls = []
    complete = services.commands_complete
    monkeypatch.setattr(
        services, "commands_complete", lambda **kwargs: calls.append(kwargs) or complete(**kwargs)
    )
    commands = await issue_commands([alice_home["device"], bob_home["device"]], "ping")

    async with (
        device_socket(alice_home["token"]) as alices,
        device_socket(bob_home["token"]) as bobs,
    ):
        for pi, command in zip((alices, bobs), commands, strict=True):
            assert (await pi.receive_json_from())["id"] == str(command.id)
            await pi.send_json_to({"type": "command_result", "id": str(command.id),
                                   "status": "done", "detail": "ok"})  # fmt: skip
        await settle(alices)  # its result was recorded before the settle was answered
        await settle(bobs)
    stored = [await command_fresh(c) for c in commands]

    assert [len(call["results"]) for call in calls] == [2]
    assert [(c.status, c.detail) for c in stored] == [("done", "ok"), ("done", "ok")]


async def test_the_owners_live_socket_follows_a_batch_command_pending_sent_and_done(
    alice_home, bob_home, alice
):
    """The batched paths (issue, sent marks, results) tell the viewers as `command_issue` and
    `command_complete` one by one do; Alice hears of her device's command, not of Bob's."""
    async with live_socket(alice) as browser, device_socket(alice_home["token"]) as pi:
        await settle(pi)
        command, _ = await issue_commands([alice_home["device"], bob_home["device"]], "ping")
        await pi.receive_json_from()
        await command_marked_sent(command)
        await pi.send_json_to({"type": "command_result", "id": str(command.id),
                               "status": "done", "detail": "pong"})  # fmt: skip
        await settle(pi)
        heard = []
        while len(heard) < 3:
            message = await browser.receive_json_from(timeout=3)
            if message["type"] == "command":
                heard.append(message)

    assert [(m["id"], m["device"], m["status"], m["detail"]) for m in heard] == [
        (str(command.id), "pi-a1", "pending", ""),
        (str(command.id), "pi-a1", "sent", ""),
        (str(command.id), "pi-a1", "done", "pong"),
    ]


async def test_command_result_with_an_unknown_status_gets_an_error(alice_home):
    command = await issue_command(device=alice_home["device"], name="ping")

    async with device_socket(alice_home["token"]) as pi:
        await pi.receive_json_from()
        await pi.send_json_to({"type": "command_result", "id": str(command.id), "status": "ok"})
        error = await pi.receive_json_from()

    assert (error["code"], error["detail"]) == (
        "invalid_payload",
        "status must be done, failed or rejected",
    )


@pytest.mark.parametrize(
    ("detail", "stored"),
    [
        ("relay\u0000off", "relay\ufffdoff"),
        ("relay \ud800off\udfff", "relay \ufffdoff\ufffd"),
        ("relay off \U0001f50c", "relay off \U0001f50c"),  # a whole character stays as it is
    ],
    ids=["nul", "lone-surrogates", "astral-character"],
)
async def test_command_result_detail_postgresql_cannot_store_is_recorded_cleaned(
    alice_home, detail, stored
):
    # JSON escapes (\u0000, \ud800) reach the consumer as these characters; psycopg refused
    # them (DataError, UnicodeEncodeError) and the socket died.
    command = await issue_command(device=alice_home["device"], name="ping")

    async with device_socket(alice_home["token"]) as pi:
        await pi.receive_json_from()
        await pi.send_json_to(
            {"type": "command_result", "id": str(command.id), "status": "done", "detail": detail}
        )
        await settle(pi)
        await assert_acked(pi, telemetry("m1", recent()[0], power_w=1), accepted=1)

    done = await command_fresh(command)
    assert (done.status, done.detail) == (CommandStatus.DONE, stored)


# --- channel layer -----------------------------------------------------------------------------


def pubsub_layer(redis_url: str):
    config = channel_layer_config(redis_url, "pubsub")
    return import_string(config["BACKEND"])(**config["CONFIG"])


async def test_portals_on_two_databases_of_one_redis_do_not_hear_each_others_groups(settings):
    # given two portals on one Redis server, on two neighbouring databases
    url = urlsplit(settings.REDIS_URL)
    ours_db = int(url.path.strip("/") or 0)
    other_db = ours_db + 1 if ours_db < 15 else ours_db - 1  # Redis has databases 0-15
    ours = pubsub_layer(settings.REDIS_URL)
    theirs = pubsub_layer(url._replace(path=f"/{other_db}").geturl())
    group = f"crosstalk.{uuid.uuid4().hex}"  # the same name on both, and nobody else's
    channel = await theirs.new_channel()
    await theirs.group_add(group, channel)
    try:
        # when each sends to the group of that name, ours first
        await ours.group_send(group, {"type": "live.message", "text": "ours"})
        await theirs.group_send(group, {"type": "live.message", "text": "theirs"})
        first = await asyncio.wait_for(theirs.receive(channel), timeout=5)
    finally:
        await theirs.group_discard(group, channel)
        await ours.flush()
        await theirs.flush()

    # then their member hears only their own message
    assert first["text"] == "theirs"


# --- abrupt ends: what suspected outages are made of -------------------------------------------


@database_sync_to_async
def socket_state(device: Device) -> tuple:
    return Device.objects.values_list("online", "online_since", "dropped_at").get(pk=device.pk)


@pytest.fixture
def feeder_syncs(monkeypatch):
    """The feeders a socket's end marked for a sync of their suspected outages (by the next
    drain of them); other marks go on as usual."""
    from outages import services as outage_services

    marked = []
    mark = outage_services._drain_soon

    def record(key, ids, **how):
        if key == outage_services.SUSPECTED_DIRTY_KEY:
            marked.extend(ids)
        else:
            mark(key, ids, **how)

    monkeypatch.setattr(outage_services, "_drain_soon", record)
    return marked


@pytest.mark.parametrize(
    ("code", "abrupt"),
    [
        (1005, True),  # Uvicorn: the connection was lost, no close frame
        (1006, True),
        (1000, False),  # the Pi closed it
        (1001, False),  # the Pi going away (shutting down cleanly)
        (1012, False),  # the server shutting down (Uvicorn's code)
    ],
)
async def test_a_socket_lost_without_a_close_frame_is_a_drop_and_a_clean_close_is_not(
    alice_home, feeder_syncs, code, abrupt
):
    device = alice_home["device"]
    pi = device_communicator(alice_home["token"])
    assert (await pi.connect())[0]
    await settle(pi)
    _, online_since, _ = await socket_state(device)
    before = timezone.now()

    await pi.disconnect(code=code)

    online, since_after, dropped_at = await socket_state(device)
    assert online_since is not None and online_since <= before
    assert (online, since_after) == (False, None)
    if abrupt:
        assert before <= dropped_at <= timezone.now()
        assert feeder_syncs == [alice_home["site"].feeder_id]
    else:
        assert dropped_at is None
        assert feeder_syncs == []


async def test_a_socket_closed_for_silence_is_a_drop_at_its_last_sign_of_life(
    alice_home, feeder_syncs, settings
):
    settings.DEVICE_HEARTBEAT_TIMEOUT = 1
    device = alice_home["device"]

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        last_frame = timezone.now()
        assert await receive_close(pi, timeout=5) == CLOSE_SILENT
        closed = timezone.now()
        await pi.disconnect()  # the Pi's echo would be 1000: our reason for closing counts

    online, _, dropped_at = await socket_state(device)
    assert online is False
    assert last_frame - timedelta(seconds=0.5) <= dropped_at <= closed - timedelta(seconds=0.9)
    assert feeder_syncs == [alice_home["site"].feeder_id]


async def test_a_socket_we_close_for_flooding_is_no_drop(alice_home, feeder_syncs, settings):
    settings.DEVICE_RATE_PER_S = 0.001
    settings.DEVICE_RATE_BURST = 1
    device = alice_home["device"]

    async with device_socket(alice_home["token"]) as pi:
        code = None
        for _ in range(5):
            await pi.send_json_to({"type": "flood"})
            output = await pi.receive_output(timeout=2)
            if output["type"] == "websocket.close":
                code = output.get("code")
                break

    assert code == CLOSE_FLOOD
    assert (await socket_state(device))[2] is None
    assert feeder_syncs == []


async def test_device_and_viewer_sockets_are_counted_for_the_collectors_settle(
    alice, alice_home, gc_settler, monkeypatch
):
    monkeypatch.setattr(gc_settle, "BURST_MIN", 1000)  # counted here, not settled
    # Counted step by step: a socket of an earlier test may still be ending as this one starts.
    opened, closed = gc_settler.opened, gc_settler.closed
    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        assert gc_settler.opened == opened + 1
        async with live_socket(alice):
            assert gc_settler.opened == opened + 2
            closed = gc_settler.closed
        assert gc_settler.closed == closed + 1
    assert gc_settler.closed == closed + 2
