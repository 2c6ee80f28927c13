"""Commands written to their device sockets and not yet recorded as sent, per event loop.

A socket writes a command's frame as soon as its channel message arrives (the message carries
the frame, `services.command_message`) and notes the id here; a writer task records every noted
id as sent in one statement (`services.commands_mark_sent`) about every `WRITE_EVERY_S`, or at
once when `WRITE_AT` ids wait. So a demand-response event's thousands of commands cost a few
UPDATEs per server process instead of a SELECT and an UPDATE per device on the way to the socket.

A process that stops between the write to the socket and the UPDATE leaves those commands
pending: each is sent again when its device reconnects (its open commands), which the device
may then see twice; a command is still sent at most once per socket, and a device answers
each command id once (a second answer for a finished command changes nothing).
"""

import asyncio
import contextlib
import logging

from channels.db import database_sync_to_async

from devices import services
from energy_portal.per_loop import per_loop

logger = logging.getLogger(__name__)

WRITE_EVERY_S = 0.1
WRITE_AT = 500  # ids waiting: written without waiting for the period's end


class WriteBehind:
    """Items noted in `pending` (a set or a list), written by `write()` in batches: a writer
    task runs while any wait, writing about every `WRITE_EVERY_S`, or at once when `WRITE_AT`
    wait. Shared by the sent marks and the command results (`devices.command_results`)."""

    write_every_s = WRITE_EVERY_S
    write_at = WRITE_AT

    def __init__(self, pending) -> None:
        self.pending = pending
        self.writer: asyncio.Task | None = None
        self.full = asyncio.Event()

    def _noted(self) -> None:
        """Start the writer, or wake it when a batch is full: call after adding to `pending`."""
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write_while_pending())
        elif len(self.pending) >= self.write_at:
            self.full.set()

    async def _write_while_pending(self) -> None:
        try:
            while self.pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.full.wait(), self.write_every_s)
                self.full.clear()
                await self.write()
        finally:
            self.writer = None

    async def write(self) -> None:
        raise NotImplementedError


class SentMarks(WriteBehind):
    def __init__(self) -> None:
        super().__init__(set())

    def note(self, command_id: str) -> None:
        """Note that the command's frame was written to its socket; recorded with the next
        batch."""
        self.pending.add(command_id)
        self._noted()

    async def write(self) -> None:
        """Record the noted ids as sent now (the writer does this every `WRITE_EVERY_S`). A
        failed write (the database down) keeps them for the next one."""
        ids, self.pending = self.pending, set()
        if not ids:
            return
        try:
            await database_sync_to_async(services.commands_mark_sent, thread_sensitive=False)(
                command_ids=sorted(ids)
            )
        except Exception as exc:
            self.pending |= ids
            logger.warning("cannot mark %d commands sent; trying again (%s)", len(ids), exc)
            await asyncio.sleep(1.0)  # not a retry every period while the database is down


# The running event loop's marks (a task belongs to one loop).
sent_marks = per_loop(SentMarks)
