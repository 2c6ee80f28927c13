"""Shared Redis connections for code outside Channels and Celery (health, ingest buffer)."""

import asyncio
import threading
import weakref

import redis
import redis.asyncio

from django.conf import settings

_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis]" = (
    weakref.WeakKeyDictionary()
)


_sync_client: redis.Redis | None = None
_sync_client_lock = threading.Lock()


def sync_client() -> redis.Redis:
    """One client (thread-safe, with its pool) per process. Made under a lock: threads racing to
    make it would each get a client, and the ones dropped close their connections when collected,
    under a thread still using them (bench/live saw it in connect storms)."""
    global _sync_client
    if _sync_client is None:
        with _sync_client_lock:
            if _sync_client is None:
                _sync_client = redis.Redis.from_url(
                    settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2
                )
    return _sync_client


def sync_client_reset() -> None:
    """Forget the client, so the next sync_client() reads settings.REDIS_URL again (tests)."""
    global _sync_client
    with _sync_client_lock:
        _sync_client = None


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
