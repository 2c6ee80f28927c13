"""One Redis PUB/SUB connection per process for the live groups its browser sockets watch.

Senders PUBLISH a live message's text on the group's channel (`realtime.live_channel`). The hub
of each process subscribes to a group while at least one of its sockets watches it, and hands
each message straight to those sockets' outboxes: no per-socket subscription, no task per
message and socket, no re-encoding.

- A socket joins only the groups `devices.selectors.live_groups` allows it; the hub knows nothing
  of users.
- Each socket has a bounded `Outbox`. Messages that wait for a socket together leave as one
  frame, a JSON array of them in order (at most `BATCH_MAX`): under load a socket's frames grow
  rather than multiply, and a socket that keeps up gets every message as a frame of its own.
- A socket that falls `OUTBOX_LIMIT` messages behind (a
  browser that stopped reading, a link too slow for its feed) stops getting messages and is
  closed by its consumer; the browser reconnects and starts afresh. Memory per socket is bounded
  by the outbox and by the server's own write buffer (Uvicorn stops writing past its high-water
  mark).
- A lost connection is logged and made again with growing pauses (at most `RECONNECT_MAX_S`),
  subscribing to every group watched at that moment. Messages published meanwhile are lost for
  the live feed only (readings are in the ingest stream all the same).
- The hub holds its connection exactly while its process has sockets watching something: the
  last one leaving closes it. On shutdown the server closes the sockets, so the hub goes too.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import hiredis

from django.conf import settings

from energy_portal.per_loop import per_loop
from energy_portal.realtime import live_channel
from energy_portal.redis_client import open_raw, resp_command

logger = logging.getLogger(__name__)

OUTBOX_LIMIT = 500
BATCH_MAX = 100  # messages in one frame to a socket
SUBSCRIBE_TIMEOUT_S = 5.0
RECONNECT_MAX_S = 5.0
# No byte from Redis for this long: ask (PING); for twice as long: the connection is dead.
QUIET_S = 15.0


class Viewer(Protocol):
    """A socket watching live groups (or another listener: `devices.command_inbox`). One may
    also have `subscribed(group)`, called each time Redis confirms the group's subscription,
    the first and after every reconnect: messages published while it was not subscribed were
    not heard."""

    def deliver(self, text: str) -> None:
        """Take one live message's text; must not wait."""


class Outbox:
    """Live messages on their way to one socket, in order, at most `limit` of them.

    `put` never waits. Once the socket is `limit` messages behind, the box overflows for good:
    what it holds is dropped, `put` refuses everything, and `drain` returns.
    """

    def __init__(self, limit: int | None = None):
        self.limit = OUTBOX_LIMIT if limit is None else limit
        self.overflowed = False
        self._texts: deque[str] = deque()
        self._wakeup: asyncio.Future | None = None

    def put(self, text: str) -> bool:
        """Queue `text`; False once the box has overflowed."""
        if self.overflowed:
            return False
        if len(self._texts) >= self.limit:
            self.overflowed = True
            self._texts.clear()
        else:
            self._texts.append(text)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        return not self.overflowed

    async def drain(self, send: Callable[[str], Awaitable[None]]) -> None:
        """Send what is queued, in order, as it comes, until the box overflows: a message alone
        as it is, several waiting as one JSON array of up to `BATCH_MAX` of them."""
        texts = self._texts
        loop = asyncio.get_running_loop()
        while not self.overflowed:
            if len(texts) > 1 and BATCH_MAX > 1:
                batch = [texts.popleft() for _ in range(min(len(texts), BATCH_MAX))]
                await send("[" + ",".join(batch) + "]")
            elif texts:
                await send(texts.popleft())
            else:
                self._wakeup = loop.create_future()
                await self._wakeup


class LiveHub:
    """This process's subscriptions to live groups, shared by all its sockets (see module)."""

    def __init__(self, url: str):
        self.url = url
        self._viewers: dict[str, set[Viewer]] = {}  # group: sockets watching it here
        self._groups: dict[bytes, str] = {}  # channel: group
        self._confirmed: set[str] = set()  # groups Redis confirmed on this connection
        self._confirming: dict[str, list[asyncio.Future]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._runner: asyncio.Task | None = None
        self.connections = 0  # made so far (the first, then one per reconnect)

    @property
    def groups(self) -> list[str]:
        return list(self._viewers)

    async def join(self, viewer: Viewer, groups: list[str]) -> None:
        """Deliver `groups`' messages to `viewer` from now on: returns once Redis has confirmed
        every subscription, so a message published after that reaches it."""
        self.watch(viewer, groups)
        waits = [self._confirmation(group) for group in groups if group not in self._confirmed]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), SUBSCRIBE_TIMEOUT_S)
            except BaseException:
                self.leave(viewer, groups)
                raise

    def watch(self, viewer: Viewer, groups: list[str]) -> None:
        """`join` without waiting for Redis to confirm: messages reach `viewer` once it has;
        `viewer.subscribed(group)` says when, if the viewer has it."""
        for group in groups:
            watching = self._viewers.get(group)
            if watching is None:
                watching = self._viewers[group] = set()
                self._groups[live_channel(group).encode()] = group
                if self._writer is not None:
                    self._writer.write(resp_command("SUBSCRIBE", live_channel(group)))
            watching.add(viewer)
        if self._runner is None and self._viewers:
            self._runner = asyncio.create_task(self._run(), name="live hub")

    def leave(self, viewer: Viewer, groups: list[str]) -> None:
        """Stop delivering to `viewer`; a group nobody here watches any more is unsubscribed."""
        for group in groups:
            watching = self._viewers.get(group)
            if watching is None or viewer not in watching:
                continue
            watching.discard(viewer)
            if watching:
                continue
            del self._viewers[group]
            channel = live_channel(group)
            del self._groups[channel.encode()]
            self._confirmed.discard(group)
            self._confirming.pop(group, None)
            if self._writer is not None:
                self._writer.write(resp_command("UNSUBSCRIBE", channel))
        if not self._viewers and self._runner is not None:
            self._runner.cancel()  # closes the connection
            self._runner = None

    def _confirmation(self, group: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._confirming.setdefault(group, []).append(future)
        return future

    def _confirm(self, group: str) -> None:
        self._confirmed.add(group)
        for future in self._confirming.pop(group, ()):
            if not future.done():
                future.set_result(None)
        for viewer in tuple(self._viewers.get(group, ())):
            subscribed = getattr(viewer, "subscribed", None)
            if subscribed is not None:
                subscribed(group)

    async def _run(self) -> None:
        """Hold the connection while anything is watched; make it again when it is lost."""
        pause = 0.1
        while self._viewers:
            try:
                reader, writer, parser = await open_raw(
                    self.url, name="ep-live-hub", select_db=False
                )
            except OSError as exc:  # refused, timed out, AUTH refused (ConnectionError)
                logger.warning("live hub cannot reach Redis (%s); again in %.1f s", exc, pause)
            else:
                pause = 0.1
                try:
                    await self._serve(reader, writer, parser)
                    reason = "Redis closed it"
                except (OSError, hiredis.ProtocolError) as exc:
                    reason = str(exc) or type(exc).__name__
                finally:
                    writer.close()
                    if self._writer is writer:
                        self._writer = None
                        self._confirmed.clear()
                if self._viewers:
                    logger.warning(
                        "live hub lost its Redis connection (%s); resubscribing %d groups",
                        reason,
                        len(self._viewers),
                    )
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_MAX_S)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: hiredis.Reader
    ) -> None:
        """Subscribe to every watched group and hand out what arrives until the connection
        ends."""
        if not self._viewers:  # all left while it connected
            return
        self.connections += 1
        writer.write(resp_command("SUBSCRIBE", *(live_channel(group) for group in self._viewers)))
        self._writer = writer
        loop = asyncio.get_running_loop()
        heard = loop.time()

        async def watch_quiet():
            while True:
                await asyncio.sleep(QUIET_S / 2)
                quiet = loop.time() - heard
                if quiet >= 2 * QUIET_S:
                    logger.warning("live hub heard nothing from Redis for %.0f s", quiet)
                    writer.transport.abort()
                    return
                if quiet >= QUIET_S:
                    writer.write(resp_command("PING"))

        watchdog = asyncio.create_task(watch_quiet())
        groups, viewers = self._groups, self._viewers
        try:
            while data := await reader.read(1 << 16):
                heard = loop.time()
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    if isinstance(reply, Exception):
                        raise ConnectionError(f"Redis refused a pub/sub command: {reply}")
                    if reply[0] == b"message":
                        group = groups.get(reply[1])
                        if group is not None:
                            text = reply[2].decode()
                            for viewer in tuple(viewers[group]):  # a viewer may leave meanwhile
                                viewer.deliver(text)
                    elif reply[0] == b"subscribe":
                        group = groups.get(reply[1])
                        if group is not None:
                            self._confirm(group)
        finally:
            watchdog.cancel()


# This event loop's hub (one per process in a server; tests run a loop each).
live_hub = per_loop(lambda: LiveHub(settings.REDIS_URL))
