"""Shared Redis connections for code outside Channels and Celery (health, ingest buffer)."""

from functools import cache

import redis

from django.conf import settings


@cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
