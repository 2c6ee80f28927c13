"""However a device's socket ends on a real server, the device leaves it at once: marked offline,
its registry entry released. Ways it ends here: the client vanishes without a close frame (its
TCP connection closed or reset), the server fails while handling a message (the client still
gets a close frame, 1011), and the server shuts down (1012)."""

import asyncio
import json
import signal
import socket
import struct
import tempfile
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from django.conf import settings
from django.db import connection

from devices import socket_registry
from devices.consumers import CLOSE_INTERNAL_ERROR
from devices.models import Device
from tests.devices.test_consumers import (  # noqa: F401 (fixtures used by name)
    clean_redis,
    fast_passwords,
    recent,
    table_locked,
    to_socket,
)
from tests.e2e import servers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]
SERVER_SHUTDOWN = 1012  # what Uvicorn closes open sockets with when it stops


@pytest.fixture
def portal_log(portal):
    """What the server logs during the test; checked to hold no traceback after it."""
    start = len(portal.output())
    yield lambda: portal.output()[start:]
    assert "Traceback" not in portal.output()[start:]


def pi(server: servers.Server, token: str):
    return connect(
        f"{server.ws}/ws/devices/", additional_headers={"Authorization": f"Bearer {token}"}
    )


async def settle(ws: ClientConnection) -> None:
    """Once a frame of an unknown type is answered, the connect and all earlier frames are
    handled."""
    await ws.send(json.dumps({"type": "settle"}))
    answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert answer["code"] == "unknown_type", answer


async def left(device: Device) -> tuple[bool, str | None]:
    """(online, registered socket) of the device, as the portal sees it now."""
    online = await asyncio.to_thread(_online, device.pk)
    return online, await socket_registry.connected_channel(device.id)


def _online(pk: int) -> bool:
    try:
        return Device.objects.filter(pk=pk).values_list("online", flat=True).get()
    finally:
        connection.close()  # this thread's own: left open, the test database could not be dropped


async def until_left(device: Device, timeout: float = 10) -> tuple[bool, str | None]:
    """Wait until the device is offline with no registered socket; its state then or at the
    timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    state = await left(device)
    while state != (False, None) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        state = await left(device)
    return state


def vanish(ws: ClientConnection, *, reset: bool) -> None:
    """The client disappears without a close frame: its connection closed (FIN), or reset (RST)
    as when the Pi loses power behind a router that answers for it."""
    sock = ws.transport.get_extra_info("socket")
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_a_client_vanishing_without_a_close_frame_leaves_the_device_offline(
    portal, portal_log, alice_home, reset
):
    device = alice_home["device"]
    async with pi(portal, alice_home["token"]) as ws:
        await settle(ws)
        while_connected = await left(device)
        vanish(ws, reset=reset)
        after = await until_left(device)

    assert while_connected[0] is True and while_connected[1] is not None
    assert after == (False, None)


async def test_a_failure_handling_a_message_closes_with_a_close_frame_and_one_log_line(
    portal, portal_log, alice_home
):
    device = alice_home["device"]
    async with pi(portal, alice_home["token"]) as ws:
        await settle(ws)
        # A message the consumer has no handler for, through the real channel layer: a defect.
        await to_socket(device.id, {"type": "device.bogus"})
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    after = await until_left(device)

    assert closed.value.rcvd is not None, "the connection was dropped without a close frame"
    assert closed.value.rcvd.code == CLOSE_INTERNAL_ERROR
    assert after == (False, None)
    failures = [line for line in portal_log().splitlines() if "handling its socket failed" in line]
    assert len(failures) == 1 and "No handler for message type device.bogus" in failures[0]


async def test_server_shutdown_closes_the_socket_and_leaves_the_device_offline(alice_home):
    device = alice_home["device"]
    with tempfile.TemporaryDirectory(prefix="ep-asgi-") as log_dir:
        server = servers.spawn(
            database_url=servers.database_url(connection.settings_dict),
            redis_url=settings.REDIS_URL,
            log_dir=Path(log_dir),
        )
        try:
            servers.wait_until_answering(server)
            async with pi(server, alice_home["token"]) as ws:
                await settle(ws)
                while_connected = await left(device)
                # when the server is told to stop (SIGTERM, as compose and `make run` do)
                await asyncio.to_thread(servers.stop, server)
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
        finally:
            servers.stop(server)
        log = server.output()

    assert while_connected[0] is True and while_connected[1] is not None
    assert closed.value.rcvd is not None and closed.value.rcvd.code == SERVER_SHUTDOWN
    assert await left(device) == (False, None)  # at once: the server had finished stopping
    assert "Traceback" not in log


async def test_a_consumer_still_busy_when_ctrl_c_stops_the_server_leaves_the_device_offline(
    alice_home,
):
    # Uvicorn waits 5 s (asgi_server) for consumers still busy, then cancels them: the cleanup
    # runs on that cancellation. (On SIGTERM Uvicorn ends the process in the same step as it
    # cancels them, so a consumer busy that long leaves its device to the silent-devices job.)
    device = alice_home["device"]
    lost = {"type": "power", "msg_id": "p1", "state": "lost", "ts": recent()[0]}
    with tempfile.TemporaryDirectory(prefix="ep-asgi-") as log_dir:
        server = servers.spawn(
            database_url=servers.database_url(connection.settings_dict),
            redis_url=settings.REDIS_URL,
            log_dir=Path(log_dir),
        )
        try:
            servers.wait_until_answering(server)
            async with pi(server, alice_home["token"]) as ws:
                await settle(ws)
                # given a consumer waiting on the database (its write blocked by a lock)
                async with table_locked("outages_powerevent"):
                    await ws.send(json.dumps(lost))
                    # when Ctrl-C stops the server, and its grace time passes
                    server.process.send_signal(signal.SIGINT)
                    # then the device leaves, though the consumer never finished its frame
                    while_busy = await until_left(device, timeout=servers.STOP_TIMEOUT_S)
        finally:
            servers.stop(server)

    assert while_busy == (False, None)
