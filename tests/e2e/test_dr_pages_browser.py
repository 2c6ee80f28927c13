"""Demand-response pages in a real Chromium against a real ASGI server. An operator schedules an
event from the events page (a bad one is refused with the reason on its field), finds it in the
list, opens it and cancels it, and watches an active event's load move with the live feed. A
resident sees an invitation appear live on the dashboard, opts in, sees the time left and the
kWh saved so far while the event runs, and the result and reward once it is settled.
Screenshots (desktop and a 390 px phone) go to $E2E_SHOTS when set."""

import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect

from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from demand_response import services
from demand_response.models import Event, Program
from telemetry.services import readings_insert
from tests.demand_response.test_settlement import meter_of
from tests.e2e import servers

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}
QUARTER = timedelta(minutes=15)


@pytest.fixture
def program(feeder):
    """Feeder FD-1's homes, no notice needed, 0.2375 EUR per kWh."""
    program = Program.objects.create(
        name="Evening peaks",
        reward_per_kwh=Decimal("0.2375"),
        currency="EUR",
        notification_lead_time=timedelta(0),
    )
    program.eligible_feeders.add(feeder)
    return program


@pytest.fixture
def server(db):
    url = servers.database_url(connection.settings_dict)
    with tempfile.TemporaryDirectory(prefix="ep-dr-") as logs:
        running = servers.spawn(database_url=url, redis_url=settings.REDIS_URL, log_dir=Path(logs))
        try:
            servers.wait_until_answering(running)
            yield running
        finally:
            servers.stop(running)


@pytest.fixture
def open_as(browser, server):
    """A page signed in as `user` (a session made here: the server's hashers differ)."""
    contexts = []

    def open_page(user, **options):
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        context = browser.new_context(base_url=server.http, **options)
        context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": server.http}]
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        return page

    yield open_page
    for context in contexts:
        context.close()


def _shot(page, name: str) -> None:
    folder = os.environ.get("E2E_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _local_input(instant: datetime) -> str:
    """What a person types in the form's datetime-local field (the portal's time zone)."""
    return timezone.localtime(instant).strftime("%Y-%m-%dT%H:%M")


def test_an_operator_schedules_lists_opens_and_cancels_an_event(
    open_as, operator, program, alice_home, bob_home
):
    page = open_as(operator)
    page.goto("/fleet/")
    page.get_by_role("link", name="Demand response").click()
    expect(page.locator("h1")).to_have_text("Demand response events")

    # when the operator asks for an event that ends before it starts
    start = datetime.now(UTC) + timedelta(hours=2)
    page.select_option("#id_program", label="Evening peaks")
    page.fill("#id_start", _local_input(start))
    page.fill("#id_end", _local_input(start - timedelta(hours=1)))
    page.select_option("#id_signal_type", "level")
    page.fill("#id_signal_value", "2")
    page.select_option("#id_target_feeders", label=str(alice_home["site"].feeder))
    page.click("[data-create-event]")
    # then the form says why, on the field, and nothing is scheduled
    expect(page.locator('[data-error-for="end"]')).to_have_text("The end must be after the start.")
    assert not Event.objects.exists()
    _shot(page, "drpages-form-error")

    # when the end is put right
    page.fill("#id_end", _local_input(start + timedelta(hours=1)))
    page.click("[data-create-event]")
    # then the event's page shows it scheduled, both homes invited and not yet answered
    event = Event.objects.get()
    expect(page).to_have_url(f"{page.url.split('/dr/')[0]}/dr/events/{event.pk}/")
    expect(page.locator("[data-dr-summary] [data-event-status]")).to_have_text("Scheduled")
    expect(page.locator('[data-count="pending"]')).to_have_text("2")
    expect(page.locator("[data-dr-chart] canvas").first).to_be_visible()
    _shot(page, "drpages-operator-event-scheduled")

    # and the events list has it
    page.get_by_role("link", name="← All events").click()
    row = page.locator(f'tr[data-event="{event.pk}"]')
    expect(row).to_contain_text("level 2")
    expect(row.locator("[data-event-status]")).to_have_text("Scheduled")
    _shot(page, "drpages-operator-events")

    # when the operator opens it and cancels it
    row.get_by_role("link").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("[data-cancel-event]")
    # then it is cancelled, and can be no more
    expect(page.locator("[data-dr-summary] [data-event-status]")).to_have_text("Cancelled")
    expect(page.locator("[data-cancel-event]")).to_have_count(0)
    assert Event.objects.get().status == "cancelled"

    phone = open_as(operator, viewport=PHONE)
    phone.goto("/dr/events/")
    expect(phone.locator(f'tr[data-event="{event.pk}"]')).to_contain_text("Cancelled")
    _shot(phone, "drpages-operator-events-phone")


def test_an_active_events_load_moves_with_the_live_feed(
    open_as, server, operator, program, alice_home, bob_home
):
    # given an event under way to which Alice's home answered yes
    now = datetime.now(UTC)
    services.site_auto_response_set(site_id=alice_home["site"].pk, mode="accept_all")
    event = services.event_create(
        program_id=program.pk, start=now - timedelta(minutes=5), end=now + timedelta(minutes=30),
        signal_type="level", signal_value=Decimal(2), target_feeders=[alice_home["site"].feeder_id],
        now=now - timedelta(hours=1),
    )  # fmt: skip
    services.event_transition(event_id=event.pk, now=now)
    page = open_as(operator)
    page.goto(f"/dr/events/{event.pk}/")
    expect(page.locator("[data-live-indicator]")).to_have_text("live")
    expect(page.locator("[data-dr-summary] [data-event-status]")).to_have_text("Active")
    expect(page.locator('[data-count="opted_in"]')).to_have_text("1")
    expect(page.locator("[data-dr-time-left]")).to_contain_text("min")

    # when Alice's Pi reports 1.5 kW
    headers = {"Authorization": f"Bearer {alice_home['token']}"}
    with connect(f"{server.ws}/ws/devices/", additional_headers=headers, open_timeout=10) as pi:
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        pi.send(json.dumps({"type": "telemetry", "msg_id": "m1", "ts": ts,
                            "values": {"power_w": 1500.0, "voltage_v": 230.0}}))  # fmt: skip
        answer = json.loads(pi.recv(timeout=10))
        if answer["type"] == "command":  # the event's curtail, sent when it turned active
            answer = json.loads(pi.recv(timeout=10))
        assert answer["accepted"] == 2
        # then the aggregate load on the operator's page moves to it at once
        expect(page.locator("[data-live-kw]")).to_have_text("1.50")
    _shot(page, "drpages-operator-event-live")
    phone = open_as(operator, viewport=PHONE)
    phone.goto(f"/dr/events/{event.pk}/")
    _shot(phone, "drpages-operator-event-live-phone")


def _read(sensor_id: int, lo: datetime, hi: datetime, kwh: float) -> None:
    """Meter readings of `kwh` for each quarter-hour of [lo, hi)."""
    times = [int((lo + n * QUARTER).timestamp() * 1_000_000) for n in range((hi - lo) // QUARTER)]
    readings_insert(sensor_ids=[sensor_id] * len(times), times_us=times, values=[kwh] * len(times))


def test_a_resident_is_invited_live_opts_in_sees_the_saving_and_then_the_reward(
    open_as, operator, alice, program, alice_home, bob_home
):
    # given Alice on her dashboard (desktop and phone)
    page = open_as(alice)
    phone = open_as(alice, viewport=PHONE)
    for p in (page, phone):
        p.goto("/dashboard/")
        expect(p.locator("[data-live-indicator]")).to_have_text("live")
    expect(page.locator("[data-dr-invitation]")).to_have_count(0)
    now = datetime.now(UTC)
    start = now - (now - datetime(2000, 1, 3, tzinfo=UTC)) % QUARTER - QUARTER
    end = start + timedelta(hours=1)
    meter = meter_of(alice_home)
    _read(meter, start - timedelta(days=21), start, 0.5)  # three weeks of 2 kW
    _read(meter, start, start + QUARTER, 0.1)  # the event's first quarter-hour: 0.4 kW

    # when the operator calls an event that began a quarter-hour ago (scheduled an hour before)
    event = services.event_create(
        program_id=program.pk, start=start, end=end, signal_type="level",
        signal_value=Decimal(1), target_feeders=[alice_home["site"].feeder_id],
        now=start - timedelta(hours=1),
    )  # fmt: skip
    # then the invitation appears on her dashboard at once
    card = page.locator(f'[data-dr-event="{event.pk}"]')
    expect(card).to_contain_text("Invitation to save energy")
    expect(card).to_contain_text("level 1")
    expect(card).to_contain_text("€0.2375 per kWh saved")
    expect(phone.locator(f'[data-dr-event="{event.pk}"]')).to_contain_text("Opt in")
    _shot(page, "drpages-resident-invited")
    _shot(phone, "drpages-resident-invited-phone")

    # when she opts in
    card.locator("[data-dr-opt-in]").click()
    expect(page.locator(".messages")).to_contain_text(f"You opted in to event {event.pk}.")
    expect(card).to_contain_text("You are taking part.")
    expect(page.locator("[data-live-indicator]")).to_have_text("live")  # the new page's socket

    # when the event starts
    services.event_transition(event_id=event.pk, now=datetime.now(UTC))
    # then her card shows it under way, the time left ticking, and the first quarter-hour's
    # saving: a baseline of 0.5 kWh (2 kW, adjustment 1) less the 0.1 kWh she used
    expect(card).to_contain_text("Saving event under way")
    left = card.locator("[data-dr-time-left]")
    first = left.inner_text()
    expect(left).not_to_have_text(first, timeout=3_000)
    expect(card.locator("[data-dr-saved]")).to_have_text("0.40 kWh")
    expect(phone.locator(f'[data-dr-event="{event.pk}"] [data-dr-saved]')).to_have_text("0.40 kWh")
    _shot(page, "drpages-resident-active")
    _shot(phone, "drpages-resident-active-phone")

    # when the event ends with 0.1 kWh a quarter-hour used and is settled: 2.0 - 0.4 = 1.6 kWh
    # delivered, 1.6 x 0.2375 = 0.38 EUR
    _read(meter, start + QUARTER, end, 0.1)
    services.event_transition(event_id=event.pk, now=end)
    services.event_settle(event_id=event.pk)
    # then her card shows the result and the reward, live
    expect(card).to_contain_text("You saved 1.60 kWh")
    expect(card.locator("[data-dr-reward]")).to_have_text("€0.38")
    expect(phone.locator(f'[data-dr-event="{event.pk}"] [data-dr-reward]')).to_have_text("€0.38")
    _shot(page, "drpages-resident-result")
    _shot(phone, "drpages-resident-result-phone")

    # and the operator's report has the same figures, with its CSV
    ops = open_as(operator)
    ops.goto(f"/dr/events/{event.pk}/")
    report = ops.locator("[data-dr-report]")
    expect(report.locator("[data-report-total]")).to_contain_text("1.6000")
    expect(report.locator("[data-report-total]")).to_contain_text("€0.38")
    with ops.expect_download() as download:
        ops.click("[data-report-csv]")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[-1] == ",TOTAL,1 of 1 sites paid,,,,1.6000,0.38,EUR,"
    _shot(ops, "drpages-operator-report")
