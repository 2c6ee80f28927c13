"""Which device socket is connected where, shared by every ASGI instance through Redis.

A device has at most one live socket: `claim` records the new one and returns the one it
replaces; `release` forgets a socket only if it is still the registered one, so a replaced
socket closing late cannot mark the device offline under its successor.
"""

import time

from energy_portal.redis_client import async_client

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


async def touch(device_id: int, at: float | None = None) -> None:
    """Note a sign of life; the beat job copies these into `Device.last_seen` in bulk."""
    await async_client().hset(LAST_SEEN_KEY, device_id, f"{at or time.time():.3f}")
