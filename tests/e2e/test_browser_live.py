"""The live dashboard in a real Chromium against a real ASGI server: a reading sent by a device
shows up on its resident's page, and the page reconnects by itself after the server restarts."""

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect

from django.conf import settings
from django.db import connection

from devices.groups import site_group
from energy_portal import realtime
from energy_portal.redis_client import sync_client
from tests.e2e import servers

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _device_socket(server: servers.Server, token: str):
    """Act as the Pi: a real socket to the portal with the device's token."""
    headers = {"Authorization": f"Bearer {token}"}
    return connect(f"{server.ws}/ws/devices/", additional_headers=headers, open_timeout=10)


def _iso(instant: datetime) -> str:
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _send_reading(ws, values: dict, msg_id: str) -> dict:
    ts = _iso(datetime.now(UTC))
    ws.send(json.dumps({"type": "telemetry", "msg_id": msg_id, "ts": ts, "values": values}))
    return json.loads(ws.recv(timeout=10))


def test_a_devices_reading_appears_live_on_its_residents_dashboard(
    browser, alice, alice_home, bob_home
):
    url = servers.database_url(connection.settings_dict)
    with tempfile.TemporaryDirectory(prefix="ep-live-") as logs:
        server = servers.spawn(database_url=url, redis_url=settings.REDIS_URL, log_dir=Path(logs))
        try:
            servers.wait_until_answering(server)
            context = browser.new_context(base_url=server.http)
            context.add_cookies([servers.session_cookie(alice, server)])
            page = context.new_page()
            page.set_default_timeout(15_000)
            # given alice on her dashboard, its live socket open
            page.goto("/dashboard/")
            indicator = page.locator("[data-live-indicator]")
            expect(indicator).to_have_text("live")
            power = page.locator('[data-metric-for="pi-a1:power_w"]')
            expect(power).to_have_text("\N{EN DASH}")
            status = page.locator('[data-status-for="pi-a1"]')
            expect(status).to_have_text("offline")
            # when her Pi connects and sends a reading
            with _device_socket(server, alice_home["token"]) as pi:
                ack = _send_reading(pi, {"power_w": 1234.4, "voltage_v": 229.9}, "m1")
                assert ack["accepted"] == 2
                # then it is on her page at once, with the device shown online, and charted
                expect(power).to_have_text("1234")
                expect(page.locator('[data-metric-for="pi-a1:voltage_v"]')).to_have_text("229.9")
                expect(status).to_have_text("online")
                expect(page.locator('[data-chart-for="pi-a1"] canvas')).to_have_count(1)
            # and the badge turns offline when the Pi goes away
            expect(status).to_have_text("offline")
            # and bob's device is not on her page at all
            expect(page.locator('[data-device="pi-b1"]')).to_have_count(0)

            # when the server restarts, the page reconnects by itself and keeps updating
            servers.stop(server)
            expect(indicator).to_have_text("reconnecting…")
            server = servers.spawn(
                database_url=url, redis_url=settings.REDIS_URL, log_dir=Path(logs), port=server.port
            )
            servers.wait_until_answering(server)
            expect(indicator).to_have_text("live", timeout=30_000)
            with _device_socket(server, alice_home["token"]) as pi:
                _send_reading(pi, {"power_w": 87.0}, "m2")
                expect(power).to_have_text("87.0")

            # when messages that waited together come as one frame (a JSON array, in order)
            def readings(ts: str, watts: float) -> dict:
                return {"type": "readings", "device": "pi-a1", "site": alice_home["site"].id,
                        "points": [{"ts": ts, "values": {"power_w": watts}}]}  # fmt: skip

            channel = realtime.live_channel(site_group(alice_home["site"].id))
            now = datetime.now(UTC)
            frame = [readings(_iso(now - timedelta(seconds=1)), 55.0), readings(_iso(now), 66.0)]
            sync_client().publish(channel, json.dumps(frame))
            # then each is shown in turn: the page ends on the later one
            expect(power).to_have_text("66.0")
            context.close()
        finally:
            servers.stop(server)
