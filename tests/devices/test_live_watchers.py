"""Live messages go only to groups someone watches: browsers' live sockets count themselves as
viewers in Redis, and senders skip the groups nobody counts."""

import asyncio
from contextlib import suppress

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from devices.groups import fleet_group, site_group
from energy_portal import realtime
from tests.devices.test_consumers import (  # noqa: F401 (fixtures used by name)
    assert_acked,
    clean_redis,
    close_sync_thread_connections,
    device_socket,
    fast_passwords,
    live_communicator,
    live_socket,
    recent,
    session_cookie,
    stream_rows,
    telemetry,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
def fresh_watched_groups(monkeypatch):
    """This process's memory of watched groups starts empty, as in a new process."""
    monkeypatch.setattr(realtime, "watched_groups", realtime.WatchedGroups())


class Published:
    """What the channel layer is asked to send: the groups in order, and the most sends that
    were in flight at once."""

    def __init__(self):
        self.groups: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0


@pytest_asyncio.fixture
async def published():
    """Watches the channel layer's group sends; the sends still happen."""
    layer = get_channel_layer()
    send = layer.group_send
    seen = Published()

    async def group_send(group, message):
        seen.groups.append(group)
        seen.in_flight += 1
        seen.most_in_flight = max(seen.most_in_flight, seen.in_flight)
        try:
            await send(group, message)
        finally:
            seen.in_flight -= 1

    layer.group_send = group_send  # on the instance only, so the class's comes back below
    yield seen
    del layer.group_send


async def viewers_counted(groups: list[str]) -> list[str]:
    """The groups Redis counts viewers of now, as a process that never asked before sees it."""
    return await realtime.WatchedGroups().among(groups)


async def test_a_devices_messages_are_not_published_when_nobody_watches(alice_home, published):
    async with device_socket(alice_home["token"]) as pi:
        await assert_acked(pi, telemetry("m1", recent()[0], power_w=1), accepted=1)

    assert published.groups == []
    assert len(stream_rows()) == 1  # the readings are buffered all the same


async def test_a_viewer_who_joins_gets_the_next_readings(alice_home, alice, published):
    site = site_group(alice_home["site"].id)
    ts, _ = recent(1)

    async with device_socket(alice_home["token"]) as pi:
        await assert_acked(pi, telemetry("m1", recent(2)[0], power_w=1), accepted=1)
        unpublished = list(published.groups)
        async with live_socket(alice) as browser:
            await assert_acked(pi, telemetry("m2", ts, power_w=2), accepted=1)
            readings = await browser.receive_json_from()

    assert unpublished == []
    assert published.groups[0] == site
    assert (readings["type"], readings["points"]) == (
        "readings",
        [{"ts": ts, "values": {"power_w": 2.0}}],
    )


async def test_a_sender_elsewhere_hears_of_a_new_viewer_within_its_cache_time(alice_home, alice):
    site = site_group(alice_home["site"].id)
    elsewhere = realtime.WatchedGroups()  # another process's memory
    before = await elsewhere.among([site])

    async with live_socket(alice):
        remembered = await elsewhere.among([site])
        await asyncio.sleep(elsewhere.max_age)
        asked_again = await elsewhere.among([site])

    assert (before, remembered, asked_again) == ([], [], [site])


async def test_an_operator_counts_for_the_fleet_and_stops_on_leaving(operator):
    async with live_socket(operator):
        while_connected = await viewers_counted([fleet_group()])
    after_leaving = await viewers_counted([fleet_group()])

    assert (while_connected, after_leaving) == ([fleet_group()], [])


async def test_a_connected_viewer_stays_counted_past_the_expiry(alice_home, alice, monkeypatch):
    monkeypatch.setattr(realtime, "VIEWER_TTL_S", 0.5)
    monkeypatch.setattr(realtime, "VIEWER_RENEW_S", 0.1)
    site = site_group(alice_home["site"].id)

    async with live_socket(alice):
        await asyncio.sleep(1)
        counted = await viewers_counted([site])

    assert counted == [site]


async def test_a_viewer_that_vanished_without_leaving_stops_counting_once_expired(
    alice_home, alice, monkeypatch
):
    monkeypatch.setattr(realtime, "VIEWER_TTL_S", 0.5)
    site = site_group(alice_home["site"].id)
    cookie = await database_sync_to_async(session_cookie)(alice)
    browser = live_communicator(cookie)
    connected, _ = await browser.connect()
    assert connected

    # its process dies: the consumer stops without disconnecting, so it never leaves
    browser.future.cancel()
    with suppress(asyncio.CancelledError):
        await browser.future
    counted_at_once = await viewers_counted([site])
    await asyncio.sleep(0.6)
    counted_after_expiry = await viewers_counted([site])

    assert (counted_at_once, counted_after_expiry) == ([site], [])


async def test_a_reading_goes_to_its_site_and_the_fleet_at_once(
    alice_home, alice, operator, published
):
    async with (
        live_socket(alice) as residents_browser,
        live_socket(operator) as operators_browser,
        device_socket(alice_home["token"]) as pi,
    ):
        await residents_browser.receive_json_from()  # the device's status: online
        await operators_browser.receive_json_from()
        published.most_in_flight = 0
        await assert_acked(pi, telemetry("m1", recent()[0], power_w=1), accepted=1)
        at_residents = await residents_browser.receive_json_from()
        at_operators = await operators_browser.receive_json_from()
        most_for_the_reading = published.most_in_flight

    assert most_for_the_reading == 2
    assert at_residents == at_operators
    assert at_residents["type"] == "readings"


async def test_sync_live_sends_from_a_thread_without_a_loop_open_no_redis_connections(
    monkeypatch,
):
    # given a sender that asks Redis every time (as Celery tasks a second apart do)
    from energy_portal import redis_client

    monkeypatch.setattr(realtime, "watched_groups", realtime.WatchedGroups(max_age=0))
    before = len(redis_client._async_clients)

    # when a plain thread (no event loop: each async_to_sync runs a new one) sends five times
    def send_five():
        for _ in range(5):
            realtime.group_send([site_group(987654)], realtime.live_event({"type": "x"}))

    await asyncio.to_thread(send_five)

    # then no async client (one connection pool per loop, never closed) was made for them
    assert len(redis_client._async_clients) == before
