"""A hostile device against a real server: thousands of generated frames over one socket.

The socket answers each frame the protocol answers (an ack or an error frame, in order, with the
frame's msg_id when it had a usable one), stays open, and still acks a valid frame afterwards; the
server logs no traceback and no error; nothing touches another device's command. The frames come
from a seeded generator, so a failure is repeatable: random bytes and text, deep nesting, huge
numbers, NaN and Infinity literals, wrong types in every field, unknown types, oversize frames,
binary frames, other devices' command ids, far timestamps, thousands of keys.
"""

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from django.conf import settings
from django.db import connection

from devices import services
from devices.consumers import MAX_FRAME_BYTES
from devices.models import Command, CommandStatus
from energy_portal.asgi_server import WS_MAX_BYTES
from tests.devices.test_consumers import (  # noqa: F401 (fixtures used by name)
    clean_redis,
    fast_passwords,
    recent,
    telemetry,
)
from tests.e2e import servers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

SEED = 20261206
# Frames of each kind: fewer of the large ones (up to 200 kB each), which take most of the time.
FRAMES_PER_KIND = 300
LARGE_FRAMES_PER_KIND = 25
ERROR_CODES = {"invalid_json", "unknown_type", "invalid_payload", "too_large", "rate_limited"}
FINAL_STATUSES = ("done", "failed", "rejected")  # a tuple: `in` must not hash a list


@pytest.fixture(scope="module")
def portal(django_db_setup):
    """One server, its rate limit out of the way: a flood is closed by design (tested with the
    consumer), and this test sends as fast as the socket takes frames."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEVICE_RATE_PER_S", "1000000")
        patch.setenv("DEVICE_RATE_BURST", "1000000")
        with servers.running(
            1,
            database_url=servers.database_url(connection.settings_dict),
            redis_url=settings.REDIS_URL,
        ) as running:
            yield running[0]


# --- the generator -----------------------------------------------------------------------------


class Hostile:
    """Frames a hostile device could send, from one seeded generator. Each is (the frame: text
    or bytes, the msg_id its answer must carry or None if it may carry none); `own_command` is
    a command of this device, `foreign_command` another device's."""

    def __init__(self, seed: int, own_command: str, foreign_command: str):
        self.rng = random.Random(seed)
        self.own_command = own_command
        self.foreign_command = foreign_command
        self.count = 0

    def msg_id(self) -> str:
        self.count += 1
        return f"f{self.count}"

    # -- values --

    def text(self, size: int = 40) -> str:
        """Any characters, lone surrogates and NUL included (sent as JSON escapes)."""
        pick = self.rng.choice(
            [
                lambda: chr(self.rng.randrange(0x20, 0x7F)),
                lambda: chr(self.rng.randrange(0, 0x20)),
                lambda: chr(self.rng.randrange(0xD800, 0xE000)),  # lone surrogates
                lambda: chr(self.rng.randrange(0x80, 0x110000)),
            ]
        )
        return "".join(pick() for _ in range(self.rng.randrange(size)))

    def timestamp(self) -> object:
        now = datetime.now(UTC)
        return self.rng.choice(
            [
                "0001-01-01T00:00:00Z",
                "0001-01-01T00:00:00+14:00",  # before the first representable instant in UTC
                "9999-12-31T23:59:59-14:00",  # after the last
                "9999-12-31T23:59:59.999999Z",
                "1970-01-01T00:00:00Z",
                (now + timedelta(days=365 * 50)).isoformat(),
                (now - timedelta(days=365 * 5)).isoformat(),
                "2026-02-30T10:00:00Z",
                "2026-11-22T10:00:00",
                "2026-11-22T10:00:00.12345678901234567890Z",
                "2026-11-22",
                "",
                "now",
                recent()[0],
                recent()[0].replace("Z", "\u0000"),
                self.text(),
                1_700_000_000,
                -1,
                None,
            ]
        )

    def number_text(self) -> str:
        """JSON number texts, valid and not, as they would appear in a frame."""
        return self.rng.choice(
            [
                "NaN",
                "Infinity",
                "-Infinity",
                "1e400",
                "-1e400",
                "1e-400",
                "9" * 400,
                "9" * 5000,  # past Python's int-from-text limit (4300 digits)
                str(2**64),
                str(-(2**63)),
                "-0",
                "0.1",
                "1" + "0" * 308,
                "230.5",
            ]
        )

    def nested(self, depth: int) -> str:
        opener, closer = self.rng.choice([("[", "]"), ('{"a":', "}")])
        return opener * depth + "1" + closer * depth

    def value(self, depth: int = 0) -> object:
        """Any JSON value, of a wrong type as likely as not."""
        choices: list[Callable[[], object]] = [
            lambda: None,
            lambda: self.rng.choice([True, False]),
            lambda: self.rng.choice([0, -1, 2**63, -(2**64), 10**300, 1.5, -0.0]),
            lambda: float(self.rng.choice(["nan", "inf", "-inf"])),
            self.text,
            lambda: "",
            lambda: "x" * self.rng.randrange(1, 3000),
            lambda: "heartbeat",
            lambda: self.own_command,
            lambda: self.foreign_command,
            self.timestamp,
        ]
        if depth < 3:
            choices += [
                lambda: [self.value(depth + 1) for _ in range(self.rng.randrange(4))],
                lambda: {self.text(8): self.value(depth + 1) for _ in range(self.rng.randrange(4))},
            ]
        return self.rng.choice(choices)()

    # -- frames --

    def template(self) -> dict:
        """A valid frame of one of the device's types."""
        ts = recent(self.rng.randrange(1, 3600))[0]
        return self.rng.choice(
            [
                lambda: telemetry(self.msg_id(), ts, power_w=self.rng.uniform(0, 5000)),
                lambda: {
                    "type": "telemetry",
                    "msg_id": self.msg_id(),
                    "batch": [{"ts": ts, "values": {"power_w": 1.0, "voltage_v": 230.0}}],
                },
                lambda: {
                    "type": "power",
                    "msg_id": self.msg_id(),
                    "state": self.rng.choice(["lost", "restored"]),
                    "ts": ts,
                },
                lambda: {
                    "type": "command_result",
                    "msg_id": self.msg_id(),
                    "id": self.own_command,
                    "status": self.rng.choice(FINAL_STATUSES),
                    "detail": self.text(),
                },
                lambda: {"type": "heartbeat", "msg_id": self.msg_id()},
            ]
        )()

    def wrong_fields(self) -> dict:
        """A valid frame with one to three of its fields (or their insides) made hostile."""
        frame = self.template()
        for _ in range(self.rng.randrange(1, 4)):
            field = self.rng.choice([*frame, "values", "batch", "ts", "detail", "id"])
            if field == "msg_id":
                continue  # kept: the answer is matched by it
            if field == "values" and self.rng.random() < 0.5:
                frame["values"] = {self.rng.choice(["power_w", "bogus"]): self.value()}
            elif field == "batch" and self.rng.random() < 0.5:
                frame["batch"] = [
                    {"ts": self.timestamp(), "values": {"power_w": self.value()}},
                    self.value(),
                ]
            else:
                frame[field] = self.value()
        return frame

    def frames(self) -> Iterator[str | bytes]:
        """FRAMES_PER_KIND of each small kind, LARGE_FRAMES_PER_KIND of each large, shuffled."""
        small: list[Callable[[], str | bytes]] = [
            lambda: self.rng.randbytes(self.rng.randrange(300)),  # a binary frame
            lambda: self.text(300).encode("utf-8", "replace").decode(),  # any text
            lambda: json.dumps(self.wrong_fields()),
            lambda: json.dumps(self.template()),  # valid: acked (or silent)
            lambda: json.dumps({"type": self.value(), "msg_id": self.msg_id()}),  # unknown types
            lambda: json.dumps(  # closed nesting, shallow or past the parser's recursion limit
                {"type": "telemetry", "msg_id": self.msg_id(), "ts": recent()[0], "values": None}
            ).replace("null", self.nested(self.rng.choice([10, 200, 5000]))),
            lambda: json.dumps(  # numbers JSON has not, or no float can hold
                {"type": "telemetry", "msg_id": self.msg_id(), "ts": recent()[0], "values": 0}
            ).replace(": 0}", f': {{"power_w": {self.number_text()}, "voltage_v": 230}}}}'),
            lambda: json.dumps(  # another device's command, or none at all
                {
                    "type": "command_result",
                    "msg_id": self.msg_id(),
                    "id": self.rng.choice([self.foreign_command, "0" * 32, self.own_command[:-1]]),
                    "status": "done",
                    "detail": "\u0000\ud800",
                }
            ),
        ]
        large: list[Callable[[], str | bytes]] = [
            lambda: self.rng.choice("[{") * self.rng.randrange(1, 100_000),  # unclosed nesting
            lambda: json.dumps(  # thousands of keys, in values or at the top
                self.rng.choice(
                    [
                        telemetry(self.msg_id(), recent()[0], **{f"k{i}": i for i in range(3000)}),
                        {"type": "heartbeat", **{f"k{i}": i for i in range(3000)}},
                        {
                            "type": "power",
                            "msg_id": self.msg_id(),
                            **{str(i): 0 for i in range(3000)},
                        },
                    ]
                )
            ),
            lambda: json.dumps(  # oversize
                {**self.template(), "pad": "x" * self.rng.randrange(MAX_FRAME_BYTES, 200_000)}
            ),
        ]
        frames = [kind() for kind in small for _ in range(FRAMES_PER_KIND)]
        frames += [kind() for kind in large for _ in range(LARGE_FRAMES_PER_KIND)]
        self.rng.shuffle(frames)
        return iter(frames)

    def expected_answer(self, frame: str | bytes) -> tuple[bool, str | None]:
        """(whether the protocol answers the frame, the msg_id the answer must carry if known).

        Unanswered are only the frames that are valid and have no answer: a heartbeat, and a
        command result for this device's own command."""
        if isinstance(frame, bytes) or len(frame.encode()) > MAX_FRAME_BYTES:
            return True, None
        try:
            parsed = json.loads(frame)
        except (ValueError, RecursionError):
            return True, None
        if not isinstance(parsed, dict):
            return True, None
        kind = parsed.get("type")
        if kind == "heartbeat":
            return False, None
        if (
            kind == "command_result"
            and parsed.get("status") in FINAL_STATUSES
            and parsed.get("id") == self.own_command
            and (parsed.get("detail") is None or isinstance(parsed.get("detail"), str))
        ):
            return False, None
        msg_id = parsed.get("msg_id")
        return True, msg_id if isinstance(msg_id, str) and msg_id.startswith("f") else None


# --- the test ----------------------------------------------------------------------------------


async def test_a_hostile_device_gets_an_answer_to_every_frame_and_the_socket_holds(
    portal, alice_home, bob_home
):
    own = await asyncio.to_thread(_issue_ping, alice_home["device"])
    foreign = await asyncio.to_thread(_issue_ping, bob_home["device"])
    hostile = Hostile(SEED, own_command=str(own.id), foreign_command=str(foreign.id))
    frames = list(hostile.frames())
    expected = [answer for answer in map(hostile.expected_answer, frames) if answer[0]]
    log_start = len(portal.output())

    async with connect(
        f"{portal.ws}/ws/devices/",
        additional_headers={"Authorization": f"Bearer {alice_home['token']}"},
        max_size=None,
    ) as ws:
        assert json.loads(await ws.recv())["id"] == str(own.id)  # the command waiting for it

        async def read(count: int) -> list[dict]:
            return [json.loads(await ws.recv()) for _ in range(count)]

        # Read while sending: the server reads no further while too many answers wait.
        reader = asyncio.create_task(asyncio.wait_for(read(len(expected)), 60))
        for frame in frames:
            await ws.send(frame)
        answers = await reader
        await ws.send(json.dumps(telemetry("valid-after", recent(1)[0], power_w=1.5)))
        last = json.loads(await asyncio.wait_for(ws.recv(), 10))

    log = portal.output()[log_start:]
    commands = await asyncio.to_thread(_statuses, own.id, foreign.id)

    # every answered frame got its answer, in order: an ack or an error of the protocol
    mismatched = [
        (answer, msg_id)
        for answer, (_, msg_id) in zip(answers, expected, strict=True)
        if answer["type"] not in ("ack", "error")
        or (answer["type"] == "error" and answer["code"] not in ERROR_CODES)
        or (msg_id is not None and answer.get("msg_id") != msg_id)
    ]
    assert mismatched == []
    # the generator reached every kind of answer
    kinds = Counter(answer.get("code", "ack") for answer in answers)
    assert set(kinds) == ERROR_CODES - {"rate_limited"} | {"ack"}, kinds
    assert (last["type"], last["msg_id"], last["accepted"]) == ("ack", "valid-after", 1)
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    # Bob's command untouched; Alice's finished, its detail storable
    assert commands[foreign.id] == (CommandStatus.PENDING, "")
    assert commands[own.id][0] in FINAL_STATUSES


@pytest.mark.parametrize(
    ("frame", "close_code", "log_line"),
    [
        (b'{"type": "heartbeat", "x": "\xff\xfe"}', 1007, "Invalid UTF-8 sequence"),
        (b"x" * (WS_MAX_BYTES + 1), 1009, None),
    ],
    ids=["text-not-utf8", "over-the-servers-read-limit"],
)
async def test_frames_the_server_cannot_read_close_with_a_code_and_one_line_at_most(
    portal, alice_home, frame, close_code, log_line
):
    # given a device socket
    log_start = len(portal.output())
    async with connect(
        f"{portal.ws}/ws/devices/",
        additional_headers={"Authorization": f"Bearer {alice_home['token']}"},
        max_size=None,
    ) as ws:
        # when it sends a text frame the server cannot take as text
        await ws.send(frame, text=True)
        # then the server closes with the protocol's code, not a dropped connection
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == close_code
    await asyncio.sleep(0.2)  # the server's log line, if any, is written after the close
    log = portal.output()[log_start:]
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    if log_line:
        assert [line for line in log.splitlines() if log_line in line] == [
            next(line for line in log.splitlines() if log_line in line)
        ]
        assert "WARNING" in next(line for line in log.splitlines() if log_line in line)


def _issue_ping(device) -> Command:
    try:
        return services.command_issue(device=device, name="ping")
    finally:
        connection.close()  # this thread's own: left open, the test database could not be dropped


def _statuses(*command_ids) -> dict:
    try:
        return {
            pk: (status, detail)
            for pk, status, detail in Command.objects.filter(pk__in=command_ids).values_list(
                "id", "status", "detail"
            )
        }
    finally:
        connection.close()  # this thread's own: left open, the test database could not be dropped
