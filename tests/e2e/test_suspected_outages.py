"""Suspected outages through real servers, real device sockets and a real Chromium: two Pis of
one feeder vanish (their connections reset, as when the mains take the homes' routers down) and
the operator's fleet page shows a suspected outage at once; the Pis come back and replay their
`lost` reports, and it shows confirmed. Sockets the server closes as it shuts down suspect
nothing. Screenshots (desktop and a 390 px phone) go to $E2E_SHOTS when set."""

import json
import os
import socket
import struct
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect
from websockets.sync.client import ClientConnection, connect

from django.conf import settings
from django.db import connection

from devices.models import Device
from outages.models import SuspectedOutage
from tests.e2e import servers

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PORT = 8101  # this worktree's own


@pytest.fixture
def server(monkeypatch):
    """A real portal server whose Celery tasks run at once in it (no worker here)."""
    monkeypatch.setenv("CELERY_TASK_ALWAYS_EAGER", "true")
    with tempfile.TemporaryDirectory(prefix="ep-suspected-") as logs:
        running = servers.spawn(
            database_url=servers.database_url(connection.settings_dict),
            redis_url=settings.REDIS_URL,
            log_dir=Path(logs),
            port=PORT,
        )
        try:
            servers.wait_until_answering(running)
            yield running
        finally:
            servers.stop(running)
        assert "Traceback" not in running.output()


def pi(server: servers.Server, token: str) -> ClientConnection:
    # Not a context manager: the test ends it (`vanish`, or the server stopping).
    ws = connect(
        f"{server.ws}/ws/devices/",
        additional_headers={"Authorization": f"Bearer {token}"},
        legacy=True,
    )
    ws.send(json.dumps({"type": "settle"}))  # answered once the connect is handled
    assert json.loads(ws.recv(timeout=5))["code"] == "unknown_type"
    return ws


def vanish(ws: ClientConnection) -> None:
    """Gone without a close frame: the connection reset, as by a router that lost its power."""
    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.socket.close()


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def until(check, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def offline(*devices) -> bool:
    return not Device.objects.filter(pk__in=[d.pk for d in devices], online=True).exists()


def shot(page, name: str) -> None:
    folder = os.environ.get("E2E_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_pis_vanishing_together_show_a_suspected_outage_live_and_their_replay_confirms_it(
    browser, server, operator, alice, alice_home, bob_home
):
    pages = []
    for viewport in (DESKTOP, PHONE):
        context = browser.new_context(base_url=server.http, viewport=viewport)
        context.add_cookies([servers.session_cookie(operator, server)])
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto("/fleet/")
        expect(page.locator("[data-live-indicator]")).to_have_text("live")
        expect(page.locator("[data-suspected-outage]")).to_have_count(0)
        pages.append(page)
    desktop, phone = pages

    # given both Pis of feeder FD-1 connected
    devices = [alice_home["device"], bob_home["device"]]
    sockets = [pi(server, home["token"]) for home in (alice_home, bob_home)]
    dropped = datetime.now(UTC)

    # when both vanish without a close frame
    for ws in sockets:
        vanish(ws)
    assert until(lambda: offline(*devices))

    # then the operator sees a suspected outage of the feeder at once, its two sites
    for page in pages:
        row = page.locator("[data-suspected-outage]")
        expect(row).to_have_count(1)
        expect(row).to_have_attribute("data-suspected-status", "suspected")
        expect(row).to_contain_text("Feeder FD-1")
        expect(row).to_contain_text("2 sites")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the phone page scrolls sideways"
    shot(desktop, "suspected-desktop")
    shot(phone, "suspected-phone")
    suspected = SuspectedOutage.objects.get()
    assert suspected.drops.count() == 2

    # when the Pis come back and replay the cut they buffered (mains lost just before the drop)
    for home in (alice_home, bob_home):
        with connect(
            f"{server.ws}/ws/devices/",
            additional_headers={"Authorization": f"Bearer {home['token']}"},
        ) as ws:
            for n, (state, at) in enumerate(
                (("lost", dropped - timedelta(seconds=3)), ("restored", datetime.now(UTC)))
            ):
                frame = {"type": "power", "msg_id": f"p{n}", "state": state, "ts": rfc3339(at)}
                ws.send(json.dumps(frame))
                assert json.loads(ws.recv(timeout=5))["type"] == "ack"

    # then it shows confirmed, and it is linked to the feeder outage the reports made
    for page in pages:
        row = page.locator("[data-suspected-outage]")
        expect(row).to_have_attribute("data-suspected-status", "confirmed")
        expect(row).to_contain_text("their reports confirm a cut")
    shot(desktop, "suspected-confirmed-desktop")
    suspected.refresh_from_db()
    assert suspected.status == "confirmed" and suspected.grid_outage.kind == "feeder"

    # and a resident never sees it
    resident = browser.new_context(base_url=server.http)
    resident.add_cookies([servers.session_cookie(alice, server)])
    dashboard = resident.new_page()
    dashboard.goto("/dashboard/")
    expect(dashboard.locator("[data-suspected-outage]")).to_have_count(0)
    assert resident.request.get(f"{server.http}/api/v1/outages/suspected/").status == 403


def test_sockets_closed_by_the_server_shutting_down_suspect_nothing(server, alice_home, bob_home):
    devices = [alice_home["device"], bob_home["device"]]
    sockets = [pi(server, home["token"]) for home in (alice_home, bob_home)]

    servers.stop(server)  # Uvicorn closes every socket with 1012 first

    assert until(lambda: offline(*devices))
    assert list(
        Device.objects.filter(pk__in=[d.pk for d in devices]).values_list("dropped_at", flat=True)
    ) == [None, None]
    assert SuspectedOutage.objects.count() == 0
    for ws in sockets:
        ws.close()
