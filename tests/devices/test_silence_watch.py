"""One watch per event loop closes the device sockets gone quiet (devices/silence_watch.py)."""

import asyncio
import time
from types import SimpleNamespace

import pytest

from devices.consumers import CLOSE_SILENT, DeviceConsumer
from devices.silence_watch import SilenceWatch, silence_watch

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


async def test_the_watch_looks_every_quarter_of_the_timeout_and_stops_with_its_last_socket(
    settings,
):
    # Silent for more than 0.4 s: seen at the sweep at 0.5 s; sweeping only once per timeout
    # would see it at 0.8 s.
    settings.DEVICE_HEARTBEAT_TIMEOUT = 0.4
    watch = SilenceWatch()
    quiet = Socket(last_frame=time.monotonic())
    watch.add(quiet)

    await asyncio.sleep(0.3)
    closed_early = quiet.closed
    await asyncio.sleep(0.4)

    assert (closed_early, quiet.closed) == (0, 1)
    assert len(watch) == 0
    await asyncio.sleep(0.15)
    assert watch._task.done()  # nothing left to watch


class Failing(Socket):
    async def close_silent(self) -> None:
        raise RuntimeError("boom")


async def test_a_socket_that_fails_to_close_does_not_stop_the_watch(settings, caplog):
    settings.DEVICE_HEARTBEAT_TIMEOUT = 0.2
    watch = SilenceWatch()
    failing = Failing(last_frame=time.monotonic())
    later = Socket(last_frame=time.monotonic() + 0.3)
    watch.add(failing)
    watch.add(later)

    await asyncio.sleep(0.8)

    assert later.closed == 1
    assert "closing a silent device socket failed" in caplog.text


async def test_a_socket_that_spoke_since_the_sweep_stays_open_and_watched(settings):
    settings.DEVICE_HEARTBEAT_TIMEOUT = 60
    closed = []

    class Talking:  # the attributes DeviceConsumer.close_silent reads
        closing = busy = False
        last_frame = time.monotonic()
        device = SimpleNamespace(uid="pi-0001")

        async def close(self, code=None):
            closed.append(code)

    socket = Talking()
    await DeviceConsumer.close_silent(socket)  # swept just before its last frame

    assert closed == []
    assert socket in silence_watch()._sockets
    silence_watch().remove(socket)
    socket.last_frame -= 61  # silent after all
    await DeviceConsumer.close_silent(socket)
    assert closed == [CLOSE_SILENT]
