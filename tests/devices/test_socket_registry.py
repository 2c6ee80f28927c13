"""Signs of life gathered per event loop and written to Redis together (real Redis)."""

import asyncio

import pytest
import redis.asyncio
import redis.exceptions

from devices import socket_registry
from devices.socket_registry import LAST_SEEN_KEY, SeenNotes
from energy_portal.redis_client import sync_client

pytestmark = pytest.mark.asyncio


@pytest.fixture(autouse=True)
def clean_last_seen():
    sync_client().delete(LAST_SEEN_KEY)
    yield
    sync_client().delete(LAST_SEEN_KEY)


class Writes:
    """Every HSET the asyncio client makes. While `refusing`, each fails once `release` is set
    (until then it waits: a write in flight)."""

    def __init__(self):
        self.calls: list[dict] = []
        self.refusing = False
        self.release = asyncio.Event()

    def install(self, monkeypatch):
        hset = redis.asyncio.Redis.hset

        async def counted_hset(client, name, *args, mapping=None, **kwargs):
            self.calls.append(dict(mapping or {}))
            if self.refusing:
                await self.release.wait()
                raise redis.exceptions.ConnectionError("No connection available.")
            return await hset(client, name, *args, mapping=mapping, **kwargs)

        monkeypatch.setattr(redis.asyncio.Redis, "hset", counted_hset)


@pytest.fixture
def writes(monkeypatch):
    writes = Writes()
    writes.install(monkeypatch)
    monkeypatch.setattr(socket_registry, "WRITE_EVERY_S", 0.01)
    return writes


async def until(condition, timeout: float = 10) -> None:
    """Wait for `condition()` to hold (generous: the machine may be busy)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def stored() -> dict[int, float]:
    return {int(k): float(v) for k, v in sync_client().hgetall(LAST_SEEN_KEY).items()}


async def test_many_devices_noted_meanwhile_are_written_in_one_call(writes):
    notes = SeenNotes()
    for device_id in range(1, 201):
        notes.note(device_id, at=1000.0 + device_id)
    notes.note(7, at=5000.0)  # the same device again: the newer note

    await until(lambda: notes.writer is None)  # nothing pending: no task left waiting

    assert len(writes.calls) == 1
    assert stored() == {d: (5000.0 if d == 7 else 1000.0 + d) for d in range(1, 201)}


async def test_notes_kept_from_a_failed_write_go_with_the_next_and_newer_ones_win(writes):
    notes = SeenNotes()
    writes.refusing = True
    notes.note(1, at=100.0)
    notes.note(2, at=100.0)
    await until(lambda: len(writes.calls) == 1)  # the write is in flight
    notes.note(1, at=200.0)  # device 1 speaks again meanwhile
    writes.refusing = False
    writes.release.set()  # the write in flight fails

    await until(lambda: notes.writer is None)

    assert len(writes.calls) == 2
    assert writes.calls[1] == {1: "200.000", 2: "100.000"}
    assert stored() == {1: 200.0, 2: 100.0}


async def test_a_note_after_the_writer_stopped_starts_a_new_one(writes):
    notes = SeenNotes()
    notes.note(1, at=100.0)
    await until(lambda: notes.writer is None)

    notes.note(2, at=300.0)
    await until(lambda: notes.writer is None)

    assert len(writes.calls) == 2
    assert stored() == {1: 100.0, 2: 300.0}


async def test_an_unforeseen_failure_keeps_the_notes_for_the_next_write(writes, monkeypatch):
    notes = SeenNotes()
    monkeypatch.setattr(socket_registry, "async_client", _failing_once(socket_registry))
    notes.note(1, at=100.0)

    await until(lambda: notes.writer is None)

    assert stored() == {1: 100.0}


def _failing_once(module):
    """`module.async_client`, raising a non-Redis error the first time it is called."""
    real, calls = module.async_client, []

    def client():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("unforeseen")
        return real()

    return client


async def test_each_event_loop_has_its_own_notes():
    here = socket_registry.seen_notes()
    assert socket_registry.seen_notes() is here

    async def elsewhere():
        return socket_registry.seen_notes()

    other = await asyncio.to_thread(asyncio.run, elsewhere())
    assert other is not here
