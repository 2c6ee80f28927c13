"""Commands on their way to the device sockets of this process: one message per batch of
commands for every server process, rather than a channel-layer message per device.

Senders (`services.commands_issue`, `command_issue`) PUBLISH, once the commands are committed,
one Redis message per `services.COMMANDS_PER_MESSAGE` commands on one channel
(`groups.commands_group`): a JSON list of `[device id, command id, frame, expires (epoch s)]`.
Each server process hears it through its live hub's connection (`energy_portal.live_hub`: one
subscription for all its device sockets), picks the commands of the devices connected to it,
and hands each to its socket (`DeviceConsumer.command_arrived`), which writes the frame at once
and notes it for the batched sent marks (`sent_marks`). A demand-response event's thousands of
commands cost the worker one round trip to Redis and each process one message per
`COMMANDS_PER_MESSAGE`, instead of a channel-layer send (four Redis round trips) and a wake-up
of the receiving process per device (bench/dr).

Why no command is lost on the way (it is pending in the database until marked sent):
- A device connected to another process, or to none: not here; ignored. Its next socket reads
  its open commands at connect.
- A socket registers here (after its handshake) before it reads its open commands: a command
  committed before that read is read; one committed after is published after, while the socket
  is registered.
- This process not subscribed when a command is published (its first device socket is
  subscribing, or the connection to Redis was lost and is being made again): PUB/SUB keeps
  nothing for it. Each time Redis confirms the subscription, the inbox reads the pending
  commands of every device connected here (`selectors.commands_pending`) and hands them out: a
  command published before the confirmation was committed before it, so the read finds it.
- A socket gets each command id once (`DeviceConsumer.delivered`), whichever way it came.
"""

import asyncio
import json
import logging
from typing import Protocol

from channels.db import database_sync_to_async

from devices import selectors, services
from devices.groups import commands_group
from energy_portal.live_hub import LiveHub, live_hub
from energy_portal.per_loop import per_loop

logger = logging.getLogger(__name__)

CATCH_UP_RETRY_MAX_S = 5.0


class Recipient(Protocol):
    def command_arrived(self, command_id: str, frame: str, expires: float) -> None:
        """Take a command for the device; must not wait."""


class CommandInbox:
    """This event loop's device sockets by device id, and the one subscription that brings
    their commands (see module)."""

    def __init__(self) -> None:
        self.sockets: dict[int, Recipient] = {}
        self.hub: LiveHub | None = None
        self.catching_up: asyncio.Task | None = None
        self.catch_up_again = False

    def add(self, device_id: int, socket: Recipient) -> None:
        """Hand `socket` its device's commands from now on (a socket of the same device here
        before is replaced). Never waits: see the module for a subscription still pending."""
        self.sockets[device_id] = socket
        if self.hub is None:
            self.hub = live_hub()
            self.hub.watch(self, [commands_group()])

    def remove(self, device_id: int, socket: Recipient) -> None:
        """Stop handing commands to `socket` (not to its successor); the last one gone, the
        subscription goes too."""
        if self.sockets.get(device_id) is socket:
            del self.sockets[device_id]
        if not self.sockets and self.hub is not None:
            self.hub.leave(self, [commands_group()])
            self.hub = None

    def deliver(self, text: str) -> None:
        """A published batch of commands (from the hub): those of devices connected here go to
        their sockets."""
        try:
            entries = json.loads(text)
            sockets = self.sockets
            for device_id, command_id, frame, expires in entries:
                socket = sockets.get(device_id)
                if socket is not None:
                    socket.command_arrived(command_id, frame, expires)
        except Exception:  # a defect: the hub's connection (and the live feed) must go on
            logger.exception("cannot hand out a batch of commands (%d chars)", len(text))

    def subscribed(self, group: str) -> None:
        """Redis confirmed the subscription (the first time, or after a reconnect): what was
        published before may not have been heard here. Read it from the database."""
        if self.catching_up is not None and not self.catching_up.done():
            self.catch_up_again = True  # once the current read is done: it may predate this
            return
        self.catching_up = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        pause = 0.1
        while self.sockets:
            self.catch_up_again = False
            sockets = dict(self.sockets)
            try:
                pending = await database_sync_to_async(
                    selectors.commands_pending, thread_sensitive=False
                )(device_ids=list(sockets))
            except Exception as exc:  # the database down, as a rule: again, less and less often
                logger.warning("cannot read the pending commands to catch up (%s); again", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, CATCH_UP_RETRY_MAX_S)
                continue
            for command in pending:
                socket = sockets[command.device_id]
                if self.sockets.get(command.device_id) is socket:  # still connected here
                    _, command_id, frame, expires = services.command_entry(command)
                    socket.command_arrived(command_id, frame, expires)
            if not self.catch_up_again:
                return


# This event loop's inbox (one per server process; tests run a loop each).
command_inbox = per_loop(CommandInbox)
