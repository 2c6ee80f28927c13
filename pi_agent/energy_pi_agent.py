"""Energy Portal agent for a Raspberry Pi: stream meter readings to the portal over a WebSocket.

One standalone file that needs only the Python 3.11 standard library and ``websockets`` 17, so it
can be copied to a Pi as is::

    PI_AGENT_TOKEN=... python energy_pi_agent.py --url ws://portal:8000/ws/devices/ --device pi-0001

Every reading and every mains lost/restored report is written to a local SQLite queue first and
leaves it only when the portal acknowledges its ``msg_id``, so nothing measured is lost while the
portal or the network is away. The protocol is the "Device protocol (Pi ↔ portal)" of the product
description: telemetry, batch telemetry, power, command_result and heartbeat frames up; ack, command
and error frames down.

Programmatic use (the portal's own tests drive the agent this way)::

    agent = Agent(url, token, "pi-0001", SimulatorSource(seed=1), queue_path, interval=0.1)
    task = asyncio.create_task(agent.run())
    ...
    await agent.stop()
    agent.stats.produced, agent.stats.acked, agent.queue_length(), list(agent.produced)
    agent.close()
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import logging
import math
import os
import random
import signal
import sqlite3
import subprocess
import threading
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.uri import parse_uri

log = logging.getLogger("energy_pi_agent")

TELEMETRY = "telemetry"
POWER = "power"


# --------------------------------------------------------------------------------------------------
# Times and values
# --------------------------------------------------------------------------------------------------


def format_ts(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with milliseconds and a ``Z``."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def parse_ts(value: Any) -> datetime:
    """Parse an RFC 3339 string with a zone, or epoch seconds, into an aware UTC datetime."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str):
        raise ValueError(f"timestamp must be an RFC 3339 string, got {value!r}")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no zone; add Z or an offset")
    return moment.astimezone(UTC)


def clean_values(raw: Any) -> dict[str, float]:
    """Keep the finite numeric values of a ``{key: number}`` object.

    Anything else is dropped here, because the portal refuses a whole frame with a non-finite
    value, and ``NaN`` is not even valid JSON.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"values must be a JSON object, got {type(raw).__name__}")
    values: dict[str, float] = {}
    dropped: list[str] = []
    for key, value in raw.items():
        number = _finite(value)
        if isinstance(key, str) and key and number is not None:
            values[key] = number
        else:
            dropped.append(str(key))
    if dropped:
        log.warning("dropped non-numeric or non-finite values: %s", ", ".join(dropped))
    return values


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Sample:
    """Values measured at one instant."""

    ts: datetime
    values: dict[str, float]


def parse_sample(obj: Any, now: datetime) -> Sample:
    """Read ``{"ts": ..., "values": {...}}`` or a bare values object; a missing ts means ``now``."""
    if isinstance(obj, dict) and isinstance(obj.get("values"), dict):
        ts = parse_ts(obj["ts"]) if obj.get("ts") is not None else now
        return Sample(ts, clean_values(obj["values"]))
    return Sample(now, clean_values(obj))


# --------------------------------------------------------------------------------------------------
# Reading sources
# --------------------------------------------------------------------------------------------------


class Source(Protocol):
    """Where readings come from; the agent calls ``read`` once per tick, in a worker thread.

    Return the values measured now as ``{key: number}``, a :class:`Sample` when the source knows
    its own timestamp, or ``None`` (or ``{}``) when there is nothing to send this tick.
    """

    def read(self, now: datetime) -> dict[str, float] | Sample | None: ...


class PowerMonitor(Protocol):
    """Tells whether mains power is on; ``None`` when it cannot tell right now.

    A monitor that knows when the state last changed (between two ticks) may say so in a
    ``changed_at`` attribute; the agent then stamps its report with that instant, not the tick's.
    """

    def mains_on(self, now: datetime) -> bool | None: ...


# Share of the flexible loads shed at each demand-response level: 0 is normal operation, 1 sheds
# a third, 2 two thirds, 3 all of them.
SHED_BY_LEVEL = {0: 0.0, 1: 1 / 3, 2: 2 / 3, 3: 1.0}
MAX_CURTAIL_LEVEL = 3


@dataclass(frozen=True)
class Curtailment:
    """A demand-response event's call on this Pi: shed ``level`` until ``until``."""

    event: int | str
    level: int
    until: datetime


@dataclass
class LoadControl:
    """State of the simulated relay and of the demand-response curtailment, changed by the
    built-in commands. A curtailment ends by itself at its ``until``, restore or not; it is one
    attribute replaced whole, so the simulator (in a worker thread) never sees half of one."""

    relay_on: bool = True
    curtailment: Curtailment | None = None

    def shed(self, now: datetime) -> float:
        """The share (0 to 1) of the flexible loads switched off at ``now``."""
        current = self.curtailment
        if current is None or now >= current.until:
            return 0.0
        return SHED_BY_LEVEL[current.level]


class OutageSimulator:
    """Power monitor of a simulated home: the mains fail rarely and at random (``rate_per_hour``;
    0 for never), for a few seconds to minutes, or when told to (:meth:`cut`, the
    ``simulate_mains`` command)."""

    def __init__(
        self,
        rng: random.Random | None = None,
        *,
        rate_per_hour: float = 0.5,
        shortest_s: float = 5.0,
        longest_s: float = 600.0,
    ) -> None:
        self._rng = rng or random.Random()
        self.rate_per_hour = rate_per_hour
        self.shortest_s = shortest_s
        self.longest_s = longest_s
        self._last: datetime | None = None
        self._from: datetime | None = None
        self._until: datetime | None = None
        self._on = True
        self.changed_at: datetime | None = None  # when the mains last went off or came back
        # mains_on runs in a worker thread, cut() on the event loop.
        self._lock = threading.Lock()

    def cut(self, now: datetime, seconds: float) -> datetime:
        """Cut the mains from ``now`` for ``seconds`` (0 ends a cut now); returns when they return.

        A cut already under way is replaced: it ends at the new time instead.
        """
        with self._lock:
            if self._until is None or self._until <= now:
                self._from = now
            self._until = now + timedelta(seconds=max(0.0, seconds))
            return self._until

    def mains_on(self, now: datetime) -> bool:
        """Advance the simulation to ``now``; asking twice for the same instant changes nothing."""
        with self._lock:
            on, since = self._advance(now)
            if on != self._on:
                self._on, self.changed_at = on, since
            return on

    def _advance(self, now: datetime) -> tuple[bool, datetime]:
        """The state at ``now`` and the instant it began, were it to be new."""
        elapsed_s = 0.0 if self._last is None else max(0.0, (now - self._last).total_seconds())
        self._last = now
        since = now
        if self._until is not None:
            if now < self._until:
                return False, self._from or now
            since, self._until = self._until, None
        # Poisson arrivals, so the outage rate does not depend on how often we are asked.
        if self._rng.random() < 1.0 - math.exp(-self.rate_per_hour * elapsed_s / 3600.0):
            # Log-uniform: most cuts are short blips, a few last minutes.
            duration = math.exp(
                self._rng.uniform(math.log(self.shortest_s), math.log(self.longest_s))
            )
            self._from, self._until = now, now + timedelta(seconds=duration)
            return False, now
        return True, since


# Household model constants. A refrigerator compressor cycles about a third of the time.
FRIDGE_PERIOD_S = 40 * 60
FRIDGE_ON_S = 14 * 60
# (name, watts, shortest and longest run in seconds, flexible: demand response may switch it off)
APPLIANCES = (
    ("kettle", 2000.0, 120, 240, False),
    ("microwave", 1100.0, 60, 300, False),
    ("toaster", 900.0, 120, 240, False),
    ("hair dryer", 1600.0, 180, 480, False),
    ("washing machine heater", 2000.0, 600, 1200, True),
)
NOMINAL_V = 230.0


def _bell(hour: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((hour - centre) / width) ** 2)


class SimulatorSource:
    """A simulated household meter with a realistic daily load shape.

    Base load of 150-300 W, a morning and a larger evening peak (varying from day to day), a fridge
    compressor cycling, and appliance spikes (kettle, microwave, ...) that are likelier when people
    are active. Voltage stays within 230 V ±2 % and sags slightly as the load rises. ``energy_kwh``
    is a counter that never decreases. The relay and curtailment in ``load`` shape the output, and
    an :class:`OutageSimulator` in ``outages`` zeroes power and voltage during a cut.

    The flexible loads, those demand response may switch off, are a heat pump (300-600 W, drawing
    half of that when the home is quiet and up to one and a half times at its peaks) and the
    washing machine's heater. A curtailment sheds them by level (``SHED_BY_LEVEL``: a third, two
    thirds, all); the base load, fridge and other appliances keep running.
    """

    def __init__(
        self,
        seed: int | None = None,
        *,
        load: LoadControl | None = None,
        outages: OutageSimulator | None = None,
        tz: tzinfo | None = None,
    ) -> None:
        self._rng = random.Random(seed)
        self.load = load or LoadControl()
        self.outages = outages
        # None means the Pi's local time, which is where the household lives.
        self._tz = tz
        self._day_seed = self._rng.getrandbits(64)
        self._peaks: tuple[date, tuple[float, float, float]] | None = None
        self._base_w = self._rng.uniform(150.0, 300.0)
        self._fridge_w = self._rng.uniform(90.0, 130.0)
        self._fridge_phase_s = self._rng.uniform(0.0, FRIDGE_PERIOD_S)
        self._energy_kwh = self._rng.uniform(1000.0, 20000.0)
        self._heat_pump_w = self._rng.uniform(300.0, 600.0)
        self._last: datetime | None = None
        self._last_power_w = 0.0
        self._running: list[tuple[datetime, float, bool]] = []  # (until, watts, flexible)

    def read(self, now: datetime) -> dict[str, float]:
        """Return ``power_w``, ``voltage_v`` and ``energy_kwh`` for the instant ``now``."""
        elapsed_s = 0.0 if self._last is None else max(0.0, (now - self._last).total_seconds())
        self._last = now
        self._energy_kwh += self._last_power_w * elapsed_s / 3_600_000.0
        if self.outages is not None and not self.outages.mains_on(now):
            power_w = volts = 0.0
        else:
            power_w = self._household_w(now, elapsed_s)
            volts = self._voltage(now, power_w)
        self._last_power_w = power_w
        return {
            "power_w": round(power_w, 1),
            "voltage_v": round(volts, 1),
            "energy_kwh": round(self._energy_kwh, 5),
        }

    def _hour(self, now: datetime) -> float:
        local = now.astimezone(self._tz)
        return local.hour + local.minute / 60.0 + local.second / 3600.0

    def _day_peaks(self, day: date) -> tuple[float, float, float]:
        # Seeded by date so a given day looks the same however often or finely it is sampled.
        if self._peaks is None or self._peaks[0] != day:
            rng = random.Random(f"{self._day_seed}:{day.isoformat()}")
            self._peaks = (
                day,
                (rng.uniform(300.0, 700.0), rng.uniform(80.0, 250.0), rng.uniform(600.0, 1200.0)),
            )
        return self._peaks[1]

    def _household_w(self, now: datetime, elapsed_s: float) -> float:
        hour = self._hour(now)
        morning, midday, evening = self._day_peaks(now.astimezone(self._tz).date())
        activity = (
            morning * _bell(hour, 7.25, 0.9)
            + midday * _bell(hour, 13.0, 1.5)
            + evening * _bell(hour, 19.0, 1.6)
        )
        fridge = (
            self._fridge_w
            if (now.timestamp() + self._fridge_phase_s) % FRIDGE_PERIOD_S < FRIDGE_ON_S
            else 0.0
        )
        starts_per_hour = 0.3 + 3.0 * activity / 1500.0
        if self._rng.random() < 1.0 - math.exp(-starts_per_hour * elapsed_s / 3600.0):
            _name, watts, shortest, longest, flexible = self._rng.choice(APPLIANCES)
            until = now + timedelta(seconds=self._rng.uniform(shortest, longest))
            self._running.append((until, watts, flexible))
        self._running = [running for running in self._running if running[0] > now]
        fixed = sum(watts for _until, watts, shed in self._running if not shed)
        flexible = sum(watts for _until, watts, shed in self._running if shed)
        flexible += self._heat_pump_w * (0.5 + min(activity, 1000.0) / 1000.0)

        if not self.load.relay_on:
            # Only the meter and relay electronics stay behind an open relay.
            return self._rng.uniform(0.5, 3.0)
        flexible *= 1.0 - self.load.shed(now)
        return (self._base_w + activity + fridge + fixed + flexible) * self._rng.uniform(0.97, 1.03)

    def _voltage(self, now: datetime, power_w: float) -> float:
        # The grid runs a little high at night when demand is low, and the house sags it under load.
        diurnal = 0.006 * math.cos(2 * math.pi * (self._hour(now) - 3.0) / 24.0)
        volts = NOMINAL_V * (1 + diurnal) - 0.0008 * power_w + self._rng.gauss(0.0, 0.3)
        return min(max(volts, NOMINAL_V * 0.98), NOMINAL_V * 1.02)


class CommandSource:
    """Runs a shell command each tick and reads a JSON values object (or a Sample) from stdout."""

    def __init__(self, command: str, *, timeout: float = 10.0) -> None:
        self.command = command
        self.timeout = timeout

    def read(self, now: datetime) -> Sample | None:
        """Run the command once; a failure is logged and skips this tick."""
        try:
            # The operator configures a shell command line on purpose (pipes, jq, ...).
            proc = subprocess.run(  # noqa: S602
                self.command,
                shell=True,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.warning("source command timed out after %g s: %s", self.timeout, self.command)
            return None
        if proc.returncode != 0:
            log.warning(
                "source command exited with %d: %s", proc.returncode, proc.stderr.strip()[-300:]
            )
            return None
        try:
            return parse_sample(json.loads(proc.stdout), now)
        except ValueError as exc:
            log.warning("source command printed no usable JSON object: %s", exc)
            return None


class FileSource:
    """Follows a JSON-lines file, one line per tick: ``{"ts": ..., "values": {...}}`` or values.

    Like ``tail -f``: it remembers how far it read, waits for a line to end with a newline before
    taking it, and starts over when the file is truncated or replaced. Bad lines are logged and
    skipped.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._offset = 0
        self._inode: int | None = None
        self._missing_logged = False

    def read(self, now: datetime) -> Sample | None:
        """Return the next complete line's sample, or ``None`` when no new line is there yet."""
        try:
            with self.path.open("rb") as handle:
                self._missing_logged = False
                stat = os.fstat(handle.fileno())
                if stat.st_ino != self._inode or stat.st_size < self._offset:
                    self._inode, self._offset = stat.st_ino, 0
                handle.seek(self._offset)
                for line in handle:
                    if not line.endswith(b"\n"):
                        return None
                    self._offset += len(line)
                    if not line.strip():
                        continue
                    try:
                        return parse_sample(json.loads(line), now)
                    except ValueError as exc:
                        log.warning("skipping bad line in %s: %s", self.path, exc)
        except FileNotFoundError:
            if not self._missing_logged:
                log.warning("source file %s does not exist (yet)", self.path)
                self._missing_logged = True
        return None


class PowerFileMonitor:
    """Reads mains state from a file that holds ``on`` or ``off`` (e.g. written by a UPS daemon)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._problem: str | None = None

    def mains_on(self, now: datetime) -> bool | None:
        """Return the state in the file, or ``None`` while it is missing or unreadable."""
        try:
            text = self.path.read_text().strip().lower()
        except OSError as exc:
            return self._unknown(f"cannot read power file {self.path}: {exc}")
        if text in ("on", "off"):
            self._problem = None
            return text == "on"
        if not text:
            return None  # caught between truncate and write; the next tick sees the new state
        return self._unknown(f"power file {self.path} should hold 'on' or 'off', not {text!r}")

    def _unknown(self, problem: str) -> None:
        # Polled every tick: say it once, not every second.
        if problem != self._problem:
            log.warning("%s", problem)
            self._problem = problem


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A command from the portal."""

    id: str
    name: str
    args: dict[str, Any]
    expires_at: datetime | None


@dataclass(frozen=True)
class CommandResult:
    """What a handler answers: ``status`` is ``done``, ``failed`` or ``rejected``."""

    status: str
    detail: str = ""


class CommandHandler(Protocol):
    """Runs a command; an exception becomes a ``failed`` result."""

    async def handle(self, command: Command) -> CommandResult: ...


MAX_SIMULATED_CUT_MINUTES = 24 * 60


def parse_curtail(args: dict[str, Any], now: datetime) -> Curtailment | str:
    """Read ``curtail`` args ``{"event": id, "level": 0-3, "until": ISO instant}``; a
    :class:`Curtailment`, or what is wrong with them."""
    usage = 'curtail needs args {"event": <id>, "level": <0 to 3>, "until": <ISO 8601 instant>}'
    if "kw" in args:
        return f'{usage}; {{"kw": ...}} is no longer supported: the portal sends a level'
    missing = {"event", "level", "until"} - set(args)
    if missing:
        return f"{usage}; missing {', '.join(sorted(missing))}"
    event, level, until = args["event"], args["level"], args["until"]
    if isinstance(event, bool) or not isinstance(event, int | str) or event == "":
        return f"{usage}; event must be the event's id, not {event!r}"
    if type(level) is not int or not 0 <= level <= MAX_CURTAIL_LEVEL:
        return f"{usage}; level must be a whole number from 0 to {MAX_CURTAIL_LEVEL}, not {level!r}"
    if not isinstance(until, str):
        return f"{usage}; until must be an ISO 8601 string, not {until!r}"
    try:
        end = parse_ts(until)
    except ValueError as exc:
        return f"{usage}; bad until: {exc}"
    if end <= now:
        return f"until {until} has passed; nothing to curtail"
    return Curtailment(event, level, end)


class RelayHooks:
    """Shell commands that switch real loads when a curtailment starts and ends: a relay, a GPIO
    line (``echo 1 > /sys/class/gpio/gpio17/value``), a smart plug's HTTP API, ...

    Each runs with ``EP_EVENT``, ``EP_LEVEL`` (0-3, 0 on restore), ``EP_SHED`` (the share of
    flexible load to switch off, 0 to 1) and ``EP_UNTIL`` (empty on restore) in its environment.
    Exit code 0 means it worked; anything else, or running past ``timeout``, is a failure whose
    output becomes the command's detail.
    """

    def __init__(
        self, on_curtail: str | None, on_restore: str | None, *, timeout: float = 30.0
    ) -> None:
        self.on_curtail = on_curtail
        self.on_restore = on_restore
        self.timeout = timeout

    async def run(self, curtailment: Curtailment | None, event: int | str | None) -> str | None:
        """Run ``on_curtail`` for a curtailment or ``on_restore`` (``curtailment`` None); None
        when it worked (or there is no command), else what went wrong."""
        command = self.on_restore if curtailment is None else self.on_curtail
        if not command:
            return None
        level = 0 if curtailment is None else curtailment.level
        env = {
            **os.environ,
            "EP_EVENT": "" if event is None else str(event),
            "EP_LEVEL": str(level),
            "EP_SHED": f"{SHED_BY_LEVEL[level]:.4f}",
            "EP_UNTIL": "" if curtailment is None else format_ts(curtailment.until),
        }
        # The operator configures a shell command line on purpose (redirections, pipes, ...).
        proc = await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            async with asyncio.timeout(self.timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            return f"{command!r} timed out after {self.timeout:g} s"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            said = out.decode(errors="replace").strip()[-300:]
            return f"{command!r} exited with {proc.returncode}" + (f": {said}" if said else "")
        return None


class BuiltinCommands:
    """``ping``, ``relay`` {"state": "on"|"off"}, ``curtail`` {"event", "level", "until"},
    ``restore`` (optionally {"event"}), and ``simulate_mains`` {"state": "lost", "minutes": m} |
    {"state": "restored"} when the mains are simulated (``mains``); a Pi on real mains rejects
    that one.

    A curtailment sheds the simulated flexible loads (``load``) and runs the ``hooks``' on_curtail
    command; it ends at its ``until`` by itself (running on_restore), should the portal's
    ``restore`` never come. A restore naming another event than the current curtailment's is
    stale (that event's end arriving after the next one's start) and changes nothing.
    """

    def __init__(
        self,
        load: LoadControl,
        mains: OutageSimulator | None = None,
        *,
        hooks: RelayHooks | None = None,
    ) -> None:
        self.load = load
        self.mains = mains
        self.hooks = hooks or RelayHooks(None, None)
        self._expiry: asyncio.Task[None] | None = None
        self._last: Curtailment | None = None  # the latest curtailment applied, ended or not
        # Curtail, restore and the end of a curtailment wait on their hooks: one at a time, so
        # a restore's hook finishing late never lifts the curtailment that came after it.
        self._switching = asyncio.Lock()

    async def handle(self, command: Command) -> CommandResult:
        """Apply the command to the simulated relay and load; unknown names are rejected."""
        args = command.args
        match command.name:
            case "ping":
                return CommandResult("done", "pong")
            case "relay":
                state = args.get("state")
                if state not in ("on", "off"):
                    return CommandResult("rejected", 'relay needs args {"state": "on" | "off"}')
                self.load.relay_on = state == "on"
                return CommandResult("done", f"relay {state}")
            case "curtail":
                async with self._switching:
                    return await self._curtail(args)
            case "restore":
                async with self._switching:
                    return await self._restore(args)
            case "simulate_mains":
                return self._simulate_mains(args)
            case _:
                return CommandResult("rejected", f"unknown command {command.name!r}")

    def current(self, now: datetime) -> Curtailment | None:
        """The curtailment in force at ``now``, if any."""
        current = self.load.curtailment
        return current if current is not None and now < current.until else None

    async def _curtail(self, args: dict[str, Any]) -> CommandResult:
        curtailment = parse_curtail(args, datetime.now(UTC))
        if isinstance(curtailment, str):
            return CommandResult("rejected", curtailment)
        problem = await self.hooks.run(curtailment, curtailment.event)
        if problem:
            return CommandResult("failed", f"on_curtail failed, loads left as they were: {problem}")
        self.load.curtailment = self._last = curtailment
        self._expire_at(curtailment)
        shed = round(SHED_BY_LEVEL[curtailment.level] * 100)
        return CommandResult(
            "done",
            f"curtailed for event {curtailment.event} at level {curtailment.level} "
            f"({shed}% of flexible load off) until {format_ts(curtailment.until)}",
        )

    async def _restore(self, args: dict[str, Any]) -> CommandResult:
        if set(args) - {"event"}:
            return CommandResult("rejected", 'restore takes no args or {"event": <id>}')
        event = args.get("event")
        now = datetime.now(UTC)
        current = self.current(now)
        if event is not None and current is not None and current.event != event:
            return CommandResult(
                "done",
                f"not curtailed for event {event} (curtailed for event {current.event} until "
                f"{format_ts(current.until)}); nothing changed",
            )
        # Run even when not curtailed here (say after a restart): restoring twice is harmless,
        # a relay left open is not.
        problem = await self.hooks.run(None, event if current is None else current.event)
        self._lift()
        if problem:
            return CommandResult("failed", f"on_restore failed: {problem}")
        if current is None:
            ended = self._last
            if ended is not None and event in (None, ended.event) and ended.until <= now:
                return CommandResult(
                    "done",
                    f"curtailment for event {ended.event} had ended by itself at "
                    f"{format_ts(ended.until)}; loads as normal",
                )
            return CommandResult("done", "not curtailed; loads as normal")
        return CommandResult("done", f"curtailment for event {current.event} lifted")

    def _lift(self) -> None:
        self.load.curtailment = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expire_at(self, curtailment: Curtailment) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.create_task(self._expire(curtailment))

    async def _expire(self, curtailment: Curtailment) -> None:
        await asyncio.sleep(max(0.0, (curtailment.until - datetime.now(UTC)).total_seconds()))
        async with self._switching:
            if self.load.curtailment is not curtailment:
                return  # restored or replaced meanwhile
            log.warning(
                "curtailment for event %s ended at %s without a restore; loads back",
                curtailment.event,
                format_ts(curtailment.until),
            )
            self.load.curtailment, self._expiry = None, None
            problem = await self.hooks.run(None, curtailment.event)
            if problem:
                log.error("on_restore failed when the curtailment ended: %s", problem)

    async def aclose(self) -> None:
        """Stop waiting for the curtailment's end (the agent is stopping)."""
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
            self._expiry = None

    def _simulate_mains(self, args: dict[str, Any]) -> CommandResult:
        if self.mains is None:
            return CommandResult(
                "rejected",
                "this Pi measures real mains; simulate_mains works only on a Pi started with the "
                "simulator (--source simulator, without --power-file)",
            )
        now = datetime.now(UTC)
        state, minutes = args.get("state"), _finite(args.get("minutes"))
        if state == "restored" and set(args) == {"state"}:
            self.mains.cut(now, 0)
            return CommandResult("done", "simulated mains restored")
        if (
            state == "lost"
            and set(args) == {"state", "minutes"}
            and minutes is not None
            and 0 < minutes <= MAX_SIMULATED_CUT_MINUTES
        ):
            until = self.mains.cut(now, minutes * 60)
            return CommandResult("done", f"simulated mains cut until {format_ts(until)}")
        return CommandResult(
            "rejected",
            'simulate_mains needs args {"state": "lost", "minutes": <0 to '
            f'{MAX_SIMULATED_CUT_MINUTES}>}} or {{"state": "restored"}}',
        )


class HookCommands:
    """Runs an external program with the command as JSON on stdin.

    Exit code 0 means ``done``, 2 ``rejected``, anything else ``failed``; stdout (or stderr when
    stdout is empty) becomes the detail.
    """

    def __init__(self, executable: str, *, timeout: float = 30.0) -> None:
        self.executable = executable
        self.timeout = timeout

    async def handle(self, command: Command) -> CommandResult:
        """Run the hook once for ``command``."""
        payload = {
            "type": "command",
            "id": command.id,
            "name": command.name,
            "args": command.args,
            "expires_at": format_ts(command.expires_at) if command.expires_at else None,
        }
        proc = await asyncio.create_subprocess_exec(
            self.executable,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(self.timeout):
                out, err = await proc.communicate(json.dumps(payload).encode())
        except TimeoutError:
            return CommandResult("failed", f"command hook timed out after {self.timeout:g} s")
        finally:
            # Timed out or the agent is stopping: do not leave the hook running.
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        status = {0: "done", 2: "rejected"}.get(proc.returncode, "failed")
        detail = (out or err).decode(errors="replace").strip()[:1000]
        return CommandResult(status, detail or f"hook exited with {proc.returncode}")


# --------------------------------------------------------------------------------------------------
# Durable queue
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedRow:
    """A reading (``telemetry``) or mains report (``power``) waiting for the portal's ack."""

    seq: int
    msg_id: str
    kind: str
    ts: str
    body: dict[str, Any]


class OutboxQueue:
    """SQLite queue of rows not yet acknowledged by the portal; it survives restarts."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            msg_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL CHECK (kind IN ('telemetry', 'power')),
            ts TEXT NOT NULL,
            body TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path)
        # WAL with synchronous=NORMAL survives a crash and spares the SD card an fsync per row;
        # a sudden power cut may lose only the last moment of readings.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.executescript(self.SCHEMA)

    def add(self, kind: str, ts: str, body: dict[str, Any]) -> QueuedRow:
        """Store a row under a new msg_id and return it."""
        msg_id = uuid.uuid4().hex
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO outbox (msg_id, kind, ts, body) VALUES (?, ?, ?, ?)",
                (msg_id, kind, ts, json.dumps(body)),
            )
        return QueuedRow(cursor.lastrowid or 0, msg_id, kind, ts, body)

    def peek(self, limit: int) -> list[QueuedRow]:
        """Return up to ``limit`` oldest rows, oldest first."""
        rows = self._db.execute(
            "SELECT seq, msg_id, kind, ts, body FROM outbox ORDER BY seq LIMIT ?", (limit,)
        )
        return [
            QueuedRow(seq, mid, kind, ts, json.loads(body)) for seq, mid, kind, ts, body in rows
        ]

    def delete(self, seqs: list[int]) -> None:
        """Remove the rows with these sequence numbers."""
        with self._db:
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def get_meta(self, key: str) -> str | None:
        """Return a remembered setting such as the last known mains state."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Remember a setting across restarts."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        """Close the database; unacknowledged rows stay for the next run."""
        self._db.close()


# --------------------------------------------------------------------------------------------------
# Agent
# --------------------------------------------------------------------------------------------------


class Backoff:
    """Exponential backoff with full jitter: a delay drawn from [0, min(cap, base * 2**n))."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count the attempt."""
        ceiling = min(self.cap, self.base * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Start again from ``base`` after a success."""
        self.attempt = 0


@dataclass(frozen=True)
class Reading:
    """A reading the agent produced, as queued and sent."""

    msg_id: str
    ts: str
    values: dict[str, float]


@dataclass
class AgentStats:
    """Counters of what the agent did since it was created."""

    produced: int = 0  # readings stored in the queue
    power_events: int = 0  # mains lost/restored reports stored in the queue
    frames_sent: int = 0  # telemetry and power frames, batches included
    batches_sent: int = 0
    acked: int = 0  # queued rows the portal acknowledged, hence deleted
    dropped: int = 0  # queued rows the portal refused for good, hence deleted
    rejected_keys: int = 0  # values the portal refused inside acknowledged frames
    same_instant: int = 0  # samples not kept: taken in the same millisecond as the one before
    connections: int = 0
    commands: int = 0  # commands executed (a repeated command id is answered, not re-run)


@dataclass
class _InFlight:
    seqs: list[int]
    sent_at: float


class AckTimeout(Exception):
    """The portal did not acknowledge a frame in time; the connection is treated as broken."""


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives just as the
    # event is set, which left stop() waiting forever; asyncio.timeout() does not.
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class Agent:
    """Produces readings on a fixed interval, queues them durably and streams them to the portal.

    ``run()`` works until ``stop()``; it reconnects on its own with exponential backoff and full
    jitter. Count what happened with ``stats`` (``produced``, ``acked``, ``dropped``, ...),
    ``produced`` (the most recent :class:`Reading` objects, oldest first) and ``queue_length()``
    (rows still waiting for an ack). Call ``close()`` when done with the agent.
    """

    def __init__(
        self,
        url: str,
        token: str,
        device: str,
        source: Source,
        queue_path: str | os.PathLike[str] | None = None,
        interval: float = 1.0,
        *,
        batch_size: int = 100,
        heartbeat: float = 15.0,
        power_monitor: PowerMonitor | None = None,
        command_handler: CommandHandler | None = None,
        relay_hooks: RelayHooks | None = None,
        offline_while_mains_off: bool = False,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        stable_after: float = 30.0,
        ack_timeout: float = 30.0,
        max_in_flight: int = 4,
        max_frame_bytes: int = 32 * 1024,
        open_timeout: float = 10.0,
        produced_history: int = 10_000,
    ) -> None:
        parse_uri(url)  # fail now on a malformed URL rather than retrying it forever
        if interval <= 0 or batch_size < 1 or max_in_flight < 1:
            raise ValueError("interval must be > 0, batch_size and max_in_flight >= 1")
        self.url = url
        self.token = token
        self.device = device
        self.source = source
        self.interval = interval
        self.batch_size = batch_size
        self.heartbeat = heartbeat
        self.power_monitor = power_monitor
        if command_handler is None:
            # A simulated source obeys the built-in relay and curtail commands through its load.
            load = getattr(source, "load", None) or LoadControl()
            mains = power_monitor if isinstance(power_monitor, OutageSimulator) else None
            command_handler = BuiltinCommands(load, mains, hooks=relay_hooks)
        self.command_handler = command_handler
        self.offline_while_mains_off = offline_while_mains_off
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stable_after = stable_after
        self.ack_timeout = ack_timeout
        self.max_in_flight = max_in_flight
        self.max_frame_bytes = max_frame_bytes
        self.open_timeout = open_timeout

        self.queue = OutboxQueue(queue_path or f"pi-agent-{device}.sqlite3")
        self.stats = AgentStats()
        self.produced: collections.deque[Reading] = collections.deque(maxlen=produced_history)
        self._mains_on = self.queue.get_meta("mains") != "off"
        self._backoff = Backoff(backoff_base, backoff_cap)
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._in_flight: dict[str, _InFlight] = {}
        self._frame_budget = max_frame_bytes
        self._last_sent = 0.0
        self._last_reading_ts = ""  # formatted time of the last reading kept
        self._pause_until = 0.0
        self._rate_delay = 0.0
        self._running_commands: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        # Results of recent commands: the portal re-sends a command whose result it did not get.
        self._results: collections.OrderedDict[str, CommandResult] = collections.OrderedDict()
        self._seen_rejections: set[str] = set()

    # -- public ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a socket to the portal is open."""
        return self._ws is not None

    @property
    def router_down(self) -> bool:
        """True while the simulated router is off with the mains (``offline_while_mains_off``)."""
        return self.offline_while_mains_off and not self._mains_on

    def queue_length(self) -> int:
        """Rows (readings and power reports) still waiting for the portal's ack."""
        return len(self.queue)

    async def run(self) -> None:
        """Produce and stream until ``stop()``; raises only on a local failure (e.g. disk)."""
        if self._running:
            raise RuntimeError("this agent is already running")
        self._running = True
        self._stopped.clear()
        tasks = [asyncio.create_task(self._produce()), asyncio.create_task(self._connect_loop())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            pending = tasks + list(self._background)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if isinstance(self.command_handler, BuiltinCommands):
                await self.command_handler.aclose()
            self._running = False
            self._stopped.set()
            log.info("stopped; %d row(s) kept in the queue", self.queue_length())

    def request_stop(self) -> None:
        """Ask ``run()`` to finish, without waiting (for signal handlers)."""
        self._stopping.set()

    async def stop(self) -> None:
        """Close the socket, stop producing and wait for ``run()`` to return; the queue is kept."""
        self._stopping.set()
        if self._running:
            await self._stopped.wait()

    def close(self) -> None:
        """Release the queue database. Call after ``run()`` has returned."""
        self.queue.close()

    # -- producing ---------------------------------------------------------------------------------

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            now = datetime.now(UTC)
            # Sources may block (a shell command, a slow file system): keep them off the loop.
            mains, sample = await asyncio.to_thread(self._measure, now)
            if mains is not None and mains != self._mains_on:
                changed_at = getattr(self.power_monitor, "changed_at", None)
                # Never a time ahead of the tick: a monitor's clock is not trusted beyond ours.
                self._record_power(mains, min(changed_at or now, now))
            if sample is not None and sample.values:
                self._record_reading(sample)
            next_tick += self.interval
            current = loop.time()
            if next_tick < current:
                # A slow source: skip the missed ticks instead of bursting to catch up.
                next_tick = current
            await asyncio.sleep(next_tick - current)

    def _measure(self, now: datetime) -> tuple[bool | None, Sample | None]:
        # Sources and monitors are plug-ins: one failing must not stop the agent.
        mains = None
        if self.power_monitor is not None:
            try:
                mains = self.power_monitor.mains_on(now)
            except Exception:
                log.exception("power monitor failed")
        try:
            result = self.source.read(now)
        except Exception:
            log.exception("source failed to read")
            return mains, None
        if isinstance(result, dict):
            result = Sample(now, result)
        return mains, None if result is None else Sample(result.ts, clean_values(result.values))

    def _record_reading(self, sample: Sample) -> None:
        ts = format_ts(sample.ts)
        if ts == self._last_reading_ts:
            # After a stall the next tick comes at once, and can fall in the same millisecond:
            # times go out in milliseconds, and a second reading of a sensor at the same instant
            # is the same reading to the portal (it keeps one). An earlier time (the clock was
            # set back) is a reading of its own and is kept.
            self.stats.same_instant += 1
            return
        self._last_reading_ts = ts
        row = self.queue.add(TELEMETRY, ts, sample.values)
        self.stats.produced += 1
        self.produced.append(Reading(row.msg_id, row.ts, sample.values))
        self._wake.set()

    def _record_power(self, on: bool, now: datetime) -> None:
        state = "restored" if on else "lost"
        self.queue.add(POWER, format_ts(now), {"state": state})
        # Remembered so a restart neither repeats "lost" nor misses a "restored".
        self.queue.set_meta("mains", "on" if on else "off")
        self._mains_on = on
        self.stats.power_events += 1
        log.warning("mains power %s", state)
        self._wake.set()

    # -- connection --------------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            if self.router_down:
                # No network until the mains return; then connect at once, without backoff.
                await _wait_event(self._stopping, self.interval)
                continue
            up_since: float | None = None
            try:
                async with connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self.token}"},
                    open_timeout=self.open_timeout,
                ) as ws:
                    up_since = loop.time()
                    self.stats.connections += 1
                    log.info("connected to %s as %s", self.url, self.device)
                    await self._session(ws)
                    if self.router_down:
                        log.warning("mains lost: the router is down too, offline until they return")
                    elif not self._stopping.is_set():
                        log.warning("portal closed the connection")
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    log.error(
                        "portal refused the device token (HTTP %d): check --token or "
                        "PI_AGENT_TOKEN; retrying with backoff",
                        status,
                    )
                else:
                    log.warning("portal refused the handshake with HTTP %d", status)
            except AckTimeout as exc:
                log.warning("%s; reconnecting", exc)
            except (OSError, WebSocketException) as exc:
                log.warning("connection to %s failed: %s", self.url, str(exc) or type(exc).__name__)
            if self._stopping.is_set():
                return
            if self.router_down:
                continue
            if up_since is not None and loop.time() - up_since >= self.stable_after:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            log.info("reconnecting in %.1f s", delay)
            await _wait_event(self._stopping, delay)

    async def _session(self, ws: ClientConnection) -> None:
        # Every unacked row is resent on a new connection: acks only come on the socket they
        # belong to, and the portal drops duplicate readings.
        self._in_flight = {}
        self._frame_budget = self.max_frame_bytes
        self._pause_until = 0.0
        self._last_sent = asyncio.get_running_loop().time()
        self._ws = ws
        tasks = [
            asyncio.create_task(self._send_loop(ws)),
            asyncio.create_task(self._receive_loop(ws)),
            asyncio.create_task(self._stopping.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._ws = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()

    async def _send(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        await ws.send(json.dumps(frame, separators=(",", ":")))
        self._last_sent = asyncio.get_running_loop().time()

    async def _send_loop(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.router_down:
                return  # the socket goes with the router, before the "lost" report can go out
            now = loop.time()
            ack_deadline = min(
                (entry.sent_at + self.ack_timeout for entry in self._in_flight.values()),
                default=math.inf,
            )
            if ack_deadline <= now:
                raise AckTimeout(f"no ack from the portal within {self.ack_timeout:g} s")
            if self._pause_until > now:
                await asyncio.sleep(self._pause_until - now)
                continue
            # Cleared before looking, so a reading queued while we wait below still wakes us.
            self._wake.clear()
            picked = self._next_frame()
            if picked is not None:
                msg_id, frame, seqs = picked
                self._in_flight[msg_id] = _InFlight(seqs, now)
                await self._send(ws, frame)
                self.stats.frames_sent += 1
                if "batch" in frame:
                    self.stats.batches_sent += 1
                continue
            heartbeat_due = self._last_sent + self.heartbeat
            if heartbeat_due <= now:
                await self._send(ws, {"type": "heartbeat"})
                continue
            await _wait_event(self._wake, min(heartbeat_due, ack_deadline) - now)

    def _next_frame(self) -> tuple[str, dict[str, Any], list[int]] | None:
        """Build the next frame from the oldest rows not in flight: (msg_id, frame, row seqs)."""
        if len(self._in_flight) >= self.max_in_flight:
            return None
        busy = {seq for entry in self._in_flight.values() for seq in entry.seqs}
        rows = [row for row in self.queue.peek(len(busy) + self.batch_size) if row.seq not in busy]
        if not rows:
            return None
        first = rows[0]
        if first.kind == POWER:
            frame = {"type": POWER, "msg_id": first.msg_id, "state": first.body["state"]}
            return first.msg_id, {**frame, "ts": first.ts}, [first.seq]
        run = list(itertools.takewhile(lambda row: row.kind == TELEMETRY, rows))
        if len(run) == 1:
            frame = {
                "type": TELEMETRY,
                "msg_id": first.msg_id,
                "ts": first.ts,
                "values": first.body,
            }
            return first.msg_id, frame, [first.seq]
        # A backlog (after a reconnect, or when the portal was slow) goes out in batches, each
        # under a byte budget so it stays well below the portal's frame limit.
        batch: list[dict[str, Any]] = []
        seqs: list[int] = []
        size = 64
        for row in run:
            entry = {"ts": row.ts, "values": row.body}
            size += len(json.dumps(entry, separators=(",", ":"))) + 1
            if batch and size > self._frame_budget:
                break
            batch.append(entry)
            seqs.append(row.seq)
        msg_id = uuid.uuid4().hex
        return msg_id, {"type": TELEMETRY, "msg_id": msg_id, "batch": batch}, seqs

    async def _receive_loop(self, ws: ClientConnection) -> None:
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                log.warning("portal sent a frame that is not JSON: %.200r", raw)
                continue
            kind = msg.get("type") if isinstance(msg, dict) else None
            if kind == "ack":
                self._on_ack(msg)
            elif kind == "error":
                self._on_error(msg)
            elif kind == "command":
                self._on_command(msg)
            else:
                log.debug("ignoring portal frame %.200r", raw)

    def _take_in_flight(self, msg: dict[str, Any]) -> _InFlight | None:
        msg_id = msg.get("msg_id")
        return self._in_flight.pop(msg_id, None) if isinstance(msg_id, str) else None

    def _on_ack(self, msg: dict[str, Any]) -> None:
        entry = self._take_in_flight(msg)
        if entry is None:
            log.debug("ack for unknown msg_id %r", msg.get("msg_id"))
            return
        self.queue.delete(entry.seqs)
        self.stats.acked += len(entry.seqs)
        rejected = msg.get("rejected") or []
        self.stats.rejected_keys += len(rejected)
        # The portal refused these values for good and kept the rest of the frame. The same
        # refusal would come with every reading, so each reason is logged once.
        reasons = {
            f"{item.get('key', 'entry')}: {item.get('error')}"
            if isinstance(item, dict)
            else str(item)
            for item in rejected
        }
        if new := reasons - self._seen_rejections:
            self._seen_rejections |= new
            log.warning("portal rejected values: %s", "; ".join(sorted(new)))
        self._rate_delay = 0.0
        self._wake.set()

    def _on_error(self, msg: dict[str, Any]) -> None:
        code, detail = msg.get("code"), msg.get("detail")
        entry = self._take_in_flight(msg)
        self._wake.set()
        if code == "rate_limited":
            # Keep the rows (they become sendable again) and hold back all sending for a while.
            self._rate_delay = min(self.backoff_cap, max(self.backoff_base, self._rate_delay * 2))
            self._pause_until = asyncio.get_running_loop().time() + self._rate_delay
            log.warning("portal is rate-limiting us; pausing sends for %.2f s", self._rate_delay)
            return
        if entry is None:
            log.warning("portal error %s: %s", code, detail)
            return
        if code == "too_large" and len(entry.seqs) > 1:
            self._frame_budget = max(1024, self._frame_budget // 2)
            log.warning("portal found a batch too large; resending in smaller batches")
            return
        self.queue.delete(entry.seqs)
        self.stats.dropped += len(entry.seqs)
        log.error(
            "portal refused %d queued row(s) of %s for good (%s: %s); dropped them",
            len(entry.seqs),
            msg.get("msg_id"),
            code,
            detail,
        )

    # -- commands ----------------------------------------------------------------------------------

    def _on_command(self, msg: dict[str, Any]) -> None:
        command_id = msg.get("id")
        if not isinstance(command_id, str) or not command_id:
            log.warning("ignoring a command without an id: %.200r", msg)
            return
        if command_id in self._running_commands:
            return  # its result goes out when it finishes
        if command_id in self._results:
            # Already done: the portal missed our answer, so answer again without re-running.
            work = self._send_result(command_id, self._results[command_id])
        else:
            self._running_commands.add(command_id)
            work = self._run_command(command_id, msg)
        # Commands run beside the receive loop so a slow hook does not hold up acks.
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_command(self, command_id: str, msg: dict[str, Any]) -> None:
        try:
            result = await self._execute(command_id, msg)
        finally:
            self._running_commands.discard(command_id)
        self.stats.commands += 1
        self._results[command_id] = result
        while len(self._results) > 256:
            self._results.popitem(last=False)
        log.info("command %s %s: %s %s", msg.get("name"), command_id, result.status, result.detail)
        await self._send_result(command_id, result)

    async def _execute(self, command_id: str, msg: dict[str, Any]) -> CommandResult:
        name, args = msg.get("name"), msg.get("args") or {}
        if not isinstance(name, str) or not isinstance(args, dict):
            return CommandResult("rejected", "a command needs a name and an args object")
        expires_at = None
        if msg.get("expires_at") is not None:
            try:
                expires_at = parse_ts(msg["expires_at"])
            except ValueError as exc:
                return CommandResult("rejected", f"bad expires_at: {exc}")
            if expires_at <= datetime.now(UTC):
                return CommandResult("rejected", "expired")
        try:
            return await self.command_handler.handle(Command(command_id, name, args, expires_at))
        except Exception as exc:
            log.exception("command handler failed on %s", name)
            return CommandResult("failed", f"{type(exc).__name__}: {exc}")

    async def _send_result(self, command_id: str, result: CommandResult) -> None:
        ws = self._ws
        if ws is None:
            return  # offline: the portal re-sends the command after reconnecting
        frame = {"type": "command_result", "id": command_id, "status": result.status}
        with suppress(ConnectionClosed):
            await self._send(ws, {**frame, "detail": result.detail})


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_source(spec: str, seed: int | None, outages: OutageSimulator | None) -> Source:
    """Make a source from ``simulator``, ``command:<shell command>`` or ``file:<path>``."""
    kind, _, arg = spec.partition(":")
    if kind == "simulator" and not arg:
        return SimulatorSource(seed, outages=outages)
    if kind == "command" and arg:
        return CommandSource(arg)
    if kind == "file" and arg:
        return FileSource(arg)
    raise ValueError(f"unknown source {spec!r}; use simulator, command:<cmd> or file:<path>")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; the URL and token may come from PI_AGENT_URL / PI_AGENT_TOKEN."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("PI_AGENT_URL"), help="portal socket URL")
    parser.add_argument(
        "--token",
        default=os.environ.get("PI_AGENT_TOKEN"),
        help="device token (prefer PI_AGENT_TOKEN: arguments show in ps)",
    )
    parser.add_argument("--device", required=True, help="device uid, e.g. pi-0001")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    parser.add_argument(
        "--source", default="simulator", help="simulator | command:<shell cmd> | file:<path>"
    )
    parser.add_argument("--seed", type=int, help="seed for the simulator")
    parser.add_argument("--queue", help="SQLite queue file (default ./pi-agent-<device>.sqlite3)")
    parser.add_argument("--batch-size", type=int, default=100, help="readings per backlog frame")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="idle seconds per heartbeat")
    power = parser.add_mutually_exclusive_group()
    power.add_argument(
        "--simulate-outages", action="store_true", help="cut the mains at random, rarely"
    )
    power.add_argument("--power-file", help="file holding 'on' or 'off' for the mains state")
    parser.add_argument(
        "--outage-rate", type=float, default=0.5, help="simulated outages per hour (default 0.5)"
    )
    parser.add_argument(
        "--router-on-ups",
        action="store_true",
        help="keep the socket during simulated cuts (default: drop it, as a router losing power)",
    )
    parser.add_argument("--command-hook", help="program run for each command (JSON on stdin)")
    parser.add_argument(
        "--on-curtail", help="shell command switching real loads off for a curtailment"
    )
    parser.add_argument("--on-restore", help="shell command switching them back on")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give the portal URL with --url or PI_AGENT_URL")
    if not args.token:
        parser.error("give the device token with --token or PI_AGENT_TOKEN")
    if args.command_hook and (args.on_curtail or args.on_restore):
        parser.error(
            "--command-hook handles every command: it cannot go with --on-curtail/--on-restore"
        )
    return args


async def _run_until_signalled(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, agent.request_stop)
    await agent.run()


def main(argv: list[str] | None = None) -> int:
    """Run the agent from the command line until SIGINT or SIGTERM."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    outages = None
    if args.simulate_outages or (args.source == "simulator" and not args.power_file):
        # A simulated home always has simulated mains, so the portal can cut them on command
        # (simulate_mains); they fail at random only with --simulate-outages.
        rng = random.Random(None if args.seed is None else f"{args.seed}:outages")
        rate = args.outage_rate if args.simulate_outages else 0.0
        outages = OutageSimulator(rng, rate_per_hour=rate)
    try:
        source = build_source(args.source, args.seed, outages)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    monitor: PowerMonitor | None = outages
    if args.power_file:
        monitor = PowerFileMonitor(args.power_file)
    agent = Agent(
        args.url,
        args.token,
        args.device,
        source,
        args.queue,
        args.interval,
        batch_size=args.batch_size,
        heartbeat=args.heartbeat,
        power_monitor=monitor,
        command_handler=HookCommands(args.command_hook) if args.command_hook else None,
        relay_hooks=RelayHooks(args.on_curtail, args.on_restore),
        offline_while_mains_off=outages is not None and not args.router_on_ups,
    )
    try:
        asyncio.run(_run_until_signalled(agent))
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
