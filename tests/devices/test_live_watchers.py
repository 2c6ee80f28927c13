"""Live messages go only to groups someone watches: browsers' live sockets count themselves as
viewers in Redis, and senders skip the groups nobody counts."""

import asyncio
import json
import os
from contextlib import suppress

import pytest
import pytest_asyncio
import redis.asyncio
from channels.db import database_sync_to_async

from devices import consumers
from devices.groups import fleet_group, site_group
from energy_portal import live_hub, realtime
from energy_portal.redis_client import sync_client
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
    """Live messages as Redis carries them: (group, message) in the order published, heard on
    every live channel of this portal."""

    def __init__(self, pubsub, prefix: str):
        self.pubsub = pubsub
        self.prefix = prefix

    async def next(self, timeout: float = 5) -> tuple[str, dict]:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    group = message["channel"].decode().removeprefix(self.prefix)
                    return group, json.loads(message["data"])

    async def nothing(self, timeout: float = 0.5) -> bool:
        message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        return message is None


@pytest_asyncio.fixture
async def published(settings):
    """Listens to every live channel of the portal (a pattern subscription of its own)."""
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub()
    prefix = realtime.live_channel("")
    await pubsub.psubscribe(prefix + "*")
    assert (await pubsub.get_message(timeout=5))["type"] == "psubscribe"
    try:
        yield Published(pubsub, prefix)
    finally:
        await pubsub.aclose()
        await client.aclose()


async def viewers_counted(groups: list[str]) -> list[str]:
    """The groups Redis counts viewers of now, as a process that never asked before sees it."""
    return realtime.WatchedGroups().among_sync(groups)


async def test_a_devices_messages_are_not_published_when_nobody_watches(alice_home, published):
    async with device_socket(alice_home["token"]) as pi:
        await assert_acked(pi, telemetry("m1", recent(2)[0], power_w=1), accepted=1)
        await assert_acked(pi, telemetry("m2", recent(1)[0], power_w=2), accepted=1)

    assert await published.nothing()
    assert len(stream_rows()) == 2  # the readings are buffered all the same


async def test_a_viewer_who_joins_gets_the_next_readings(alice_home, alice, published):
    site = site_group(alice_home["site"].id)
    ts, _ = recent(1)

    async with device_socket(alice_home["token"]) as pi:
        await assert_acked(pi, telemetry("m1", recent(2)[0], power_w=1), accepted=1)
        unpublished = await published.nothing()
        async with live_socket(alice) as browser:
            await assert_acked(pi, telemetry("m2", ts, power_w=2), accepted=1)
            readings = await browser.receive_json_from()
        first_published = await published.next()

    assert unpublished
    assert first_published == (site, readings)  # to the site only: nobody watches the fleet
    assert (readings["type"], readings["points"]) == (
        "readings",
        [{"ts": ts, "values": {"power_w": 2.0}}],
    )


async def test_a_sender_elsewhere_hears_of_a_new_viewer_within_its_cache_time(alice_home, alice):
    site = site_group(alice_home["site"].id)
    elsewhere = realtime.WatchedGroups()  # another process's memory
    before = elsewhere.among_sync([site])

    async with live_socket(alice):
        remembered = elsewhere.among_sync([site])
        await asyncio.sleep(elsewhere.max_age)
        asked_again = elsewhere.among_sync([site])

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


async def test_the_viewers_of_a_process_are_renewed_together(alice_home, alice, monkeypatch):
    monkeypatch.setattr(realtime, "VIEWER_TTL_S", 0.5)
    monkeypatch.setattr(realtime, "VIEWER_RENEW_S", 0.1)
    renewals = []
    count = realtime._viewers_count

    async def counting(viewers):
        renewals.append(len(viewers))
        await count(viewers)

    monkeypatch.setattr(realtime, "_viewers_count", counting)
    site = site_group(alice_home["site"].id)

    async with live_socket(alice), live_socket(alice), live_socket(alice):
        await asyncio.sleep(0.2)  # all three joined
        renewals.clear()
        await asyncio.sleep(0.75)
        counted = await viewers_counted([site])

    # one pipeline per period for the three of them, not one per viewer
    assert counted == [site]
    assert renewals and set(renewals) == {3} and len(renewals) <= 8


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


async def test_a_reading_goes_to_its_site_and_the_fleet(alice_home, alice, operator, published):
    async with (
        live_socket(alice) as residents_browser,
        live_socket(operator) as operators_browser,
        device_socket(alice_home["token"]) as pi,
    ):
        await residents_browser.receive_json_from()  # the device's status: online
        await operators_browser.receive_json_from()
        status = [await published.next(), await published.next()]
        await assert_acked(pi, telemetry("m1", recent()[0], power_w=1), accepted=1)
        at_residents = await residents_browser.receive_json_from()
        at_operators = await operators_browser.receive_json_from()
        reading = [await published.next(), await published.next()]

    both = sorted([site_group(alice_home["site"].id), fleet_group()])
    assert at_residents == at_operators
    assert at_residents["type"] == "readings"
    assert sorted(group for group, _ in status) == both
    assert sorted(group for group, _ in reading) == both
    assert [message for _, message in reading] == [at_residents, at_residents]


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


# --- the process's live hub --------------------------------------------------------------------


def publish_to(group: str, payload: dict) -> None:
    """What a sender anywhere does: PUBLISH on the group's live channel."""
    sync_client().publish(realtime.live_channel(group), json.dumps(payload))


async def test_a_viewer_that_falls_behind_is_closed_and_gets_nothing_more(
    alice_home, alice, monkeypatch
):
    # given a browser whose socket takes nothing until it is more than 5 messages behind
    monkeypatch.setattr(live_hub, "OUTBOX_LIMIT", 5)

    async def send_once_behind(self, text):
        while not self.outbox.overflowed:
            await asyncio.sleep(0.01)

    monkeypatch.setattr(consumers.LiveConsumer, "send_text", send_once_behind)
    site = site_group(alice_home["site"].id)

    async with live_socket(alice) as browser:
        hub = live_hub.live_hub()
        watched_before = hub.groups
        # when 7 messages come for it: one being sent, 5 queued, one too many
        for n in range(7):
            publish_to(site, {"type": "x", "n": n})
        closed = await browser.receive_output(timeout=5)
        watched_after = hub.groups

    # then it is closed as too slow, and the hub no longer holds anything for it
    assert closed == {"type": "websocket.close", "code": consumers.CLOSE_TOO_SLOW}
    assert (watched_before, watched_after) == ([site], [])


async def test_messages_that_wait_for_a_socket_together_leave_as_one_frame_in_order(
    alice_home, alice, monkeypatch
):
    # given a browser whose socket is busy with a first message until three more have come
    monkeypatch.setattr(live_hub, "BATCH_MAX", 2)
    site = site_group(alice_home["site"].id)
    sent: list[str] = []
    busy, release = asyncio.Event(), asyncio.Event()
    consumer = []
    plain_send = consumers.LiveConsumer.send_text

    async def send_busy_once(self, text):
        if not sent:
            consumer.append(self)
            busy.set()
            await release.wait()
        sent.append(text)
        await plain_send(self, text)

    monkeypatch.setattr(consumers.LiveConsumer, "send_text", send_busy_once)

    async with live_socket(alice) as browser:
        publish_to(site, {"type": "x", "n": 0})
        await asyncio.wait_for(busy.wait(), 5)
        # when three more come meanwhile, then a fifth once it has caught up
        for n in range(1, 4):
            publish_to(site, {"type": "x", "n": n})
        async with asyncio.timeout(5):
            while len(consumer[0].outbox._texts) < 3:
                await asyncio.sleep(0.01)
        release.set()
        first_four = [await browser.receive_json_from(timeout=5) for _ in range(4)]
        publish_to(site, {"type": "x", "n": 4})
        fifth = await browser.receive_json_from(timeout=5)

    # then the three that waited together left as frames of at most two, in order, and a
    # message that waits alone leaves as it is
    assert [m["n"] for m in [*first_four, fifth]] == [0, 1, 2, 3, 4]
    assert [json.loads(text) for text in sent] == [
        {"type": "x", "n": 0},
        [{"type": "x", "n": 1}, {"type": "x", "n": 2}],
        {"type": "x", "n": 3},
        {"type": "x", "n": 4},
    ]
    assert browser.frames == 4


async def test_the_hub_resubscribes_after_losing_its_redis_connection(alice_home, alice, caplog):
    site = site_group(alice_home["site"].id)

    async with live_socket(alice) as browser:
        hub = live_hub.live_hub()
        # when Redis drops the hub's connection
        killed = sync_client().client_kill_filter(
            _type="pubsub", skipme=True, _id=hub_connection_id()
        )
        async with asyncio.timeout(5):
            while hub.connections < 2:
                await asyncio.sleep(0.05)
        probe = PassiveViewer()
        await hub.join(probe, [site])  # returns once the new subscription is confirmed
        hub.leave(probe, [site])
        publish_to(site, {"type": "after"})
        heard = await browser.receive_json_from(timeout=5)

    assert killed == 1
    assert heard == {"type": "after"}
    assert "resubscribing 1 groups" in caplog.text


class PassiveViewer:
    def deliver(self, text: str) -> None:
        pass


def hub_connection_id() -> int:
    """The Redis client id of this process's live hub (it names its connection)."""
    name = f"ep-live-hub-{os.getpid()}"
    (found,) = [c["id"] for c in sync_client().client_list() if c["name"] == name]
    return int(found)


async def test_viewers_of_a_group_in_one_process_share_one_subscription(alice_home, alice):
    async with live_socket(alice) as first, live_socket(alice) as second:
        site = site_group(alice_home["site"].id)
        subscribers = sync_client().pubsub_numsub(realtime.live_channel(site))
        publish_to(site, {"type": "x"})
        heard = [await first.receive_json_from(), await second.receive_json_from()]

    assert subscribers == [(realtime.live_channel(site).encode(), 1)]
    assert heard == [{"type": "x"}, {"type": "x"}]


async def test_many_viewers_of_many_groups_are_counted_in_one_call_and_the_dead_leave(settings):
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    groups = [f"site.{900000 + i}" for i in range(3)]
    keys = [realtime.viewers_key(group) for group in groups]
    await client.zadd(keys[0], {"live.of-a-dead-process": 1.0})  # expired long ago
    try:
        await realtime._viewers_count(
            {"live.a": groups, "live.b": groups[:1], "live.c": groups[2:]}
        )
        members = [sorted(m.decode() for m in await client.zrange(key, 0, -1)) for key in keys]
        lifetimes = [await client.ttl(key) for key in keys]
        counted = await viewers_counted(groups)
    finally:
        await client.delete(*keys)
        await client.aclose()

    assert members == [["live.a", "live.b"], ["live.a"], ["live.a", "live.c"]]
    assert all(0 < ttl <= realtime.VIEWER_TTL_S for ttl in lifetimes)
    assert counted == groups
