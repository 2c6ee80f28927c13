"""Power cuts in a real Chromium against a real ASGI server, reported by a Pi over its real
socket: a resident's dashboard shows a cut the moment it is reconciled, ticks its time and credit
every second, steps the credit, and shows the ledger entry when the power is back; an operator's
fleet page lists the cut under its feeder, live. Screenshots (desktop and a 390 px phone) go to
$E2E_SHOTS when set."""

import json
import os
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect
from websockets.sync.client import ClientConnection, connect

from django.conf import settings
from django.db import connection

from outages.models import CreditPolicy
from tests.e2e import servers

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}


# The server reconciles each report at once (no Celery worker here) and counts cuts shorter
# than 2 s as momentary.
SERVER_ENV = {"CELERY_TASK_ALWAYS_EAGER": "1", "OUTAGE_MOMENTARY_S": "2"}


@pytest.fixture
def seconds_policy(db):
    """A default policy that steps within seconds: £1.00 at 5 s, £0.50 per further whole 5 s."""
    CreditPolicy.objects.filter(is_default=True).update(is_default=False)
    return CreditPolicy.objects.create(
        name="Seconds",
        currency="GBP",
        threshold=timedelta(seconds=5),
        base_amount=Decimal("1.00"),
        tiers=[{"after": "PT5S", "period": "PT5S", "amount": "0.50"}],
        is_default=True,
    )


def _report(pi: ClientConnection, state: str, at: datetime) -> None:
    """The Pi's `power` frame with the instant it saw, answered by the portal's ack."""
    msg_id = f"{state}-{at.timestamp()}"
    frame = {"type": "power", "msg_id": msg_id, "state": state, "ts": at.isoformat()}
    pi.send(json.dumps(frame))
    answer = json.loads(pi.recv(timeout=10))
    assert answer.get("msg_id") == msg_id and answer.get("type") == "ack", answer


def _shot(page, name: str) -> None:
    folder = os.environ.get("E2E_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_a_cut_shows_live_ticks_steps_and_ends_with_its_credit(
    browser, alice, operator, alice_home, bob_home, seconds_policy
):
    url = servers.database_url(connection.settings_dict)
    with tempfile.TemporaryDirectory(prefix="ep-outage-") as logs, ExitStack() as stack:
        server = servers.spawn(
            database_url=url, redis_url=settings.REDIS_URL, log_dir=Path(logs), extra_env=SERVER_ENV
        )
        try:
            servers.wait_until_answering(server)
            pi = stack.enter_context(
                connect(
                    f"{server.ws}/ws/devices/",
                    additional_headers={"Authorization": f"Bearer {alice_home['token']}"},
                )
            )
            resident = browser.new_context(base_url=server.http)
            resident.add_cookies([servers.session_cookie(alice, server)])
            page = resident.new_page()
            page.set_default_timeout(15_000)
            phone_context = browser.new_context(base_url=server.http, viewport=PHONE)
            phone_context.add_cookies([servers.session_cookie(alice, server)])
            phone = phone_context.new_page()
            ops = browser.new_context(base_url=server.http)
            ops.add_cookies([servers.session_cookie(operator, server)])
            fleet = ops.new_page()
            fleet.set_default_timeout(15_000)

            # given alice on her dashboard and an operator on the fleet page, both live
            for p, path in ((page, "/dashboard/"), (phone, "/dashboard/"), (fleet, "/fleet/")):
                p.goto(path)
                expect(p.locator("[data-live-indicator]")).to_have_text("live")
            banner = page.locator("[data-outage-banner]")
            expect(banner).to_have_count(0)
            expect(fleet.locator("[data-no-open-outages]")).to_be_visible()

            # when her Pi reports the mains lost
            lost_at = datetime.now(UTC)
            _report(pi, "lost", lost_at)

            # then the banner appears at once: since when, nothing earned yet, £1.00 next
            expect(banner).to_contain_text("Power cut since")
            expect(page.locator("[data-outage-amount]")).to_have_text("£0.00")
            expect(page.locator("[data-outage-next-amount]")).to_have_text("£1.00")
            # and the operator sees it under its feeder
            site = alice_home["site"].id
            feeder = fleet.locator('[data-open-feeder="FD-1"]')
            expect(feeder.locator(f'[data-open-site="{site}"]')).to_have_count(1)
            _shot(page, "banner-open-desktop")
            _shot(phone, "banner-open-phone")
            _shot(fleet, "fleet-open")

            # and the elapsed time ticks by itself
            elapsed = page.locator("[data-outage-elapsed]")
            first = elapsed.inner_text()
            expect(elapsed).not_to_have_text(first, timeout=3_000)

            # and at 5 s the credit steps to £1.00 and the next step (from the API) is £1.50
            expect(page.locator("[data-outage-amount]")).to_have_text("£1.00", timeout=10_000)
            expect(page.locator("[data-outage-next-amount]")).to_have_text("£1.50")
            _shot(phone, "banner-stepped-phone")

            # when the power comes back 11 s after it went (£1.00 + one whole 5 s: £1.50)
            back_at = lost_at + timedelta(seconds=11)
            time.sleep(max(0.0, (back_at - datetime.now(UTC)).total_seconds() + 0.5))
            _report(pi, "restored", back_at)

            # then her page shows the ledger's entry, and the fleet no open outage
            ended = page.locator("[data-outage-ended]")
            expect(ended).to_contain_text("Cut lasted 11 s")
            expect(ended).to_contain_text("£1.50 credited")
            expect(page.locator("[data-credit-balance]")).to_have_text("£1.50")
            expect(banner).to_have_count(0)
            expect(fleet.locator("[data-no-open-outages]")).to_be_visible()
            expect(phone.locator("[data-outage-ended]")).to_contain_text("£1.50 credited")
            _shot(page, "banner-ended-desktop")
            _shot(phone, "banner-ended-phone")

            # and her outage history lists it with its credit
            phone.goto("/outages/")
            expect(phone.locator("[data-outage]")).to_have_count(1)
            expect(phone.locator("[data-outage]")).to_contain_text("£1.50")
            _shot(phone, "history-phone")
            for context in (resident, phone_context, ops):
                context.close()
        finally:
            stack.close()
            servers.stop(server)
        assert "Traceback" not in server.output()


def test_the_cut_shows_from_the_report_before_any_reconcile(browser, alice, alice_home):
    # given no Celery worker at all (tasks only queued): nothing derives the site's outage
    url = servers.database_url(connection.settings_dict)
    with tempfile.TemporaryDirectory(prefix="ep-outage-") as logs, ExitStack() as stack:
        server = servers.spawn(
            database_url=url,
            redis_url=settings.REDIS_URL,
            log_dir=Path(logs),
            extra_env={"CELERY_TASK_ALWAYS_EAGER": "0"},
        )
        try:
            servers.wait_until_answering(server)
            pi = stack.enter_context(
                connect(
                    f"{server.ws}/ws/devices/",
                    additional_headers={"Authorization": f"Bearer {alice_home['token']}"},
                )
            )
            contexts = []
            pages = []
            for viewport in (None, PHONE):
                context = browser.new_context(base_url=server.http, viewport=viewport)
                context.add_cookies([servers.session_cookie(alice, server)])
                page = context.new_page()
                page.set_default_timeout(15_000)
                page.goto("/dashboard/")
                expect(page.locator("[data-live-indicator]")).to_have_text("live")
                contexts.append(context)
                pages.append(page)

            # when her Pi reports the mains lost an hour ago
            lost_at = datetime.now(UTC) - timedelta(hours=1)
            _report(pi, "lost", lost_at)

            # then both pages show the cut at once, since the Pi's instant on her home's clock
            since = lost_at.astimezone(ZoneInfo(alice_home["site"].timezone)).strftime("%H:%M")
            for page in pages:
                banner = page.locator("[data-outage-banner][data-provisional]")
                expect(banner).to_contain_text(f"Power cut since {since}")
                expect(banner.locator("[data-outage-elapsed]")).not_to_be_empty()
            _shot(pages[0], "banner-provisional-desktop")
            _shot(pages[1], "banner-provisional-phone")

            # when it reports the power back, the pages say so
            _report(pi, "restored", lost_at + timedelta(minutes=30))
            for page in pages:
                expect(page.locator("[data-outage-banner]")).to_have_count(0)
                expect(page.locator('[data-provisional="restored"]')).to_contain_text(
                    "Power is back"
                )
            _shot(pages[1], "banner-provisional-back-phone")
            for context in contexts:
                context.close()
        finally:
            servers.stop(server)
