"""Which device socket is connected where, shared by every ASGI instance through Redis.

A device has at most one live socket: `claim` records the new one and returns the one it
replaces; `release` forgets a socket only if it is still the registered one, so a replaced
socket closing late cannot mark the device offline under its successor.

Signs of life (`seen_notes().note(device_id)`) are gathered per event loop and written together
about once a second: one HSET for all of a process's talking devices rather than a Redis call per
device; the beat job copies the hash into `Device.last_seen` in bulk.
"""

import asyncio
import logging
import time

from redis.exceptions import RedisError

from energy_portal.per_loop import per_loop
from energy_portal.redis_client import async_client

logger = logging.getLogger(__name__)

SOCKETS_KEY = "ep:devices:sockets"
LAST_SEEN_KEY = "ep:devices:last-seen"

_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

_CLAIM = """
local previous = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return previous
"""


async def claim(device_id: int, channel_name: str) -> str | None:
    previous = await async_client().eval(_CLAIM, 1, SOCKETS_KEY, device_id, channel_name)
    return previous.decode() if previous else None


async def release(device_id: int, channel_name: str) -> bool:
    return bool(await async_client().eval(_RELEASE, 1, SOCKETS_KEY, device_id, channel_name))


async def connected_channel(device_id: int) -> str | None:
    channel = await async_client().hget(SOCKETS_KEY, device_id)
    return channel.decode() if channel else None


# How often a loop's gathered signs of life are written. `Device.last_seen` lags by this much more
# (the beat job copies the hash into the table in bulk, and far less often).
WRITE_EVERY_S = 1.0


class SeenNotes:
    """One event loop's signs of life not yet in Redis: device id -> when (epoch seconds).

    Noting costs a dict write, never a wait. A writer task, alive while notes are pending,
    writes them all in one HSET every `WRITE_EVERY_S`, so a note reaches Redis about that long
    after it is taken while Redis takes writes. A write that fails (Redis down, or its
    connections all busy under overload) keeps its notes for the next one; a note taken
    meanwhile is newer and wins over a kept one of the same device. Notes pending when the
    process stops are lost; the disconnect writes `Device.last_seen` itself, and the device's
    next frame, to whichever server, notes it again.
    """

    def __init__(self) -> None:
        self.pending: dict[int, float] = {}
        self.writer: asyncio.Task | None = None

    def note(self, device_id: int, at: float | None = None) -> None:
        """Note that `device_id` showed life `at` (default: now); written with the next batch."""
        self.pending[device_id] = time.time() if at is None else at
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write_while_pending())

    async def _write_while_pending(self) -> None:
        try:
            while self.pending:
                await asyncio.sleep(WRITE_EVERY_S)
                await self.write()
        finally:
            self.writer = None

    async def write(self) -> None:
        """Write the pending notes now (the writer does this every `WRITE_EVERY_S`)."""
        notes, self.pending = self.pending, {}
        if not notes:
            return
        try:
            await async_client().hset(
                LAST_SEEN_KEY, mapping={device: f"{at:.3f}" for device, at in notes.items()}
            )
        except Exception as exc:
            # Noted meanwhile means newer: those win over the ones kept for the next write.
            self.pending = notes | self.pending
            if not isinstance(exc, RedisError):
                # unforeseen: still kept and retried, with the traceback for whoever reads logs
                logger.exception("cannot write %d devices' last-seen; trying again", len(notes))
                return
            logger.warning("cannot write %d devices' last-seen; trying again (%s)", len(notes), exc)


# The running event loop's notes (a task and a Redis client belong to one loop).
seen_notes = per_loop(SeenNotes)
