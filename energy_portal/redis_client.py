"""Shared Redis connections for code outside Channels and Celery (health, ingest buffer), and
raw connections for the two hot paths that redis-py's asyncio client made slow: the live hub's
subscription (`energy_portal.live_hub`) and the device sockets' trips (`ScriptLink`)."""

import asyncio
import hashlib
import os
import ssl
import threading
import weakref

import hiredis
import redis
import redis.asyncio
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from django.conf import settings

# What every connection tells Redis about its client (CLIENT SETINFO), made once. Left to itself,
# redis-py 8 makes it for each new connection and asks importlib.metadata for its own version,
# which reads site-packages (0.35 ms a connection): a pool growing after a stall held the event
# loop for up to half a second (bench/live's `probe`).
DRIVER_INFO = DriverInfo()

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
                    settings.REDIS_URL,
                    socket_timeout=5,
                    socket_connect_timeout=2,
                    driver_info=DRIVER_INFO,
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
            driver_info=DRIVER_INFO,
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client


def resp_command(*parts: str | bytes | int | float) -> bytes:
    """A Redis command in RESP, packed by hiredis (in C)."""
    return hiredis.pack_command(parts)


async def read_reply(reader: asyncio.StreamReader, parser: hiredis.Reader):
    """The next reply on a raw connection; a Redis error comes back as `hiredis.ReplyError`."""
    while (reply := parser.gets()) is False:
        data = await reader.read(1 << 16)
        if not data:
            raise ConnectionError("Redis closed the connection")
        parser.feed(data)
    return reply


async def open_raw(
    url: str, *, name: str, select_db: bool = True
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, hiredis.Reader]:
    """A raw connection to the Redis of `url`: authenticated, named `name`-<pid> (CLIENT LIST
    tells whose it is) and, unless `select_db` is false (PUB/SUB ignores databases), on the
    url's database. Raises ConnectionError if Redis refuses any of it."""
    options = parse_url(url)
    connection_class = options.get("connection_class")
    if connection_class is UnixDomainSocketConnection:
        opening = asyncio.open_unix_connection(options["path"])
    else:
        tls = ssl.create_default_context() if connection_class is SSLConnection else None
        opening = asyncio.open_connection(
            options.get("host", "localhost"), options.get("port", 6379), ssl=tls
        )
    reader, writer = await asyncio.wait_for(opening, timeout=2)
    commands: list[tuple[tuple[str, ...], bool]] = []  # (command, whether a refusal is fatal)
    if options.get("password"):
        username = options.get("username")
        credentials = (username, options["password"]) if username else (options["password"],)
        commands.append((("AUTH", *credentials), True))
    # Only a label: an ACL user that may not name itself still gets its connection.
    commands.append((("CLIENT", "SETNAME", f"{name}-{os.getpid()}"), False))
    if select_db and options.get("db"):
        commands.append((("SELECT", str(options["db"])), True))
    parser = hiredis.Reader()
    try:
        writer.write(b"".join(resp_command(*command) for command, _ in commands))
        for command, fatal in commands:
            reply = await asyncio.wait_for(read_reply(reader, parser), timeout=5)
            if fatal and isinstance(reply, Exception):
                raise ConnectionError(f"Redis refused {command[0]}: {reply}")
    except hiredis.ProtocolError as exc:
        writer.close()
        raise ConnectionError(f"not a Redis server, or a broken reply: {exc}") from exc
    except BaseException:
        writer.close()
        raise
    return reader, writer, parser


class ScriptLink:
    """Calls of one Lua script over one raw connection of its own, one call at a time.

    For the device sockets' trips (`telemetry.services._SocketBuffer`): through redis-py's
    asyncio client a call went through a connection pool with its condition, retries, timeouts
    and per-argument encoding in Python, which was a quarter of the device path's CPU at a
    thousand frames a second (bench/live). Here a call is one write of a command that hiredis
    packs in C and one read that hiredis parses.

    Failures raise redis-py's exceptions, as the client did: a lost, refused or silent
    connection (`timeout` seconds) `ConnectionError` / `TimeoutError`, after which the next call
    connects again; an error of the script `ResponseError`. A connection Redis closed while it
    was idle is noticed before a call and made again, as redis-py's pool did. A script Redis
    does not know (a restarted Redis, SCRIPT FLUSH) is sent whole once and called by its digest
    again after.
    """

    def __init__(self, url: str, script: str, *, name: str, timeout: float = 5.0):
        self.url = url
        self.name = name
        self.timeout = timeout
        self.script = script.encode()
        # Redis names scripts by their SHA-1 (EVALSHA): an identifier, not security.
        self.sha = hashlib.sha1(self.script, usedforsecurity=False).hexdigest()
        self._connection: tuple[asyncio.StreamReader, asyncio.StreamWriter, hiredis.Reader] | None
        self._connection = None
        self._lock = asyncio.Lock()
        self.connections = 0  # made so far

    async def __call__(self, *, keys: list, args: list):
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await self._call(keys, args)
            except TimeoutError as exc:  # the reply may still come: the connection is spoilt
                self.close()
                raise RedisTimeoutError(f"no answer from Redis in {self.timeout} s") from exc
            except (OSError, hiredis.ProtocolError) as exc:
                self.close()
                raise RedisConnectionError(f"Redis connection lost: {exc}") from exc
            except BaseException:  # cancelled mid-call: the reply would be read as the next one's
                self.close()
                raise
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def _call(self, keys: list, args: list):
        if self._connection is not None:
            reader, writer, _ = self._connection
            if reader.at_eof() or writer.is_closing():  # closed while idle: Redis restarted,
                self.close()  # its idle timeout, a proxy
        if self._connection is None:
            self._connection = await open_raw(self.url, name=self.name)
            self.connections += 1
        reader, writer, parser = self._connection
        writer.write(resp_command("EVALSHA", self.sha, len(keys), *keys, *args))
        reply = await read_reply(reader, parser)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            writer.write(resp_command("EVAL", self.script, len(keys), *keys, *args))
            reply = await read_reply(reader, parser)
        return reply

    def close(self) -> None:
        """Drop the connection (the next call makes a new one)."""
        if self._connection is not None:
            self._connection[1].close()
            self._connection = None
