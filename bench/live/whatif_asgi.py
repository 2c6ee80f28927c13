"""What-if variants of the portal's ASGI app, to measure a suspected bottleneck (config suffixes).

`BENCH_WHATIF=nolock` (config suffix `+nolock`): channels_redis' pub/sub layer sends every
`group_send` through one `asyncio.Lock` per Redis shard, so PUBLISHes go one at a time, each
waiting for Redis's reply before the next may start; throughput is then 1 / (round trip + event-loop
turn), whatever the CPU. This variant publishes without the lock (the client's connection pool
handles concurrency). Only the benchmark's server process is patched; the portal's code is not.
"""

import os

from energy_portal.asgi import application  # sets Django up first


def _publish_without_lock() -> None:
    from channels_redis import pubsub

    async def publish(self, channel, message):
        self._ensure_redis()
        await self._redis.publish(channel, message)

    pubsub.RedisSingleShardConnection.publish = publish


PATCHES = {"nolock": _publish_without_lock}
for name in filter(None, os.environ.get("BENCH_WHATIF", "").split(",")):
    PATCHES[name]()
__all__ = ["application"]
