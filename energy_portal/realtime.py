"""Pushing messages to groups of sockets from sync and async code alike.

Live messages (`live_event`: readings, device status, commands, outages) are JSON texts for
browsers. They travel as plain Redis PUBLISHes on one channel per group (`live_channel`), which
each process's live hub (`energy_portal.live_hub`) subscribes to once for all its browser sockets
and writes straight to them. Device commands take the same road, one message per batch for
every process (`devices.command_inbox`). Everything else ("you were replaced") goes through the
Channels layer to one consumer, wherever it runs.

Live messages go only to groups someone watches. Each live viewer counts itself in Redis for the
groups it joined: one sorted set per group, a member per viewer socket, scored with the time the
membership expires. A viewer renews its membership while connected and removes it when it
leaves; one whose process died simply stops being counted once its time runs out. Senders ask
Redis which groups have viewers at most once a second per group and process (the device sockets'
path asks inside the script that publishes, see `telemetry.services.readings_enqueue`).
"""

import asyncio
import json
import logging
import math
import time
from functools import cache

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from redis.connection import parse_url
from redis.exceptions import RedisError

from django.conf import settings

from energy_portal.per_loop import per_loop
from energy_portal.redis_client import async_client, sync_client

logger = logging.getLogger(__name__)

LIVE_MESSAGE = "live.message"
VIEWERS_KEY = "ep:live:viewers:{group}"
# A viewer not renewed for this long no longer counts; live viewers renew well before that.
VIEWER_TTL_S = 30.0
VIEWER_RENEW_S = 10.0


# One encoder for every live message (and batch of device commands): json.dumps with options
# builds a new one per call, which cost a third of the encoding's time on the live path.
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def live_event(payload: dict) -> dict:
    """A live message: the JSON text viewers get as is (encoded once, not per viewer)."""
    return {"type": LIVE_MESSAGE, "text": compact_json(payload)}


@cache
def _live_channel_prefix(redis_url: str) -> str:
    # PUB/SUB channels belong to the whole Redis server, not to one of its databases: the
    # database number keeps portals (or test runs) on other databases from hearing each other.
    return f"ep:live.{parse_url(redis_url).get('db') or 0}."


def live_channel(group: str) -> str:
    """The Redis PUB/SUB channel carrying `group`'s live messages."""
    return _live_channel_prefix(settings.REDIS_URL) + group


def viewers_key(group: str) -> str:
    """The sorted set counting `group`'s live viewers."""
    return VIEWERS_KEY.format(group=group)


class WatchedGroups:
    """Which groups have live viewers, as Redis said at most `max_age` seconds ago.

    Each process keeps one, so a group nobody watches costs one Redis round trip a second, not
    a message per reading. A viewer joining in another process is heard of within `max_age`.
    """

    def __init__(self, max_age: float = 1.0):
        self.max_age = max_age
        self._known: dict[str, tuple[float, bool]] = {}  # group: (when asked, watched)

    def _stale(self, groups: list[str], now: float) -> list[str]:
        return [
            group
            for group in groups
            if (known := self._known.get(group)) is None or now - known[0] >= self.max_age
        ]

    def _count(self, pipe, stale: list[str]):
        alive_after = time.time()
        for group in stale:
            pipe.zcount(viewers_key(group), f"({alive_after}", "+inf")
        return pipe

    def _answer(self, groups: list[str], stale: list[str], counts: list[int], now: float):
        for group, count in zip(stale, counts, strict=True):
            self._known[group] = (now, count > 0)
        return [group for group in groups if self._known[group][1]]

    def among_sync(self, groups: list[str]) -> list[str]:
        """Those of `groups` that have viewers, for sync code (HTTP ingest, file ingest, status
        changes); asks Redis about the ones not asked for `max_age`."""
        now = time.monotonic()
        stale = self._stale(groups, now)
        counts = []
        if stale:
            try:
                counts = self._count(sync_client().pipeline(transaction=False), stale).execute()
            except RedisError:
                # Better a publish nobody hears than a viewer missing readings.
                logger.warning("cannot count live viewers; sending to every group", exc_info=True)
                return list(groups)
        return self._answer(groups, stale, counts, now)

    def perhaps_watched(self, groups: list[str]) -> list[str]:
        """`groups` less those known, as of less than `max_age` ago, to have no viewers; for a
        sender that lets Redis decide the rest (see `learn`)."""
        now = time.monotonic()
        return [
            group
            for group in groups
            if (known := self._known.get(group)) is None
            or known[1]
            or now - known[0] >= self.max_age
        ]

    def learn(self, group: str, watched: bool) -> None:
        """What Redis just said of `group`."""
        self._known[group] = (time.monotonic(), watched)

    def note_watched(self, groups: list[str]) -> None:
        """A viewer joined `groups` in this process: send to them from now on."""
        for group in groups:
            self.learn(group, True)


watched_groups = WatchedGroups()


async def viewers_join(groups: list[str], viewer: str) -> None:
    """Count the socket named `viewer` as a viewer of `groups` for the next `VIEWER_TTL_S`
    seconds; calling again renews it."""
    await _viewers_count({viewer: groups})


# Counts viewers in one call whatever their number: KEYS are the groups' sets; ARGV the time now,
# the sets' lifetime, the members' expiry, then per key the number of its viewers and their names.
# A pipeline of three commands per group cost 35-77 ms of the event loop at each renewal of
# 1,250 viewers (bench/outages); one script call with their names costs a few.
_COUNT_VIEWERS = """
local now, ttl, expires = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local at = 4
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[at])
  at = at + 1
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  for _ = 1, n do
    redis.call('ZADD', key, expires, ARGV[at])
    at = at + 1
  end
  redis.call('EXPIRE', key, ttl)
end
return #KEYS
"""
_count_viewers_script = per_loop(lambda: async_client().register_script(_COUNT_VIEWERS))


async def _viewers_count(viewers: dict[str, list[str]]) -> None:
    """Count each viewer of `viewers` (name -> its groups) for the next `VIEWER_TTL_S` seconds,
    all in one call (`_COUNT_VIEWERS`): viewers of processes that died leave their groups."""
    by_group: dict[str, list[str]] = {}
    for viewer, groups in viewers.items():
        for group in groups:
            by_group.setdefault(group, []).append(viewer)
    if not by_group:
        return
    now = time.time()
    args: list[str | int | float] = [now, math.ceil(VIEWER_TTL_S), now + VIEWER_TTL_S]
    for members in by_group.values():
        args.append(len(members))
        args += members
    await _count_viewers_script()(keys=[viewers_key(group) for group in by_group], args=args)
    watched_groups.note_watched(list(by_group))


class ViewerRenewals:
    """The live viewers of this process's event loop, renewed together: one script call every
    `VIEWER_RENEW_S` for all of them (`_viewers_count`). Renewed one socket at a time, 2,500
    browsers ran the Redis connection pool dry in bench/outages, and device sockets waiting for
    Redis closed."""

    def __init__(self) -> None:
        self._viewers: dict[str, list[str]] = {}
        self._task: asyncio.Task | None = None

    def add(self, viewer: str, groups: list[str]) -> None:
        self._viewers[viewer] = groups
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._renew())

    def remove(self, viewer: str) -> None:
        self._viewers.pop(viewer, None)

    async def _renew(self) -> None:
        while self._viewers:
            await asyncio.sleep(VIEWER_RENEW_S)
            try:
                await _viewers_count(dict(self._viewers))
            except RedisError:
                logger.warning("cannot renew the live viewers' counts; trying again", exc_info=True)


viewer_renewals = per_loop(ViewerRenewals)


async def viewers_leave(groups: list[str], viewer: str) -> None:
    """Stop counting the socket named `viewer` as a viewer of `groups`."""
    if not groups:
        return
    pipe = async_client().pipeline(transaction=False)
    for group in groups:
        pipe.zrem(viewers_key(group), viewer)
    await pipe.execute()


def publish_live(pipe, groups: list[str], message: dict) -> None:
    """Queue a live message's PUBLISH to each of `groups` on a Redis pipeline (sync or async)."""
    for group in groups:
        pipe.publish(live_channel(group), message["text"])


async def _channel_layer_send(groups: list[str], message: dict) -> None:
    layer = get_channel_layer()
    for group in groups:
        await layer.group_send(group, message)


def live_send_each(sends: list[tuple[list[str], dict]]) -> None:
    """Send each live message of `sends` to those of its groups someone watches: one Redis
    round trip to learn which (for the groups not asked of late), one to send."""
    every = list(dict.fromkeys(group for groups, _ in sends for group in groups))
    watched = set(watched_groups.among_sync(every)) if every else set()
    pipe = None
    for groups, message in sends:
        if mine := [group for group in groups if group in watched]:
            pipe = pipe or sync_client().pipeline(transaction=False)
            publish_live(pipe, mine, message)
    if pipe is not None:
        pipe.execute()


def group_send(groups: list[str], message: dict) -> None:
    """Send `message` to each of `groups` from sync code; a live message only to the groups
    someone watches, in one Redis round trip and without a hop to an event loop."""
    if message.get("type") != LIVE_MESSAGE:
        async_to_sync(_channel_layer_send)(groups, message)
        return
    groups = watched_groups.among_sync(groups)
    if groups:
        pipe = sync_client().pipeline(transaction=False)
        publish_live(pipe, groups, message)
        pipe.execute()
