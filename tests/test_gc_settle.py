"""The garbage collector settled after a burst of sockets (energy_portal.gc_settle): the sockets'
objects frozen out of later collections once the burst is over, and what they leave in
reference cycles reclaimed after enough of them closed."""

import asyncio
import gc
import weakref

import pytest

from energy_portal import gc_settle

pytestmark = pytest.mark.asyncio


class Held:
    """A socket's object standing in: it refers to itself, as consumers and their tasks do."""

    def __init__(self):
        self.me = self


async def burst_over(settler: gc_settle.Settler, timeout: float = 2.0) -> None:
    """Wait until the settler's watch has ended (the burst settled or forgotten)."""
    async with asyncio.timeout(timeout):
        while settler._watch is not None and not settler._watch.done():
            await asyncio.sleep(0.01)


async def test_a_burst_of_sockets_is_frozen_out_of_later_collections_once_over(gc_settler):
    # given: the sockets of a burst, and a reference cycle nobody holds any more
    sockets = [Held() for _ in range(3)]
    lost = Held()
    gone = weakref.ref(lost)
    del lost
    before = gc.get_freeze_count()
    # when: three sockets open, then none for longer than QUIET_S
    for _ in sockets:
        gc_settler.socket_opened()
    await burst_over(gc_settler)
    # then: the garbage was collected first and the sockets' objects are frozen
    assert gone() is None
    assert gc.get_freeze_count() > before
    young = {id(o) for o in gc.get_objects()}
    assert not any(id(s) in young for s in sockets)
    assert gc_settler.opened == 0


async def test_no_settle_while_sockets_keep_opening(gc_settler, monkeypatch):
    monkeypatch.setattr(gc_settle, "QUIET_S", 0.5)
    gc_settler.socket_opened()
    for _ in range(6):  # a socket every 20 ms: never a quiet half second
        await asyncio.sleep(0.02)
        gc_settler.socket_opened()
    assert gc.get_freeze_count() == 0
    assert gc_settler.opened == 7
    await burst_over(gc_settler)
    assert gc.get_freeze_count() > 0
    assert gc_settler.opened == 0


async def test_a_few_sockets_are_left_to_the_collectors_generations(gc_settler):
    socket = Held()
    gc_settler.socket_opened()
    gc_settler.socket_opened()  # two: under BURST_MIN
    await burst_over(gc_settler)
    assert gc.get_freeze_count() == 0
    assert id(socket) in {id(o) for o in gc.get_objects()}
    assert gc_settler.opened == 0


async def a_frozen_socket_closed(settler: gc_settle.Settler) -> weakref.ref:
    """A settled burst, one of whose sockets then closes, leaving its cycle behind: a weak
    reference to it."""
    socket = Held()
    closing = weakref.ref(socket)
    for _ in range(3):
        settler.socket_opened()
    await burst_over(settler)
    del socket
    settler.socket_closed()
    return closing


async def test_cycles_of_frozen_sockets_are_reclaimed_after_enough_closed(gc_settler):
    # given: a settled burst, one of whose sockets then closes, leaving its cycle behind
    closing = await a_frozen_socket_closed(gc_settler)
    gc.collect()
    assert closing() is not None, "a frozen cycle waits for a thaw"
    # when: a second socket closes (THAW_CLOSED), and the next burst is over
    gc_settler.socket_closed()
    for _ in range(3):
        gc_settler.socket_opened()
    await burst_over(gc_settler)
    # then: the settle thawed everything first and reclaimed the cycle
    assert closing() is None
    assert gc_settler.closed == 0
    assert gc.get_freeze_count() > 0


async def test_under_thaw_closed_a_settle_walks_only_what_is_not_frozen(gc_settler):
    closing = await a_frozen_socket_closed(gc_settler)  # one closed, under THAW_CLOSED
    for _ in range(3):
        gc_settler.socket_opened()
    await burst_over(gc_settler)
    assert closing() is not None
    assert gc_settler.closed == 1


async def test_a_disabled_settler_counts_nothing_and_never_freezes(monkeypatch):
    monkeypatch.setattr(gc_settle, "QUIET_S", 0.0)
    settler = gc_settle.Settler()
    for _ in range(500):
        settler.socket_opened()
        settler.socket_closed()
    await asyncio.sleep(0.05)
    assert (settler.opened, settler.closed, settler._watch) == (0, 0, None)
    assert gc.get_freeze_count() == 0


async def test_a_failing_settle_is_logged_and_the_next_burst_is_watched_again(
    gc_settler, monkeypatch, caplog
):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(gc_settler, "settle", broken)
    for _ in range(3):
        gc_settler.socket_opened()
    await burst_over(gc_settler)
    assert "settling the garbage collector failed" in caplog.text
    assert gc_settler.opened == 0
    gc_settler.socket_opened()
    assert not gc_settler._watch.done()
