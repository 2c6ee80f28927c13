"""What-if variants of the portal's ASGI app, to measure a suspected bottleneck (config suffixes).

`BENCH_WHATIF=nolock` (config suffix `+nolock`): channels_redis' pub/sub layer sends every
`group_send` through one `asyncio.Lock` per Redis shard, so PUBLISHes go one at a time, each
waiting for Redis's reply before the next may start; throughput is then 1 / (round trip + event-loop
turn), whatever the CPU. This variant publishes without the lock (the client's connection pool
handles concurrency). Only the benchmark's server process is patched; the portal's code is not.

`nogc`: the cyclic garbage collector off (after freezing the start-up heap). (The former
`gcfreeze`, start-up heap frozen and young collections ten times rarer, is what every server
process does now: see `energy_portal/asgi.py`.)

`nobatch`: every live message its own frame to a browser, as before messages that wait for a
socket together left as one (`energy_portal.live_hub.BATCH_MAX` = 1).

`probe`: nothing changed, only watched. The event loop's lateness (a 10 ms timer), the cyclic
collector's pauses (`gc.callbacks`) and, whenever the loop is late by more than 30 ms, the main
thread's stack sampled every 5 ms from a watchdog thread: what ran while readings waited. Each
stall is one `probe:` line in the server's log; `bench.live.run` sums them up.
"""

import asyncio
import gc
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter

from energy_portal.asgi import application  # sets Django up first


def _publish_without_lock() -> None:
    from channels_redis import pubsub

    async def publish(self, channel, message):
        self._ensure_redis()
        await self._redis.publish(channel, message)

    pubsub.RedisSingleShardConnection.publish = publish


def _no_gc() -> None:
    """Upper bound of what the cyclic garbage collector costs the live path: none at all."""
    gc.freeze()
    gc.disable()


def _no_batch() -> None:
    from energy_portal import live_hub

    live_hub.BATCH_MAX = 1


class _Probe:
    TICK_S = 0.010
    LATE_S = 0.030

    def __init__(self) -> None:
        self.tick = time.monotonic()
        self.main = threading.get_ident()
        self.gc_started = 0.0
        self.gc_pauses: list[tuple[float, int, float]] = []  # (end, generation, seconds)
        self.samples: list[tuple[float, str]] = []  # (when, stack)
        self.lock = threading.Lock()
        self.started = False
        gc.callbacks.append(self._gc)
        threading.Thread(target=self._watch, name="probe-watchdog", daemon=True).start()

    def _gc(self, phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self.gc_started = now
        else:
            self.gc_pauses.append((time.monotonic(), info["generation"], now - self.gc_started))
            del self.gc_pauses[:-200]
            if info["generation"] == 2:
                print(
                    f"probe: {time.strftime('%H:%M:%S')} full collection "
                    f"{(now - self.gc_started) * 1000:.0f} ms, {info['collected']} collected",
                    file=sys.stderr,
                    flush=True,
                )

    def _watch(self) -> None:
        frames = sys._current_frames
        while True:
            time.sleep(0.005)
            now = time.monotonic()
            # (not before the first request starts the beat: nothing would clear the samples)
            if self.started and now - self.tick > self.LATE_S:
                frame = frames().get(self.main)
                if frame is not None:
                    stack = traceback.extract_stack(frame)[-12:]
                    text = " < ".join(
                        f"{_short(f.filename)}:{f.lineno}:{f.name}" for f in reversed(stack)
                    )
                    with self.lock:
                        self.samples.append((now, text))

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.TICK_S)
            now = time.monotonic()
            late = loop.time() - before - self.TICK_S
            self.tick = now
            with self.lock:
                samples, self.samples = self.samples, []
            if late > self.LATE_S:
                since = now - late - self.TICK_S
                samples = [text for at, text in samples if at >= since]
                pauses = [(g, s) for end, g, s in self.gc_pauses if end >= since]
                gc_ms = sum(s for _, s in pauses) * 1000
                top = Counter(samples).most_common(3)
                print(
                    f"probe: {time.strftime('%H:%M:%S')} late {late * 1000:.0f} ms; "
                    f"gc {gc_ms:.0f} ms in "
                    f"{len(pauses)} ({','.join(str(g) for g, _ in pauses)}); "
                    f"{len(samples)} samples: " + " || ".join(f"{n}x {text}" for text, n in top),
                    file=sys.stderr,
                    flush=True,
                )

    def census(self) -> None:
        """SIGUSR1: what the collector tracks, by type (a stall of its own; on demand only)."""
        objects = gc.get_objects()
        top = Counter(type(o).__qualname__ for o in objects).most_common(25)
        print(
            f"probe: {time.strftime('%H:%M:%S')} census {len(objects)} tracked, "
            f"{gc.get_freeze_count()} frozen, counts {gc.get_count()}: "
            + ", ".join(f"{name} {n}" for name, n in top),
            file=sys.stderr,
            flush=True,
        )

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.tick = time.monotonic()
            loop = asyncio.get_running_loop()
            self.beat = loop.create_task(self._beat())
            loop.add_signal_handler(signal.SIGUSR1, self.census)


def _short(filename: str) -> str:
    parts = filename.split("/")
    return "/".join(parts[-2:])


def _probe() -> None:
    global application
    probe = _Probe()
    inner = application

    async def probed(scope, receive, send):
        probe.start()
        return await inner(scope, receive, send)

    application = probed


PATCHES = {
    "nolock": _publish_without_lock,
    "nogc": _no_gc,
    "nobatch": _no_batch,
    "probe": _probe,
}
for name in filter(None, os.environ.get("BENCH_WHATIF", "").split(",")):
    PATCHES[name]()
__all__ = ["application"]
