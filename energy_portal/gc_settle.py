"""The cyclic garbage collector of a server process that holds thousands of sockets.

A socket keeps about 135 objects the collector tracks (its protocol and parser, the consumer, its
tasks, coroutines and queues) for as long as it stays open: days, for a Pi. After a burst of
handshakes (a fleet connecting at start-up, or coming back after a cut) those objects are young,
and the next generation-1 collection walks them all at whatever moment it falls: 150-390 ms of a
server's event loop at 2,500 sockets per process on the benchmark machine (bench/outages), once
right in the first second of a storm of power reports, the moment residents wait for; and each
full collection after walks every socket again (0.5-0.8 s).

So when a burst is over (`BURST_MIN` sockets opened since the last settle, then none for
`QUIET_S`), the process collects what is not frozen yet and freezes the survivors (`gc.freeze`):
the pause is taken right after the burst, and later collections walk only what is newer.

Frozen objects are still freed when nothing refers to them; only reference cycles they end up in
wait, about a dozen objects per closed socket. The first settle after `THAW_CLOSED` sockets have
closed unfreezes everything first, so its walk reclaims them (a longer pause: the whole heap);
until then what waits is bounded by those closed sockets' cycles.

Only server processes settle (`enable`, from energy_portal.asgi); elsewhere the counts are
ignored.
"""

import asyncio
import gc
import logging
import time

logger = logging.getLogger(__name__)

BURST_MIN = 200  # sockets opened since the last settle that make a burst worth settling
QUIET_S = 1.0  # no socket opened for this long: the burst is over
THAW_CLOSED = 2000  # sockets closed since the last thaw that make a walk of everything worth it


class Settler:
    """Counts this process's sockets opening and closing; settles the collector after a burst."""

    def __init__(self) -> None:
        self.enabled = False
        self.opened = 0  # since the last settle
        self.closed = 0  # since the last thaw
        self.last_opened = 0.0  # time.monotonic()
        self._watch: asyncio.Task | None = None

    def socket_opened(self) -> None:
        if not self.enabled:
            return
        self.opened += 1
        self.last_opened = time.monotonic()
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._watch_burst())

    def socket_closed(self) -> None:
        if self.enabled:
            self.closed += 1

    async def _watch_burst(self) -> None:
        while self.opened:
            await asyncio.sleep(QUIET_S / 4)
            if time.monotonic() - self.last_opened < QUIET_S:
                continue
            if self.opened >= BURST_MIN:
                try:
                    self.settle()
                except Exception:  # a defect: the collector goes on as Python's defaults have it
                    logger.exception("settling the garbage collector failed")
            self.opened = 0  # a few sockets are left to the collector's generations

    def settle(self) -> dict:
        """Collect once and freeze the survivors (all of them, after a thaw when enough sockets
        closed since the last one); what it did, also logged."""
        thaw = self.closed >= THAW_CLOSED
        started = time.perf_counter()
        if thaw:
            gc.unfreeze()
        unreachable = gc.collect()
        gc.freeze()
        done = {
            "opened": self.opened,
            "thawed": thaw,
            "unreachable": unreachable,
            "frozen": gc.get_freeze_count(),
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
        logger.info(
            "garbage collector settled after %(opened)d sockets opened (thawed first: "
            "%(thawed)s): %(unreachable)d unreachable objects, %(frozen)d frozen, in %(ms)s ms",
            done,
        )
        self.opened = 0
        if thaw:
            self.closed = 0
        return done


settler = Settler()


def enable() -> None:
    """Settle this process's collector after socket bursts (a server process)."""
    settler.enabled = True
