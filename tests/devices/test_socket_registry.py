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


@pytest.fixture
def hset_calls(monkeypatch):
    """Every HSET the asyncio client makes; while `refuse` holds True, each one fails."""
    calls: list[dict] = []
    refuse = [False]
    hset = redis.asyncio.Redis.hset

    async def counted_hset(self, name, *args, mapping=None, **kwargs):
        calls.append(dict(mapping or {}))
        if refuse[0]:
            raise redis.exceptions.ConnectionError("No connection available.")
        return await hset(self, name, *args, mapping=mapping, **kwargs)

    monkeypatch.setattr(redis.asyncio.Redis, "hset", counted_hset)
    monkeypatch.setattr(socket_registry, "WRITE_EVERY_S", 0.05)
    return calls, refuse


def stored() -> dict[int, float]:
    return {int(k): float(v) for k, v in sync_client().hgetall(LAST_SEEN_KEY).items()}


async def test_many_devices_noted_meanwhile_are_written_in_one_call(hset_calls):
    calls, _ = hset_calls
    notes = SeenNotes()
    for device_id in range(1, 201):
        notes.note(device_id, at=1000.0 + device_id)
    notes.note(7, at=5000.0)  # the same device again: the newer note

    await asyncio.sleep(0.2)

    assert len(calls) == 1
    assert stored() == {d: (5000.0 if d == 7 else 1000.0 + d) for d in range(1, 201)}
    assert notes.writer is None  # nothing pending: no task left waiting


async def test_notes_kept_from_a_failed_write_go_with_the_next_and_newer_ones_win(hset_calls):
    calls, refuse = hset_calls
    notes = SeenNotes()
    refuse[0] = True
    notes.note(1, at=100.0)
    notes.note(2, at=100.0)
    await asyncio.sleep(0.08)  # the first write failed
    assert calls and stored() == {}

    refuse[0] = False
    notes.note(1, at=200.0)  # device 1 spoke again since
    await asyncio.sleep(0.15)

    assert stored() == {1: 200.0, 2: 100.0}
    assert notes.pending == {}


async def test_a_note_after_the_writer_stopped_starts_a_new_one(hset_calls):
    calls, _ = hset_calls
    notes = SeenNotes()
    notes.note(1, at=100.0)
    await asyncio.sleep(0.15)
    assert notes.writer is None

    notes.note(2, at=300.0)
    await asyncio.sleep(0.15)

    assert len(calls) == 2
    assert stored() == {1: 100.0, 2: 300.0}


async def test_each_event_loop_has_its_own_notes():
    here = socket_registry.seen_notes()
    assert socket_registry.seen_notes() is here

    async def elsewhere():
        return socket_registry.seen_notes()

    other = await asyncio.to_thread(asyncio.run, elsewhere())
    assert other is not here
