"""Channels: the channel layer shared by every ASGI instance, and socket limits."""

from energy_portal.settings.base import ENV

# `core` (lists per channel) or `pubsub` (Redis PUB/SUB); bench/live measures both.
# redis-py 8 reads with a 5 s socket timeout by default, the same as the core layer's blocking
# BZPOPMIN: every idle receive would die with "Timeout reading". Give reads more room than that.
# redis-py 8 also caps an asyncio pool at 100 connections, and the core layer holds one per
# socket waiting in BZPOPMIN: past 100 sockets a process failed with "Too many connections".
_LAYER_HOST = {"address": ENV.redis_url, "socket_timeout": 30, "max_connections": 20_000}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [_LAYER_HOST], "prefix": "ep:asgi", "capacity": 1000, "expiry": 30},
    }
    if ENV.channel_layer == "core"
    else {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [_LAYER_HOST], "prefix": "ep:asgi"},
    }
}
REDIS_URL = ENV.redis_url
DEVICE_HEARTBEAT_TIMEOUT = ENV.heartbeat_timeout_s
DEVICE_RATE_PER_S = ENV.device_rate_per_s
DEVICE_RATE_BURST = ENV.device_rate_burst
