"""One watch per event loop closes the device sockets gone quiet (devices/silence_watch.py)."""

import asyncio
import time

import pytest

from devices.silence_watch import SilenceWatch

pytestmark = pytest.mark.asyncio


class Socket:
    def __init__(self, last_frame: float, *, busy: bool = False):
        self.last_frame = last_frame
        self.busy = busy
        self.closed = 0

    async def close_silent(self) -> None:
        self.closed += 1


async def test_a_sweep_closes_the_silent_sockets_once_and_keeps_the_others():
    watch = SilenceWatch()
    silent, talking, busy = (
        Socket(last_frame=100.0),
        Socket(last_frame=150.0),
        Socket(100.0, busy=True),
    )
    for socket in (silent, talking, busy):
        watch.add(socket)

    watch.sweep(now=161.0, timeout=60)
    watch.sweep(now=162.0, timeout=60)  # already closing: not closed again
    await asyncio.sleep(0)

    assert (silent.closed, talking.closed, busy.closed) == (1, 0, 0)
    assert len(watch) == 2
    watch._task.cancel()


async def test_the_watch_sleeps_a_quarter_of_the_timeout_and_stops_with_its_last_socket(settings):
    settings.DEVICE_HEARTBEAT_TIMEOUT = 0.2
    watch = SilenceWatch()
    quiet = Socket(last_frame=time.monotonic())
    watch.add(quiet)

    await asyncio.sleep(0.4)  # silent past 0.2 s, seen within a quarter of it

    assert quiet.closed == 1
    assert len(watch) == 0
    await asyncio.sleep(0.1)
    assert watch._task.done()  # nothing left to watch
