"""Sockets: the device protocol at /ws/devices/ and the browsers' live feed at /ws/live/.

Consumers authenticate in `connect()` and accept last, parse frames, and hand the work to
services; readings go straight to the ingest pipeline (hot path), never to the database here.
"""

import asyncio
import contextlib
import functools
import json
import logging
import time
import traceback
import uuid
from collections import deque
from datetime import datetime, timedelta
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from redis.exceptions import RedisError

from django.conf import settings
from django.utils import timezone

from devices import selectors, services, socket_registry
from devices.batched import (
    power_reports,
    socket_lookups,
    sockets_connected,
    sockets_disconnected,
)
from devices.command_inbox import CommandInbox, command_inbox
from devices.command_results import command_results
from devices.groups import fleet_group, site_group
from devices.rate_limit import TokenBucket
from devices.sent_marks import sent_marks
from devices.silence_watch import silence_watch
from energy_portal import gc_settle, metrics, realtime
from energy_portal.live_hub import LiveHub, Outbox, live_hub
from outages.services import power_event_message
from telemetry.services import (
    IngestResult,
    Item,
    live_enqueue,
    readings_enqueue,
    readings_validate,
)
from telemetry.validation import parse_timestamp

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024
MAX_BATCH = 1000
MAX_MSG_ID = 64
# Frames of one socket whose answers wait at most (acks waiting for their trip to the buffer,
# answers behind them); past that the socket's next frame is read once the oldest is sent.
MAX_UNANSWERED = 32
# Power reports a socket remembers having announced to its viewers (see DeviceConsumer._power).
MAX_ANNOUNCED = 64
CLOSE_BUFFER_DOWN = 1011  # the ingest buffer (Redis) failed
# Handling a message failed (a defect, or the database down): the Pi reconnects and resends what
# was not acked. RFC 6455's "Internal Error".
CLOSE_INTERNAL_ERROR = 1011
CLOSE_REPLACED = 4000
CLOSE_SILENT = 4008
CLOSE_FLOOD = 4029
CLOSE_TOO_SLOW = 4013  # a live socket that does not keep up with its messages
# How a socket ends that the device did not choose to end: no close frame at all (Uvicorn says
# 1005 for a lost connection, 1006 before the handshake completed), or our close for silence.
# The mains may have failed under it (`outages.services.sockets_drop_record`).
ABRUPT_ENDS = frozenset({1005, 1006})


class FrameError(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def bearer_token(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _msg_id(frame: dict) -> str:
    msg_id = frame.get("msg_id")
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= MAX_MSG_ID:
        raise FrameError("invalid_payload", f"msg_id must be a string of 1 to {MAX_MSG_ID} chars")
    return msg_id


def telemetry_items(frame: dict) -> tuple[list[Item], list[dict]]:
    """Flatten a telemetry frame (single or batch) into items; batch entries that are not even
    shaped like readings are reported by index, the rest go on."""
    if "batch" in frame:
        batch = frame["batch"]
        if not isinstance(batch, list) or not batch:
            raise FrameError("invalid_payload", "batch must be a non-empty list of {ts, values}")
        if len(batch) > MAX_BATCH:
            raise FrameError("invalid_payload", f"batch holds at most {MAX_BATCH} entries")
        points = list(enumerate(batch))
    elif "values" in frame:
        points = [(None, {"ts": frame.get("ts"), "values": frame["values"]})]
    else:
        raise FrameError("invalid_payload", "telemetry needs 'values' (one reading) or 'batch'")
    items, rejected = [], []
    for index, point in points:
        values = point.get("values") if isinstance(point, dict) else None
        if not isinstance(values, dict) or not values:
            if index is None:
                raise FrameError("invalid_payload", "values must be a non-empty object")
            rejected.append({"index": index, "error": "entry must be {ts, values: {key: number}}"})
            continue
        items.extend(
            Item(ref=str(key), ts=point.get("ts"), value=value, index=index)
            for key, value in values.items()
        )
    return items, rejected


def db(function):
    """Run ORM code from a consumer in the thread pool rather than the one thread-sensitive
    thread: when a fleet reconnects at once (a server restart), thousands of handshakes each make
    a few queries, and queued behind one thread they took seconds (bench/live). Each pool thread
    has its own database connection; these calls share no state between them."""
    return database_sync_to_async(function, thread_sensitive=False)


class LeanDispatch:
    """Channels' consumer loop, one message at a time, without its per-message overheads.

    - No idle database hop: since Channels 4.2 each message a consumer handles first makes a
      `sync_to_async` hop to the single thread-sensitive worker just to close stale database
      connections; on the live path that hop is per device frame, and serialised through one
      thread it was the bottleneck (bench/live). These consumers touch the database only
      through `database_sync_to_async`, which closes stale connections around each call itself.
    - No task per message: Channels' `await_many_dispatch` waits on the socket and the channel
      layer with `asyncio.wait` and makes a new task for each message, ~10 us a frame (a tenth
      of the device path's CPU). Here the socket's messages are awaited in the consumer's own
      task and the channel layer's in one long-lived task; a lock keeps Channels' rule that a
      consumer handles one message at a time, and each side asks for its next message only when
      its last is handled (the socket's flow control still works).

    An exception in either side ends the consumer, as in Channels; StopConsumer ends it cleanly.
    As in Channels, a message being handled is never interrupted by the other side's failure:
    the consumer stops once it is handled (or at once, if it was only waiting for the socket).
    """

    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        turn = asyncio.Lock()
        main = asyncio.current_task()
        failure: list[BaseException] = []
        handling = False  # the consumer's own task is handling a socket message

        async def from_layer():
            try:
                while True:
                    message = await self.channel_receive()
                    async with turn:
                        await self.dispatch(message)
            except asyncio.CancelledError:
                if not self_cancelled():
                    failure.append(RuntimeError("the channel-layer listener was cancelled"))
                    wake()
                raise
            except BaseException as exc:  # handed to the consumer's own task, which stops
                failure.append(exc)
                wake()

        def self_cancelled() -> bool:
            return side is not None and side.cancelling() > 0

        def wake() -> None:
            if not handling:
                main.cancel()  # it waits for the socket (or the turn): stop waiting

        side = None
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            side = asyncio.create_task(from_layer())
        try:
            while not failure:
                message = await receive()
                async with turn:
                    handling = True
                    try:
                        await self.dispatch(message)
                    finally:
                        handling = False
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            # Woken by the other side's failure: that is not a cancellation of this task, unless
            # someone else (the server) cancelled it too.
            if not failure or main.uncancel() > 0:
                raise
        finally:
            if side is not None and not side.done():
                side.cancel()
                try:
                    await side
                except asyncio.CancelledError:
                    if main.cancelling():  # the server cancelled this task meanwhile
                        raise
        if failure and not isinstance(failure[0], StopConsumer):
            raise failure[0]

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def send_text(self, text: str) -> None:
        """A text frame, handed straight to the server (`send(text_data=...)` takes two more
        calls through Channels to do the same)."""
        await self.base_send({"type": "websocket.send", "text": text})


class DeviceConsumer(LeanDispatch, AsyncWebsocketConsumer):
    """One Pi's socket. The bearer token alone names the device.

    Frames are read on while earlier ones travel to the buffer: a frame's readings are handed to
    the socket buffer and the next frame is read at once; its ack goes out when that trip is
    back. Answers (acks, errors) leave in the order of their frames. So a Pi that sends faster
    than one trip per frame has several frames on one trip, and its viewers get their messages
    together (one frame, see `Outbox`), instead of one trip and one message per frame.
    """

    device = None
    answering: asyncio.Task | None = None  # sends the answers that wait (see _answer)
    leaving: asyncio.Task | None = None  # gives the socket's place up (see _leave)
    inbox: CommandInbox | None = None  # hands this socket its device's commands
    commanding: asyncio.Task | None = None  # writes the commands that arrived (command_arrived)
    accepted = False
    closing = False
    closed_with: int | None = None  # the code of our close frame, if we closed the socket
    ended_with: int | None = None  # the code of the server's first disconnect message

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # (the trip it waits for, or None; its text), in the order of the frames
        self.answers: deque[tuple[asyncio.Future | None, str]] = deque()
        self.room = asyncio.Event()  # set when answers were sent or dropped

    last_frame = 0.0  # when the last frame arrived, shifted on by time spent busy (see dispatch)
    busy = False

    async def __call__(self, scope, receive, send):
        """However the socket ends, the device leaves it (`_leave`): the client closed or
        vanished (the server's disconnect), handling a message failed, or the server cancelled
        the consumer on shutdown.

        A failure while handling a message is a defect or an outage (database, Redis), never the
        device's fault: it is logged in one line and the socket closed with a close frame (1011),
        so the Pi reconnects and resends what was not acked. Uncaught, the server would log a
        traceback and drop the connection without a close frame.
        """
        try:
            await super().__call__(scope, receive, send)
        except Exception as exc:
            if not self.accepted:
                raise  # during the handshake: the server refuses it (HTTP 500)
            self._log_failure(exc)
            await self.close(code=CLOSE_INTERNAL_ERROR)
        finally:
            await self._leave()

    def _log_failure(self, exc: Exception) -> None:
        """One line: what failed and where it was raised (a traceback would be many)."""
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        message = " ".join(str(exc).split())[:500]  # psycopg's messages span several lines
        logger.error(
            "device %s: handling its socket failed (%s: %s%s); closing with %d",
            self.device.uid,
            type(exc).__name__,
            message,
            where,
            CLOSE_INTERNAL_ERROR,
        )

    async def connect(self):
        token = bearer_token(self.scope)
        # The token check, marking online and the open commands go with the other handshakes
        # of this process in one trip each (`devices.batched`).
        found = await socket_lookups()(token) if token else None
        if found is None:
            await self.close()  # before accept: the handshake is refused with 403
            return
        self.device, self.sensors = found
        self.bucket = TokenBucket(rate=settings.DEVICE_RATE_PER_S, burst=settings.DEVICE_RATE_BURST)
        self.last_frame = time.monotonic()
        self.seen = socket_registry.seen_notes()  # this loop's signs of life, looked up once
        self.delivered: set[str] = set()
        self.announced: set[tuple[str, datetime]] = set()  # power reports its viewers heard of
        # If anything below fails, __call__ gives the registry entry back (`_leave`). The socket
        # joins no channel-layer group: its commands come through the inbox, and the registry
        # names its channel (a replaced socket is told on it, below). A group per device cost
        # two Redis round trips per socket, at its start and its end, and nobody sent to it.
        previous = await socket_registry.claim(self.device.id, self.channel_name)
        if previous and previous != self.channel_name:
            await self.channel_layer.send(previous, {"type": "device.replaced"})
        await self.accept()
        self.accepted = True
        # Before the open commands are read: a command committed after that read reaches the
        # socket through the inbox (devices.command_inbox).
        self.inbox = command_inbox()
        self.inbox.add(self.device.id, self)
        metrics.socket_opened("device")
        gc_settle.settler.socket_opened()
        open_commands = await sockets_connected()((self.device, timezone.now()))
        self.seen.note(self.device.id)
        silence_watch().add(self)
        for command_id in open_commands:
            await self._deliver(command_id)

    async def disconnect(self, code):
        if self.ended_with is None:
            self.ended_with = code
        await self._leave()

    def _dropped(self) -> bool:
        """Whether the socket ended abruptly: the device neither closed it nor was closed by us
        for a reason of ours (shutdown 1012, a failure 1011, replaced, flooding); silence
        counts, since a home without mains goes silent."""
        if self.closed_with is not None:
            return self.closed_with == CLOSE_SILENT
        return self.ended_with in ABRUPT_ENDS

    async def _leave(self) -> None:
        """End the socket's tasks, give up its registry entry and mark it offline; once, however
        often it is called.

        The steps run in a task of their own, so a cancellation of the consumer (the server
        shutting down) does not cut them short, and each runs even when an earlier one failed:
        a registry entry left behind would keep the device "connected" (and online) for good.
        """
        if self.device is None:
            return
        if self.leaving is None:
            self.closing = True  # nothing more is sent
            if self.inbox is not None:
                self.inbox.remove(self.device.id, self)
            silence_watch().remove(self)
            for task in (self.answering, self.commanding):
                if task is not None:
                    task.cancel()
            self._drop_answers()
            metrics.socket_closed("device", counted=self.accepted)
            if self.accepted:
                gc_settle.settler.socket_closed()
            self.leaving = asyncio.create_task(self._give_up_place())
        await asyncio.shield(self.leaving)

    async def _give_up_place(self) -> None:
        device_id, failed = self.device.id, []
        # When the registry cannot answer, still try: device_set_online looks at it again and
        # leaves the device online if another socket holds it.
        released = True
        try:
            released = await socket_registry.release(device_id, self.channel_name)
        except Exception as exc:
            failed.append(("releasing its registry entry", exc))
        if released:
            # Offline, and an abrupt end noted (its home may have lost the mains: outages look
            # for a suspected outage), with the other sockets of this process that end now.
            try:
                await sockets_disconnected()((self.device, self._last_life(), self._dropped()))
            except Exception as exc:
                failed.append(("marking it offline", exc))
        if failed:
            # An outage (Redis, the database) as a rule: one line. The silent-devices job marks
            # the device offline later if this could not.
            logger.warning(
                "device %s: leaving its socket failed in part: %s",
                self.device.uid,
                "; ".join(f"{step}: {type(exc).__name__}: {exc}" for step, exc in failed),
            )

    def _last_life(self) -> datetime:
        """The instant of the device's last sign of life: its last frame when we closed it for
        silence, else now (the socket ended just now)."""
        if self.closed_with == CLOSE_SILENT:
            return timezone.now() - timedelta(seconds=time.monotonic() - self.last_frame)
        return timezone.now()

    async def dispatch(self, message):
        """Handle one message at a time, as Channels does, with the silence clock stopped.

        Frames that arrive while a message is handled wait in the queue, unseen until it is
        done: time spent busy is not the device's silence. Under load (a slow database or Redis)
        a talking device would otherwise be closed for frames it did send.
        """
        started = time.monotonic()
        self.busy = True
        try:
            await super().dispatch(message)
        finally:
            self.busy = False
            self.last_frame += time.monotonic() - started

    async def close_silent(self) -> None:
        """Closed by the silence watch (`devices.silence_watch`): the link looks hung. A frame
        that arrived between the watch's sweep and this call keeps the socket open."""
        if self.closing:
            return
        if self.busy or time.monotonic() - self.last_frame <= settings.DEVICE_HEARTBEAT_TIMEOUT:
            silence_watch().add(self)
            return
        logger.info(
            "device %s silent for %ss; closing", self.device.uid, settings.DEVICE_HEARTBEAT_TIMEOUT
        )
        await self.close(code=CLOSE_SILENT)

    async def receive(self, text_data=None, bytes_data=None):
        self.last_frame = time.monotonic()
        # A sign of life for last-seen: gathered with the process's others and written once a
        # second, so neither this frame nor the socket waits for (or fails with) Redis.
        self.seen.note(self.device.id)
        await self._handle_frame(text_data, bytes_data)

    async def _handle_frame(self, text_data: str | None, bytes_data: bytes | None) -> None:
        msg_id = None
        counted_as = "error"  # until its type is known
        try:
            if not self.bucket.allow():
                if self.bucket.refused > settings.DEVICE_RATE_BURST:
                    await self.close(code=CLOSE_FLOOD)
                    return
                raise FrameError("rate_limited", "too many frames; slow down and resend later")
            if bytes_data is not None:
                raise FrameError("invalid_json", "frames must be JSON text, not binary")
            if len(text_data.encode()) > MAX_FRAME_BYTES:  # bytes, not characters
                raise FrameError("too_large", f"frames are limited to {MAX_FRAME_BYTES} bytes")
            try:
                frame = json.loads(text_data)
            except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
                raise FrameError("invalid_json", f"not valid JSON: {exc}") from None
            if not isinstance(frame, dict):
                raise FrameError("invalid_payload", "a frame must be a JSON object")
            if isinstance(frame.get("msg_id"), str):
                msg_id = frame["msg_id"][:MAX_MSG_ID]
            kind = frame.get("type")
            # a list or object as the type cannot even be looked up (unhashable)
            handler = self.HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                counted_as = "unknown"
                known = ", ".join(self.HANDLERS)
                raise FrameError("unknown_type", f"unknown frame type; known types: {known}")
            counted_as = kind
            await handler(self, frame)
        except FrameError as error:
            answer = {"type": "error", "code": error.code, "detail": error.detail}
            if msg_id is not None:
                answer["msg_id"] = msg_id
            await self._answer(json.dumps(answer))
        finally:
            metrics.frame_counted(counted_as)

    async def _telemetry(self, frame: dict) -> None:
        msg_id = _msg_id(frame)
        items, rejected = telemetry_items(frame)
        result = readings_validate(items=items, sensors=self.sensors)
        if any(r["error"] == "unknown sensor" for r in result.rejected):
            # A sensor added since connect: look again before refusing it.
            self.sensors = await db(selectors.sensor_refs)(device=self.device)
            result = readings_validate(items=items, sensors=self.sensors)
        result.rejected = sorted([*rejected, *result.rejected], key=lambda r: r.get("index", -1))
        if not result.readings and frame.get("batch") is None and _frame_level_error(result):
            raise FrameError("invalid_payload", result.rejected[0]["error"])
        trip = readings_enqueue(result=result, source="socket", device_id=self.device.id)
        ack = _ack_text(msg_id, accepted=result.accepted, rejected=result.rejected)
        await self._answer(ack, after=trip)

    async def _power(self, frame: dict) -> None:
        msg_id = _msg_id(frame)
        state = frame.get("state")
        if state not in ("lost", "restored"):
            raise FrameError("invalid_payload", "state must be 'lost' or 'restored'")
        try:
            at = parse_timestamp(frame.get("ts"), now=timezone.now())
        except ValueError as exc:
            raise FrameError("invalid_payload", str(exc)) from None
        # The site's viewers hear of the report at once, with this process's next trip to Redis,
        # while it is stored: a resident sees the cut from the device's own instant within a
        # trip, not after a hop to the thread pool and a commit (bench/outages). Should storing
        # fail, the device gets no ack and reports again; its viewers heard what it saw.
        # A report the Pi resends on this socket (no ack seen yet) is announced once.
        site_id = self.device.site_id
        if (state, at) not in self.announced:
            if len(self.announced) >= MAX_ANNOUNCED:
                self.announced.clear()  # a resend is rarely more than a few reports back
            self.announced.add((state, at))
            message = power_event_message(
                site_id=site_id, device_uid=self.device.uid, state=state, at=at
            )
            told = live_enqueue(
                device_id=self.device.id,
                groups=[site_group(site_id), fleet_group()],
                message=message,
            )
            told.add_done_callback(_unheard)  # a failed publish is not the report's failure
        # Stored with the reports of this process's other sockets (`devices.batched`).
        await power_reports()((self.device.id, site_id, state, at))
        await self._answer(_ack_text(msg_id, accepted=1, rejected=[]))

    async def _command_result(self, frame: dict) -> None:
        status, detail = frame.get("status"), frame.get("detail")
        if not isinstance(status, str) or status not in services.COMMAND_RESULTS:
            raise FrameError("invalid_payload", "status must be done, failed or rejected")
        if detail is None:
            detail = ""
        elif not isinstance(detail, str):
            raise FrameError("invalid_payload", "detail must be a string")
        command_id = _uuid(frame.get("id"))
        # Recorded with the process's next batch of results (the service makes the detail
        # storable: NUL, lone surrogates); the answer says whether it was this device's.
        if not await command_results().note(str(command_id), self.device.id, status, detail):
            raise FrameError("invalid_payload", "no such command for this device")

    async def _heartbeat(self, frame: dict) -> None:
        """Nothing to do: every frame already counted as a sign of life."""

    HANDLERS = {
        "telemetry": _telemetry,
        "power": _power,
        "command_result": _command_result,
        "heartbeat": _heartbeat,
    }

    async def close(self, code=None, reason=None):
        """Close the socket, once. Answers not sent by then are dropped (their frames stay
        unacked and the Pi resends them), and nothing is sent after the close."""
        if self.closing:
            return
        self.closing = True
        self.closed_with = code or 1000  # what Channels sends for no code
        if self.answering is not None and self.answering is not asyncio.current_task():
            self.answering.cancel()
        self._drop_answers()
        with contextlib.suppress(OSError):  # the client is gone (Uvicorn's ClientDisconnected)
            await super().close(code=code, reason=reason)

    async def _answer(self, text: str, *, after: asyncio.Future | None = None) -> None:
        """Send a frame's answer once `after` (its readings' trip to the buffer) is done and
        the answers of earlier frames have gone; at once when nothing waits."""
        if self.closing:
            return
        answers = self.answers
        if after is None and not answers and self.answering is None:
            try:
                await self.send_text(text)
            except OSError:  # the client is gone (Uvicorn's ClientDisconnected): disconnect follows
                self.closing = True
            return
        answers.append((after, text))
        if self.answering is None:
            self.answering = asyncio.create_task(self._send_answers())
        while len(answers) > MAX_UNANSWERED:
            # Read no further until the oldest is answered (sent): frames wait in the socket,
            # and a Pi that does not read its answers is held back by TCP, not by our memory.
            self.room.clear()
            await self.room.wait()

    async def _send_answers(self) -> None:
        answers = self.answers
        try:
            while answers:
                trip, text = answers[0]
                if trip is not None:
                    try:
                        await trip
                    except asyncio.CancelledError:
                        if asyncio.current_task().cancelling():
                            raise  # this task is stopped (the socket closes)
                        await self._buffer_failed(RuntimeError("the trip was cancelled"))
                        return
                    except Exception as exc:
                        await self._buffer_failed(exc)
                        return
                answers.popleft()
                self.room.set()
                try:
                    await self.send_text(text)
                except OSError:  # the connection is gone (Uvicorn's ClientDisconnected)
                    self._drop_answers()
                    return
        finally:
            self.answering = None
            self.room.set()

    async def _buffer_failed(self, exc: BaseException) -> None:
        """A trip failed: its frame is not in the buffer, so no ack for it nor any frame after
        it. No error code says "try later": the socket closes, and the Pi reconnects and
        resends what was not acked."""
        if isinstance(exc, RedisError):
            logger.warning("device %s: cannot buffer readings (%s); closing", self.device.uid, exc)
        else:  # a defect, not an outage: with its traceback
            logger.error("device %s: buffering failed; closing", self.device.uid, exc_info=exc)
        await self.close(code=CLOSE_BUFFER_DOWN)

    def _drop_answers(self) -> None:
        """Forget the answers not sent; a trip still under way ends unheard."""
        for trip, _ in self.answers:
            if trip is not None:
                trip.add_done_callback(_unheard)
        self.answers.clear()
        self.room.set()

    async def _deliver(self, command_id) -> None:
        """Claim an open command from the database and send it (a reconnecting socket's open
        commands). A command issued while this socket connects is both among its open commands
        and announced to it: sent once per socket (a new socket gets it again)."""
        if str(command_id) in self.delivered or self.closing:
            return
        self.delivered.add(str(command_id))  # before the wait: the inbox may bring it meanwhile
        await self._claim_and_send(command_id)

    async def _claim_and_send(self, command_id) -> None:
        command = await db(services.command_mark_sent)(
            command_id=command_id, device_id=self.device.id
        )
        if command is not None and not self.closing:  # (closed while the database answered)
            try:
                await self.send_text(services.command_frame(command))
            except OSError:  # the client is gone: the command is sent again when it reconnects
                self.closing = True

    def command_arrived(self, command_id: str, frame: str, expires: float) -> None:
        """A new command for this device, from the process's inbox (`command_inbox`), with its
        frame: written in order of arrival by the socket's command writer, and recorded as
        sent with the process's next batch (`sent_marks`), no database trip on the way. Never
        waits."""
        if command_id in self.delivered or self.closing:
            return
        self.delivered.add(command_id)
        if self.commanding is None:
            self.commands_due: deque[tuple[str, str, float]] = deque()
            self.commanding = asyncio.create_task(self._write_commands())
        self.commands_due.append((command_id, frame, expires))

    async def _write_commands(self) -> None:
        due = self.commands_due
        try:
            while due and not self.closing:
                await self._write_command(*due.popleft())
        except Exception as exc:  # claiming an expired one failed (the database down)
            self._log_failure(exc)
            await self.close(code=CLOSE_INTERNAL_ERROR)
        finally:
            self.commanding = None

    async def _write_command(self, command_id: str, frame: str, expires: float) -> None:
        """Write a command's frame and note it for the batched sent mark; one that expired on
        its way is claimed from the database instead, which records it expired."""
        if expires <= time.time():
            await self._claim_and_send(command_id)
            return
        try:
            await self.send_text(frame)
        except OSError:  # the client is gone: still pending, sent again when it reconnects
            self.closing = True
            return
        sent_marks().note(command_id)

    # Channel-layer events
    async def device_command(self, event):
        """A command sent to the socket's channel (named in `socket_registry`) through the
        channel layer, as the portal did before `command_inbox` (`services.command_message`):
        with its frame, written as the inbox's are; without, claimed from the database first."""
        frame, command_id = event.get("frame"), event["id"]
        if frame is None:
            await self._deliver(command_id)
            return
        if command_id in self.delivered or self.closing:
            return
        self.delivered.add(command_id)
        await self._write_command(command_id, frame, event.get("expires", 0))

    async def device_replaced(self, event):
        await self.close(code=CLOSE_REPLACED)


def _unheard(trip: asyncio.Future) -> None:
    """A trip nobody waits for any more: its failure was the socket's business, now gone."""
    if not trip.cancelled():
        trip.exception()


def _ack_text(msg_id: str, *, accepted: int, rejected: list[dict]) -> str:
    if rejected:
        ack = {"type": "ack", "msg_id": msg_id, "accepted": accepted, "rejected": rejected}
        return json.dumps(ack)
    # The common ack, put together without encoding a dict: a few microseconds a frame.
    return (
        f'{{"type": "ack", "msg_id": {json.dumps(msg_id)}, "accepted": {accepted}, "rejected": []}}'
    )


def _frame_level_error(result: IngestResult) -> bool:
    """A lone reading whose time is unusable is a malformed frame, not a per-key rejection."""
    return bool(result.rejected) and all(r["error"].startswith("ts ") for r in result.rejected)


def _uuid(raw) -> uuid.UUID:
    try:
        if not isinstance(raw, str):  # str() of a deeply nested list can exceed the stack
            raise ValueError
        return uuid.UUID(raw)
    except ValueError:
        raise FrameError("invalid_payload", "id must be the command's UUID") from None


class LiveConsumer(LeanDispatch, AsyncWebsocketConsumer):
    """A browser's live feed, authenticated by its session. Residents get their own sites;
    operators get the fleet, or one site with `?site=<id>`.

    Its messages come from the process's live hub (one Redis subscription per group for all the
    process's browsers), not from the channel layer: it has no channel of its own.
    """

    channel_layer_alias = "live-sockets-use-the-hub"  # not a configured layer: none is made
    groups_joined: list[str] = []
    viewer_id = ""
    hub: LiveHub | None = None
    writer: asyncio.Task | None = None
    counted = False  # among the open viewer sockets

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the consumer ends (a cancelled task too), it stops getting messages and
            # renewing its count.
            self._stop()

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        site_id = _query_int(self.scope, "site")
        self.groups_joined = await db(selectors.live_groups)(user=user, site_id=site_id)
        self.viewer_id = f"live.{uuid.uuid4().hex}"  # its name among the viewer counts
        self.outbox = Outbox()
        if self.groups_joined:
            self.hub = live_hub()
            await self.hub.join(self, self.groups_joined)
            # Counted once subscribed: senders skip groups nobody watches.
            await realtime.viewers_join(self.groups_joined, self.viewer_id)
            realtime.viewer_renewals().add(self.viewer_id, self.groups_joined)
        # Counted before the browser hears it is accepted, so a count read after the handshake
        # includes it (`_stop` counts it out however the socket ends).
        self.counted = metrics.socket_opened("viewer")
        gc_settle.settler.socket_opened()
        await self.accept()
        self.writer = asyncio.create_task(self._write())

    async def disconnect(self, code):
        self._stop()
        await realtime.viewers_leave(self.groups_joined, self.viewer_id)

    def _stop(self) -> None:
        if self.counted:
            gc_settle.settler.socket_closed()
        self.counted = metrics.socket_closed("viewer", counted=self.counted)
        if self.viewer_id:
            realtime.viewer_renewals().remove(self.viewer_id)
        if self.writer is not None:
            self.writer.cancel()
        if self.hub is not None:
            self.hub.leave(self, self.groups_joined)

    def deliver(self, text: str) -> None:
        """A live message from the hub: queued for this socket, never waited for."""
        if not self.outbox.put(text):
            self.hub.leave(self, self.groups_joined)

    async def _write(self):
        try:
            await self.outbox.drain(self.send_text)
        except OSError:
            return  # the connection is gone (Uvicorn's ClientDisconnected): disconnect() follows
        # Only an overflow ends the drain: the browser does not keep up. Closed, it reconnects
        # and starts from the current state rather than from a backlog.
        logger.warning(
            "live socket %s fell %d messages behind; closing", self.viewer_id, self.outbox.limit
        )
        await self.close(code=CLOSE_TOO_SLOW)

    async def receive(self, text_data=None, bytes_data=None):
        """Browsers only listen; changes go through the API."""


def _query_int(scope, name: str) -> int | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    if values and values[0].isdigit():
        return int(values[0])
    return None
