"""Whole flows through real ASGI servers: a Pi and a browser on real sockets, and two servers
sharing PostgreSQL and Redis the way production instances do."""

import asyncio
import http.client
import json

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from django.conf import settings
from django.db import connection, transaction

from devices import services
from devices.consumers import CLOSE_REPLACED
from devices.models import Command
from tests.devices.test_consumers import (  # noqa: F401 (fixtures used by name)
    clean_redis,
    fast_passwords,
    recent,
    session_cookie,
    stream_rows,
    telemetry,
)
from tests.e2e import servers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(scope="module")
def portals(django_db_setup):
    """Two servers for the module's tests (starting them is the slow part), on the test database
    and the test Redis."""
    with servers.running(
        2, database_url=servers.database_url(connection.settings_dict), redis_url=settings.REDIS_URL
    ) as running:
        yield running


@pytest.fixture
def operator_token(operator, api_token_for) -> str:
    return api_token_for(operator)


@pytest.fixture
def alice_cookie(alice) -> str:
    return session_cookie(alice)


@pytest.fixture
def alice_sensor_ids(alice_home) -> dict[str, int]:
    return dict(alice_home["device"].sensors.values_list("key", "id"))


def pi(server: servers.Server, token: str):
    return connect(
        f"{server.ws}/ws/devices/", additional_headers={"Authorization": f"Bearer {token}"}
    )


def dashboard(server: servers.Server, cookie: str):
    headers = {"Cookie": f"sessionid={cookie}", "Origin": server.origin}
    return connect(f"{server.ws}/ws/live/", additional_headers=headers)


async def receive_json(ws: ClientConnection, timeout: float = 5) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def live_messages(ws: ClientConnection, count: int, timeout: float = 5) -> list[dict]:
    """The next `count` messages of a browser's live socket; a frame may hold several (a JSON
    array, as the server sends those that waited together)."""
    messages: list[dict] = []
    while len(messages) < count:
        frame = await receive_json(ws, timeout)
        messages.extend(frame if isinstance(frame, list) else [frame])
    return messages


async def send_json(ws: ClientConnection, frame: dict) -> None:
    await ws.send(json.dumps(frame))


async def settle(ws: ClientConnection) -> None:
    """Frames are handled in order: once this one is answered, all before it are done."""
    await send_json(ws, {"type": "settle"})
    assert (await receive_json(ws))["code"] == "unknown_type"


def _api(server: servers.Server, method: str, path: str, token: str, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(
            method,
            f"/api/v1/{path}",
            body=json.dumps(body) if body is not None else None,
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


async def api(server: servers.Server, method: str, path: str, token: str, body=None):
    """(status, JSON body) of a REST call, made off the event loop."""
    return await asyncio.to_thread(_api, server, method, path, token, body)


# --- one server --------------------------------------------------------------------------------


async def test_telemetry_over_a_real_socket_is_acked_and_lands_in_the_stream(
    portals, alice_home, alice_sensor_ids
):
    ts, epoch_us = recent()

    async with pi(portals[0], alice_home["token"]) as socket:
        await send_json(socket, telemetry("m1", ts, power_w=512.3, voltage_v=230, bogus=1))
        ack = await receive_json(socket)

    assert ack == {
        "type": "ack",
        "msg_id": "m1",
        "accepted": 2,
        "rejected": [{"key": "bogus", "error": "unknown sensor"}],
    }
    assert stream_rows() == [
        (
            "socket",
            [
                [alice_sensor_ids["power_w"], epoch_us, 512.3],
                [alice_sensor_ids["voltage_v"], epoch_us, 230.0],
            ],
        )
    ]


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer wrong-token"}, {}])
async def test_device_handshake_without_a_valid_token_gets_http_403(portals, alice_home, headers):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{portals[0].ws}/ws/devices/", additional_headers=headers):
            pass

    assert refused.value.response.status_code == 403


# --- two servers sharing Redis -----------------------------------------------------------------


async def test_command_issued_through_one_server_reaches_the_device_on_another(
    portals, alice_home, operator_token
):
    server_a, server_b = portals

    async with pi(server_a, alice_home["token"]) as socket:
        await settle(socket)
        issued_status, issued = await api(
            server_b,
            "POST",
            "devices/pi-a1/commands/",
            operator_token,
            {"name": "relay", "args": {"state": "off"}},
        )
        command = await receive_json(socket)
        await send_json(
            socket,
            {"type": "command_result", "id": command["id"], "status": "done", "detail": "off"},
        )
        await settle(socket)
    shown_status, shown = await api(server_b, "GET", f"commands/{issued['id']}/", operator_token)

    assert issued_status == 202, issued
    assert (command["type"], command["id"], command["name"], command["args"]) == (
        "command",
        issued["id"],
        "relay",
        {"state": "off"},
    )
    assert shown_status == 200
    assert (shown["status"], shown["detail"]) == ("done", "off")


async def test_dashboard_on_one_server_gets_readings_from_a_device_on_another(
    portals, alice_home, alice_cookie
):
    server_a, server_b = portals
    ts, _ = recent()

    async with dashboard(server_b, alice_cookie) as browser:
        async with pi(server_a, alice_home["token"]) as socket:
            await send_json(socket, telemetry("m1", ts, power_w=512.3))
            ack = await receive_json(socket)
        seen = await live_messages(browser, 3)

    assert ack["accepted"] == 1
    assert [(m["type"], m["device"], m.get("online")) for m in seen] == [
        ("status", "pi-a1", True),
        ("readings", "pi-a1", None),
        ("status", "pi-a1", False),
    ]
    assert seen[1]["points"] == [{"ts": ts, "values": {"power_w": 512.3}}]


def _commands_issue(devices, name: str) -> list[Command]:
    with transaction.atomic():
        ids = services.commands_issue(device_ids=[d.pk for d in devices], name=name)
    return [Command.objects.get(pk=ids[d.pk]) for d in devices]


async def _marked_sent(commands, timeout: float = 5):
    """The commands as stored once all are marked sent (by their servers' batches), or as they
    are after `timeout`."""
    ids = [c.pk for c in commands]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        stored = await asyncio.to_thread(
            lambda: list(Command.objects.filter(pk__in=ids).order_by("device_id"))
        )
        if all(c.sent_at for c in stored) or asyncio.get_running_loop().time() > deadline:
            return stored
        await asyncio.sleep(0.05)


async def test_a_batch_of_commands_reaches_devices_on_both_servers_and_a_later_socket(
    portals, alice_home, bob_home
):
    """A demand-response event's way: the commands of several devices issued at once (one
    message for every server), each written by the server its device is connected to, once;
    a device connected nowhere gets its command when it connects."""
    server_a, server_b = portals
    spare, spare_token = await asyncio.to_thread(
        services.device_create, uid="pi-spare", site=alice_home["site"], controllable=True
    )
    devices = [alice_home["device"], bob_home["device"], spare]

    async with pi(server_a, alice_home["token"]) as on_a, pi(server_b, bob_home["token"]) as on_b:
        await settle(on_a)
        await settle(on_b)
        commands = await asyncio.to_thread(_commands_issue, devices, "ping")
        got_a, got_b = await receive_json(on_a), await receive_json(on_b)
        await settle(on_a)  # the next frame is the settle's answer: no command came twice
        await settle(on_b)
        connected = await _marked_sent(commands[:2])
        async with pi(server_b, spare_token) as later:
            got_later = await receive_json(later)
            await settle(later)
            everything = await _marked_sent(commands)

    assert (got_a["id"], got_b["id"], got_later["id"]) == tuple(str(c.id) for c in commands)
    assert [c.status for c in connected] == ["sent", "sent"]
    assert [c.status for c in everything] == ["sent", "sent", "sent"]


async def test_device_connecting_to_a_second_server_closes_its_socket_on_the_first(
    portals, alice_home, operator_token
):
    server_a, server_b = portals

    async with pi(server_a, alice_home["token"]) as on_a:
        await settle(on_a)
        async with pi(server_b, alice_home["token"]) as on_b:
            with pytest.raises(ConnectionClosed) as closed:
                await receive_json(on_a)
            await send_json(on_b, telemetry("m2", recent()[0], power_w=1))
            ack = await receive_json(on_b)
            _, device = await api(server_b, "GET", "devices/pi-a1/", operator_token)

    assert closed.value.rcvd.code == CLOSE_REPLACED
    assert ack["accepted"] == 1
    assert device["online"] is True
