"""Database calls of many device sockets of one event loop, made together.

When a fleet reconnects at once (a server restart, the end of a grid outage), every handshake
made two hops to the thread pool (its token check, then online and its open commands), every
socket that closed one more (offline) and every power report one (bench/outages): thousands of
hops of a few milliseconds each, queued behind the pool's few threads, and the handshake rate
was a tenth of a bare websockets relay's. Here each kind of call waits in its loop's queue, and
whatever waits when a trip starts goes in that trip: one hop to the thread pool and a few
statements for all (`selectors.devices_for_sockets`, `services.devices_connected`,
`services.devices_disconnected`, `outages.services.power_events_record`), each socket handed
its own answer. One trip of a kind is under way at a time, so under load the trips grow rather
than multiply; a lone call costs one trip, as before.

A trip that fails (the database down) fails each of its calls with that error, as the call
alone would have (a batch function may also answer one call with its own error); a cancelled
caller just stops waiting for its answer.
"""

import asyncio
from collections.abc import Callable

from channels.db import database_sync_to_async

from devices import selectors, services
from energy_portal.per_loop import per_loop


class Batched:
    """Calls of `function` (a sync function of a list of items, answering a list of answers in
    their order) from this loop's sockets, made together in the thread pool."""

    def __init__(self, function: Callable[[list], list]):
        self.function = database_sync_to_async(function, thread_sensitive=False)
        self.waiting: list[tuple[object, asyncio.Future]] = []
        self.trips: asyncio.Task | None = None

    async def __call__(self, item):
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        if self.trips is None:
            self.trips = asyncio.get_running_loop().create_task(self._travel())
        return await future

    async def _travel(self) -> None:
        batch: list[tuple[object, asyncio.Future]] = []
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    answers = await self.function([item for item, _ in batch])
                except Exception as exc:  # raised again in each caller
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), answer in zip(batch, answers, strict=True):
                        if future.done():
                            continue
                        if isinstance(answer, Exception):  # this call's own failure
                            future.set_exception(answer)
                        else:
                            future.set_result(answer)
                batch = []
        finally:
            self.trips = None
            for _, future in [*batch, *self.waiting]:  # cancelled: the loop is closing
                future.cancel()
            self.waiting = []


def _lookups(tokens: list[str]) -> list:
    return selectors.devices_for_sockets(tokens=tokens)


def _connected(connections: list) -> list:
    return services.devices_connected(connections=connections)


def _disconnected(leaving: list) -> list:
    return services.devices_disconnected(leaving=leaving)


def _power_reports(reports: list) -> list:
    from outages.services import power_events_record  # outages' services import devices'

    return power_events_record(reports=reports)


# This loop's queues (a task and its futures belong to one loop).
socket_lookups = per_loop(lambda: Batched(_lookups))  # token -> (device, sensors) or None
sockets_connected = per_loop(lambda: Batched(_connected))  # (device, at) -> open command ids
sockets_disconnected = per_loop(lambda: Batched(_disconnected))  # (device, at, abrupt) -> None
# (device id, site id, state, at) -> None
power_reports = per_loop(lambda: Batched(_power_reports))
