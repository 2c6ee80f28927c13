"""Channels: the channel layer shared by every ASGI instance, and socket limits."""

from redis.connection import parse_url

from energy_portal.redis_client import DRIVER_INFO
from energy_portal.settings.base import ENV


def channel_layer_config(redis_url: str, kind: str) -> dict:
    """The channel layer on `redis_url`: `core` (lists per channel) or `pubsub` (Redis PUB/SUB);
    bench/live measures both.

    PUB/SUB channels belong to the whole Redis server, not to one of its databases: the prefix
    carries the database number, so portals (or test runs) on other databases of the same server
    never hear each other's groups.
    """
    prefix = f"ep:asgi.{parse_url(redis_url).get('db') or 0}"
    # redis-py 8 reads with a 5 s socket timeout by default, the same as the core layer's blocking
    # BZPOPMIN: every idle receive would die with "Timeout reading". Give reads more room than
    # that. redis-py 8 also caps an asyncio pool at 100 connections, and the core layer holds one
    # per socket waiting in BZPOPMIN: past 100 sockets a process failed with "Too many
    # connections".
    # The client's description is made once, not per new connection (see DRIVER_INFO).
    host = {
        "address": redis_url,
        "socket_timeout": 30,
        "max_connections": 20_000,
        "driver_info": DRIVER_INFO,
    }
    if kind == "core":
        return {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [host], "prefix": prefix, "capacity": 1000, "expiry": 30},
        }
    return {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [host], "prefix": prefix},
    }


CHANNEL_LAYERS = {"default": channel_layer_config(ENV.redis_url, ENV.channel_layer)}
REDIS_URL = ENV.redis_url
DEVICE_HEARTBEAT_TIMEOUT = ENV.heartbeat_timeout_s
DEVICE_RATE_PER_S = ENV.device_rate_per_s
DEVICE_RATE_BURST = ENV.device_rate_burst
