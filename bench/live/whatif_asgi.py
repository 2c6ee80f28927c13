"""What-if variants of the portal's ASGI app, to measure a suspected bottleneck (config suffixes).

`BENCH_WHATIF=nolock` (config suffix `+nolock`): channels_redis' pub/sub layer sends every
`group_send` through one `asyncio.Lock` per Redis shard, so PUBLISHes go one at a time, each
waiting for Redis's reply before the next may start; throughput is then 1 / (round trip + event-loop
turn), whatever the CPU. This variant publishes without the lock (the client's connection pool
handles concurrency). Only the benchmark's server process is patched; the portal's code is not.

`nogc`: the cyclic garbage collector off (after freezing the start-up heap); `gcfreeze`: start-up
heap frozen and young collections ten times rarer.

`nobatch`: every live message its own frame to a browser, as before messages that wait for a
socket together left as one (`energy_portal.live_hub.BATCH_MAX` = 1).
"""

import gc
import os

from energy_portal.asgi import application  # sets Django up first


def _publish_without_lock() -> None:
    from channels_redis import pubsub

    async def publish(self, channel, message):
        self._ensure_redis()
        await self._redis.publish(channel, message)

    pubsub.RedisSingleShardConnection.publish = publish


def _no_gc() -> None:
    """Upper bound of what the cyclic garbage collector costs the live path: none at all."""
    gc.freeze()
    gc.disable()


def _gc_frozen() -> None:
    """The start-up heap (Django, the app) frozen out of the collector's view, and young
    collections ten times rarer: what a long-running server can afford."""
    gc.freeze()
    gc.set_threshold(7000, 10, 10)


def _no_batch() -> None:
    from energy_portal import live_hub

    live_hub.BATCH_MAX = 1


PATCHES = {
    "nolock": _publish_without_lock,
    "nogc": _no_gc,
    "gcfreeze": _gc_frozen,
    "nobatch": _no_batch,
}
for name in filter(None, os.environ.get("BENCH_WHATIF", "").split(",")):
    PATCHES[name]()
__all__ = ["application"]
