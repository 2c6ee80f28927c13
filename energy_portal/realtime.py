"""Pushing messages to groups of sockets from sync and async code alike.

Live messages (`live_event`) go only to groups someone watches. Each live viewer counts itself in
Redis for the groups it joined: one sorted set per group, a member per viewer socket, scored with
the time the membership expires. A viewer renews its membership while connected and removes it
when it leaves; one whose process died simply stops being counted once its time runs out.
Senders ask Redis which groups have viewers at most once a second per group and process.
"""

import asyncio
import json
import logging
import math
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from redis.exceptions import RedisError

from energy_portal.redis_client import async_client, sync_client

logger = logging.getLogger(__name__)

LIVE_MESSAGE = "live.message"
VIEWERS_KEY = "ep:live:viewers:{group}"
# A viewer not renewed for this long no longer counts; live viewers renew well before that.
VIEWER_TTL_S = 30.0
VIEWER_RENEW_S = 10.0


def live_event(payload: dict) -> dict:
    """A group message carrying a JSON text that viewers forward as is (encoded once, not per
    viewer)."""
    return {"type": LIVE_MESSAGE, "text": json.dumps(payload, separators=(",", ":"))}


def _viewers_key(group: str) -> str:
    return VIEWERS_KEY.format(group=group)


class WatchedGroups:
    """Which groups have live viewers, as Redis said at most `max_age` seconds ago.

    Each process keeps one, so a group nobody watches costs one Redis round trip a second, not
    two publishes per message. A viewer joining in another process is heard of within `max_age`.
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
            pipe.zcount(_viewers_key(group), f"({alive_after}", "+inf")
        return pipe

    def _answer(self, groups: list[str], stale: list[str], counts: list[int], now: float):
        for group, count in zip(stale, counts, strict=True):
            self._known[group] = (now, count > 0)
        return [group for group in groups if self._known[group][1]]

    async def among(self, groups: list[str]) -> list[str]:
        now = time.monotonic()
        stale = self._stale(groups, now)
        counts = []
        if stale:
            try:
                pipe = self._count(async_client().pipeline(transaction=False), stale)
                counts = await pipe.execute()
            except RedisError:
                # Better a publish nobody hears than a viewer missing readings.
                logger.warning("cannot count live viewers; sending to every group", exc_info=True)
                return list(groups)
        return self._answer(groups, stale, counts, now)

    def among_sync(self, groups: list[str]) -> list[str]:
        """`among` for sync code (HTTP ingest, file ingest): decides before any hop to an event
        loop, so a batch nobody watches never makes one."""
        now = time.monotonic()
        stale = self._stale(groups, now)
        counts = []
        if stale:
            try:
                counts = self._count(sync_client().pipeline(transaction=False), stale).execute()
            except RedisError:
                logger.warning("cannot count live viewers; sending to every group", exc_info=True)
                return list(groups)
        return self._answer(groups, stale, counts, now)

    def note_watched(self, groups: list[str]) -> None:
        """A viewer joined `groups` in this process: send to them from now on."""
        now = time.monotonic()
        for group in groups:
            self._known[group] = (now, True)


watched_groups = WatchedGroups()


async def viewers_join(groups: list[str], channel_name: str) -> None:
    """Count the socket `channel_name` as a viewer of `groups` for the next `VIEWER_TTL_S`
    seconds; calling again renews it."""
    if not groups:
        return
    now = time.time()
    pipe = async_client().pipeline(transaction=False)
    for group in groups:
        key = _viewers_key(group)
        pipe.zremrangebyscore(key, "-inf", now)  # viewers of processes that died
        pipe.zadd(key, {channel_name: now + VIEWER_TTL_S})
        pipe.expire(key, math.ceil(VIEWER_TTL_S))  # the whole set, once its last viewer is gone
    await pipe.execute()
    watched_groups.note_watched(groups)


async def viewers_leave(groups: list[str], channel_name: str) -> None:
    """Stop counting the socket `channel_name` as a viewer of `groups`."""
    if not groups:
        return
    pipe = async_client().pipeline(transaction=False)
    for group in groups:
        pipe.zrem(_viewers_key(group), channel_name)
    await pipe.execute()


async def apublish(groups: list[str], message: dict) -> None:
    """Send `message` to each of `groups` at once, watched or not."""
    layer = get_channel_layer()
    await asyncio.gather(*(layer.group_send(group, message) for group in groups))


async def agroup_send(groups: list[str], message: dict) -> None:
    """Send `message` to each of `groups` at once; a live message only to the groups someone
    watches."""
    if message.get("type") == LIVE_MESSAGE:
        groups = await watched_groups.among(groups)
    await apublish(groups, message)


def group_send(groups: list[str], message: dict) -> None:
    """`agroup_send` for sync code. The watched groups are looked up here, with the sync Redis
    client: from a thread without an event loop (Celery) each `async_to_sync` call runs a new
    loop, and an async Redis client made in it would be one more connection per call."""
    if message.get("type") == LIVE_MESSAGE:
        groups = watched_groups.among_sync(groups)
    if groups:
        async_to_sync(apublish)(groups, message)
