"""Shared Redis connections for code outside Channels and Celery (health, ingest buffer)."""

import asyncio
import weakref
from functools import cache

import redis
import redis.asyncio

from django.conf import settings

_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis]" = (
    weakref.WeakKeyDictionary()
)


@cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)


def async_client() -> redis.asyncio.Redis:
    """One client (with its pool) per event loop: an asyncio connection is bound to its loop."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        # redis-py 8 caps a pool at 100 connections and then raises MaxConnectionsError, which
        # closed device sockets under load (bench/live); wait for a free one instead.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=500,
            timeout=5,
            socket_timeout=5,
            socket_connect_timeout=2,
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client
