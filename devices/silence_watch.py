"""Device sockets gone quiet are closed: a hung link looks open from the server's side.

One watch per event loop checks all of its sockets together, every quarter of the heartbeat
timeout (at most 5 s), instead of a sleeping task per socket: 2,500 sockets per process each
re-arming a timer made thousands of timers, futures and coroutines that every young garbage
collection walked again (bench/outages), for one comparison per socket.
"""

import asyncio
import logging
import time
from typing import Protocol

from django.conf import settings

from energy_portal.per_loop import per_loop

logger = logging.getLogger(__name__)


class Watched(Protocol):
    last_frame: float  # time.monotonic() of its last sign of life
    busy: bool  # handling a message: its silence clock is stopped

    async def close_silent(self) -> None:
        """Close the socket, unless a frame came since the sweep (then it is watched again)."""


class SilenceWatch:
    def __init__(self) -> None:
        self._sockets: set[Watched] = set()
        self._task: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()  # referenced until done

    def __len__(self) -> int:
        return len(self._sockets)

    def add(self, socket: Watched) -> None:
        self._sockets.add(socket)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def remove(self, socket: Watched) -> None:
        self._sockets.discard(socket)

    async def _watch(self) -> None:
        while self._sockets:
            timeout = settings.DEVICE_HEARTBEAT_TIMEOUT
            await asyncio.sleep(min(timeout / 4, 5))
            try:
                self.sweep(time.monotonic(), timeout)
            except Exception:  # a defect: logged, and the watch goes on for the other sockets
                logger.exception("checking the device sockets for silence failed")

    def sweep(self, now: float, timeout: float) -> None:
        """Close each socket silent for more than `timeout` seconds at `now`."""
        silent = [s for s in self._sockets if not s.busy and now - s.last_frame > timeout]
        for socket in silent:
            self._sockets.discard(socket)
            task = asyncio.get_running_loop().create_task(socket.close_silent())
            self._closing.add(task)
            task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("closing a silent device socket failed", exc_info=task.exception())


silence_watch = per_loop(SilenceWatch)
