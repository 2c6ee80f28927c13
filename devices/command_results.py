"""Devices' results for their commands, recorded together per event loop.

A socket that gets a `command_result` frame notes it here and waits for its answer; a writer task
records every noted result in one statement (`services.commands_complete`) about every
`WRITE_EVERY_S`, or at once when `WRITE_AT` wait, and tells each socket whether its command was
one of its device's (if not, the device gets an error frame). So the thousands of devices that
answer a demand-response event's commands in the same second cost a few statements per server
process, instead of a thread-pool trip with a SELECT, an UPDATE and a Redis round trip each,
which competed with the writing of the event's other commands (bench/dr).

A batch that cannot be written (the database down, a defect; an OperationalError is tried
`ATTEMPTS` times first) fails every socket waiting for it, as its own write would have: each
closes with 1011 and its device answers again on its next socket (the command is still open).
"""

import asyncio
import logging

from channels.db import database_sync_to_async

from django.db import OperationalError

from devices import services
from devices.sent_marks import WriteBehind
from energy_portal.per_loop import per_loop

logger = logging.getLogger(__name__)

WRITE_EVERY_S = 0.1
WRITE_AT = 500  # results waiting: written without waiting for the period's end
ATTEMPTS = 3  # a batch failing with an OperationalError is tried this often before failing


def _retrieved(future: asyncio.Future) -> None:
    """A socket that stopped waiting (it closed) leaves its answer unheard."""
    if not future.cancelled():
        future.exception()


class CommandResults(WriteBehind):
    write_every_s = WRITE_EVERY_S
    write_at = WRITE_AT

    def __init__(self) -> None:
        super().__init__([])  # (command id, device id, status, detail, future)

    def note(self, command_id: str, device_id: int, status: str, detail: str) -> asyncio.Future:
        """Record the result with the next batch; the future says whether the command is one of
        the device's (`status` must be one of `services.COMMAND_RESULTS`)."""
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self.pending.append((command_id, device_id, status, detail, future))
        self._noted()
        return future

    async def write(self) -> None:
        """Record the noted results now (the writer does this every `WRITE_EVERY_S`)."""
        batch, self.pending = self.pending, []
        if not batch:
            return
        complete = database_sync_to_async(services.commands_complete, thread_sensitive=False)
        try:
            for attempt in range(ATTEMPTS):
                try:
                    found = await complete(results=[entry[:4] for entry in batch])
                    break
                except OperationalError as exc:  # a deadlock, a lost connection: again, a few times
                    if attempt == ATTEMPTS - 1:
                        raise
                    logger.warning("cannot record %d command results (%s); again", len(batch), exc)
                    await asyncio.sleep(0.1 * (attempt + 1))
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for command_id, *_, future in batch:
            if not future.done():
                future.set_result(command_id in found)


# The running event loop's results (a task belongs to one loop).
command_results = per_loop(CommandResults)
