"""Channels: the channel layer shared by every ASGI instance, and socket limits."""

from energy_portal.settings.base import ENV

# `core` (lists per channel) or `pubsub` (Redis PUB/SUB); bench/live measures both.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [ENV.redis_url], "prefix": "ep:asgi", "capacity": 1000, "expiry": 30},
    }
    if ENV.channel_layer == "core"
    else {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [ENV.redis_url], "prefix": "ep:asgi"},
    }
}
REDIS_URL = ENV.redis_url
DEVICE_HEARTBEAT_TIMEOUT = ENV.heartbeat_timeout_s
DEVICE_RATE_PER_S = ENV.device_rate_per_s
DEVICE_RATE_BURST = ENV.device_rate_burst
