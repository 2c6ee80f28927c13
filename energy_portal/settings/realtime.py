"""Channels: the channel layer shared by every ASGI instance, and socket limits."""

from energy_portal.settings.base import ENV

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [ENV.redis_url], "prefix": "ep:asgi", "capacity": 1000, "expiry": 30},
    }
}
REDIS_URL = ENV.redis_url
DEVICE_HEARTBEAT_TIMEOUT = ENV.heartbeat_timeout_s
