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


@pytest_asyncio.fixture
async def published():
    """The groups the channel layer is asked to send to, in order; the sends still happen."""
    layer = get_channel_layer()
    send = layer.group_send
    groups = []

    async def group_send(group, message):
        groups.append(group)
        await send(group, message)

    layer.group_send = group_send  # on the instance only, so the class's comes back below
    yield groups
    del layer.group_send


async def viewers_counted(groups: list[str]) -> list[str]:
    """The groups Redis counts viewers of now, as a process that never asked before sees it."""
    return await realtime.WatchedGroups().among(groups)


async def test_a_devices_messages_are_not_published_when_nobody_watches(alice_home, published):
    async with device_socket(alice_home["token"]) as pi:
        await assert_acked(pi, telemetry("m1", recent()[0], power_w=1), accepted=1)

    assert published == []
    assert len(stream_rows()) == 1  # the readings are buffered all the same


async def test_a_viewer_who_joins_gets_the_next_readings(alice_home, alice, published):
    site = site_group(alice_home["site"].id)
    ts, _ = recent(1)

    async with device_socket(alice_home["token"]) as pi:
        await assert_acked(pi, telemetry("m1", recent(2)[0], power_w=1), accepted=1)
        unpublished = list(published)
        async with live_socket(alice) as browser:
            await assert_acked(pi, telemetry("m2", ts, power_w=2), accepted=1)
            readings = await browser.receive_json_from()

    assert unpublished == []
    assert published[0] == site
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
