"""The process-wide Redis clients, and the raw connections of the hot paths (ScriptLink)."""

import asyncio
import os
import threading
import time
import uuid
from urllib.parse import urlsplit

import hiredis
import pytest
import pytest_asyncio
import redis

from django.conf import settings

from energy_portal.redis_client import (
    ScriptLink,
    open_raw,
    resp_command,
    sync_client,
    sync_client_reset,
)


def test_threads_racing_for_the_sync_client_make_one_and_share_it(monkeypatch):
    # given no client yet, a slow client constructor (so racing threads overlap inside it), and
    # many threads asking at the same instant
    made = []
    from_url = redis.Redis.from_url

    def slow_from_url(*args, **kwargs):
        time.sleep(0.02)
        client = from_url(*args, **kwargs)
        made.append(client)
        return client

    monkeypatch.setattr(redis.Redis, "from_url", slow_from_url)
    sync_client_reset()
    start = threading.Barrier(16)
    got = []

    def ask():
        start.wait()
        got.append(sync_client())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then one client was made and everyone has it: none is collected (closing its
    # connections) under a thread still using it
    assert len(made) == 1
    assert all(client is made[0] for client in got)
    sync_client_reset()


# --- raw connections (ScriptLink) ---------------------------------------------------------------

# Sets KEYS[1] to ARGV[1] and returns ARGV[2] as a number and ARGV[1] as it came.
SET_AND_ECHO = "redis.call('SET', KEYS[1], ARGV[1]) return {tonumber(ARGV[2]), ARGV[1]}"
# Fails as ARGV[1] says: 'reply' with an error reply, 'call' by calling an unknown command;
# otherwise returns ARGV[1].
FAIL_ON_DEMAND = """
if ARGV[1] == 'reply' then return redis.error_reply('boom') end
if ARGV[1] == 'call' then return redis.call('NOSUCHCOMMAND') end
return ARGV[1]
"""


def on_database(url: str, db: int) -> str:
    return urlsplit(url)._replace(path=f"/{db}").geturl()


def as_unknown_user(url: str) -> str:
    """The url with a user and password the test Redis (no passwords) does not know."""
    parts = urlsplit(url)
    return parts._replace(netloc=f"nobody:secret@{parts.hostname}:{parts.port or 6379}").geturl()


@pytest.fixture
def redis_sync():
    """A client of the test Redis of its own, to look at what the links did."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def key(redis_sync):
    """A key nobody else uses, deleted after."""
    name = f"test:script-link:{uuid.uuid4().hex}"
    yield name
    redis_sync.delete(name)


@pytest_asyncio.fixture
async def links():
    """Makes ScriptLinks (on the test Redis unless told), each named apart, closed after."""
    made = []

    def make(script: str, *, url: str | None = None, timeout: float = 5.0) -> ScriptLink:
        name = f"test-link-{uuid.uuid4().hex[:12]}"
        link = ScriptLink(url or settings.REDIS_URL, script, name=name, timeout=timeout)
        made.append(link)
        return link

    yield make
    for link in made:
        link.close()
    await asyncio.sleep(0)  # lets the closed transports close their sockets


def link_client(redis_sync: redis.Redis, link: ScriptLink) -> dict:
    """The CLIENT LIST entry of the link's connection (open_raw names it `name`-<pid>)."""
    (found,) = [c for c in redis_sync.client_list() if c["name"] == f"{link.name}-{os.getpid()}"]
    return found


@pytest.mark.asyncio
async def test_a_link_runs_its_script_on_the_database_of_its_url(links, key, redis_sync):
    # given REDIS_URL on a database other than 0 (make test: 15), so only a SELECT puts keys there
    assert urlsplit(settings.REDIS_URL).path.strip("/") not in ("", "0")
    link = links(SET_AND_ECHO)

    # when
    reply = await link(keys=[key], args=["hello", 42])

    # then
    assert reply == [42, b"hello"]
    assert redis_sync.get(key) == b"hello"
    with redis.Redis.from_url(on_database(settings.REDIS_URL, 0)) as database_0:
        assert database_0.exists(key) == 0
    assert link.connections == 1


@pytest.mark.asyncio
async def test_after_a_script_flush_a_link_sends_its_script_once_then_calls_it_by_digest(
    links, key, redis_sync
):
    # given a link that has called its script, which Redis then forgets
    link = links(SET_AND_ECHO)
    await link(keys=[key], args=["first", 1])
    redis_sync.script_flush()
    assert redis_sync.script_exists(link.sha) == [False]

    # when it calls twice more
    after_flush = await link(keys=[key], args=["second", 2])
    sent_after_flush = link_client(redis_sync, link)["cmd"]
    loaded = redis_sync.script_exists(link.sha)
    next_call = await link(keys=[key], args=["third", 3])
    sent_next = link_client(redis_sync, link)["cmd"]

    # then the first sent the script whole (loading it), the second its digest only
    assert (after_flush, next_call) == ([2, b"second"], [3, b"third"])
    assert (sent_after_flush, loaded, sent_next) == ("eval", [True], "evalsha")
    assert redis_sync.get(key) == b"third"
    assert link.connections == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("failure", "message"), [("reply", "boom"), ("call", "Unknown Redis command")]
)
async def test_a_script_error_raises_response_error_and_the_link_keeps_its_connection(
    links, failure, message
):
    link = links(FAIL_ON_DEMAND)
    assert await link(keys=[], args=["before"]) == b"before"

    with pytest.raises(redis.exceptions.ResponseError, match=message):
        await link(keys=[], args=[failure])
    after = await link(keys=[], args=["after"])

    assert after == b"after"
    assert link.connections == 1


@pytest.mark.asyncio
async def test_a_connection_redis_closed_while_idle_is_made_again_before_the_next_call(
    links, redis_sync
):
    # given a link whose idle connection Redis has dropped (a restart, its idle timeout)
    link = links(FAIL_ON_DEMAND)
    assert await link(keys=[], args=["before"]) == b"before"
    assert redis_sync.client_kill_filter(_id=link_client(redis_sync, link)["id"]) == 1
    async with asyncio.timeout(5):
        while not link._connection[0].at_eof():  # the event loop has seen it close
            await asyncio.sleep(0.01)

    # when it calls again
    after = await link(keys=[], args=["after"])

    # then the call ran on a new connection instead of failing on the dead one
    assert after == b"after"
    assert link.connections == 2


@pytest.mark.asyncio
async def test_a_connection_lost_during_a_call_raises_and_the_next_call_connects_again(links):
    hanging_up = SilentRedis(hang_up=True)
    server = await asyncio.start_server(hanging_up.serve, "127.0.0.1", 0)
    url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/1"
    async with server:
        link = links(FAIL_ON_DEMAND, url=url)

        with pytest.raises(redis.exceptions.ConnectionError, match="Redis connection lost"):
            await link(keys=[], args=["first"])
        with pytest.raises(redis.exceptions.ConnectionError, match="Redis connection lost"):
            await link(keys=[], args=["second"])

    assert hanging_up.connections == [["CLIENT", "SELECT", "EVALSHA"]] * 2
    assert link.connections == 2


class SilentRedis:
    """A TCP server that answers a connection's handshake (CLIENT SETNAME, SELECT) as Redis does
    and nothing after: a Redis gone silent, or with `hang_up` one that closes the connection on
    the next command. Keeps the commands each connection sent."""

    def __init__(self, hang_up: bool = False):
        self.connections: list[list[str]] = []
        self.url = ""
        self.hang_up = hang_up

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands = []
        self.connections.append(commands)
        parser = hiredis.Reader()
        try:
            while data := await reader.read(1 << 16):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    commands.append(command[0].decode().upper())
                    if commands[-1] in ("CLIENT", "SELECT"):
                        writer.write(b"+OK\r\n")
                    elif self.hang_up:
                        return
        finally:
            writer.close()


@pytest_asyncio.fixture
async def silent_redis():
    fake = SilentRedis()
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    fake.url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/1"
    async with server:
        yield fake


@pytest.mark.asyncio
async def test_a_call_redis_does_not_answer_times_out_and_the_next_call_connects_again(
    links, silent_redis
):
    link = links(FAIL_ON_DEMAND, url=silent_redis.url, timeout=0.3)

    with pytest.raises(redis.exceptions.TimeoutError):
        await link(keys=[], args=["first"])
    with pytest.raises(redis.exceptions.TimeoutError):
        await link(keys=[], args=["second"])

    # each call on a connection of its own: a late answer to the first is never read as the
    # second's
    assert silent_redis.connections == [["CLIENT", "SELECT", "EVALSHA"]] * 2
    assert link.connections == 2


@pytest.mark.asyncio
async def test_open_raw_raises_when_redis_refuses_the_credentials():
    with pytest.raises(ConnectionError, match="Redis refused AUTH: WRONGPASS"):
        await open_raw(as_unknown_user(settings.REDIS_URL), name="test-refused")


@pytest.mark.asyncio
async def test_a_link_redis_refuses_raises_redis_connection_error(links):
    link = links(FAIL_ON_DEMAND, url=as_unknown_user(settings.REDIS_URL))

    with pytest.raises(redis.exceptions.ConnectionError, match="Redis refused AUTH"):
        await link(keys=[], args=["refused"])

    assert link.connections == 0


def test_resp_command_encodes_str_and_bytes_parts_with_their_byte_lengths():
    assert resp_command("SET", b"k\xff", "é", "") == (
        b"*4\r\n$3\r\nSET\r\n$2\r\nk\xff\r\n$2\r\n\xc3\xa9\r\n$0\r\n\r\n"
    )
