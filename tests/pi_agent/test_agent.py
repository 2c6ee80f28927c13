"""The Pi agent against a small real WebSocket server that plays the portal's side of the protocol.

No Django and no database: the portal here is a ``websockets`` server on 127.0.0.1 that acks,
refuses, errors, drops and sends commands as each test scripts it.
"""

import asyncio
import collections
import itertools
import json
import math
import random
import sys
from collections.abc import Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from pi_agent.energy_pi_agent import (
    Agent,
    Backoff,
    BuiltinCommands,
    Command,
    CommandResult,
    CommandSource,
    Curtailment,
    FileSource,
    HookCommands,
    LoadControl,
    OutageSimulator,
    PowerFileMonitor,
    RelayHooks,
    Sample,
    SimulatorSource,
    format_ts,
    parse_ts,
)

TOKEN = "good-token"


class FakePortal:
    """The portal end of the device protocol, scripted per test.

    ``script`` maps the number of a telemetry frame (1-based, over all connections) to what the
    portal does instead of acking it: ``"drop"`` closes the socket and refuses handshakes (503)
    until ``accepting`` is set again; ``"invalid_payload"`` / ``"rate_limited"`` answer that error.
    The first ``silent_connections`` connections never ack anything.
    Readings are recorded only when acked, so a reading counted twice was acked twice.
    """

    def __init__(self, *, refuse_first: int = 0, accepting: bool = True) -> None:
        self.refuse_first = refuse_first
        self.accepting = accepting
        self.silent_connections = 0
        self.script: dict[int, str] = {}
        self.commands_on_connect: list[dict[str, Any]] = []
        self.handshakes = 0
        self.refused = 0
        self.connections = 0
        self.frames: list[dict[str, Any]] = []
        self.telemetry_frames = 0
        self.acked_readings: collections.Counter[tuple[str, str]] = collections.Counter()
        self.acked_values: list[dict[str, float]] = []
        self.acked_power: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.live: set[ServerConnection] = set()

    async def __aenter__(self) -> "FakePortal":
        self._server = await serve(
            self._handler, "127.0.0.1", 0, process_request=self._process_request
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws/devices/"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        self.handshakes += 1
        if not self.accepting:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "portal down\n")
        if self.refuse_first > 0 or request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.refuse_first -= 1
            self.refused += 1
            return connection.respond(HTTPStatus.FORBIDDEN, "bad token\n")
        return None

    async def send(self, frame: dict[str, Any]) -> None:
        for ws in self.live:
            await ws.send(json.dumps(frame))

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        silent = self.connections <= self.silent_connections
        self.live.add(ws)
        with suppress(ConnectionClosed):
            for command in self.commands_on_connect:
                await ws.send(json.dumps(command))
            async for raw in ws:
                msg = json.loads(raw)
                self.frames.append(msg)
                if msg["type"] == "telemetry":
                    await self._on_telemetry(ws, msg, silent)
                elif msg["type"] == "power" and not silent:
                    await ws.send(json.dumps({"type": "ack", "msg_id": msg["msg_id"]}))
                    self.acked_power.append(msg)
                elif msg["type"] == "command_result":
                    self.results.append(msg)
        self.live.discard(ws)

    async def _on_telemetry(self, ws: ServerConnection, msg: dict[str, Any], silent: bool) -> None:
        self.telemetry_frames += 1
        action = self.script.get(self.telemetry_frames)
        if action == "drop":
            self.accepting = False
            await ws.close(1011, "portal restarting")
            return
        if action is not None:
            await ws.send(json.dumps({"type": "error", "code": action, "msg_id": msg["msg_id"]}))
            return
        if silent:
            return
        entries = msg.get("batch", [msg])
        ack = {"type": "ack", "msg_id": msg["msg_id"], "accepted": len(entries), "rejected": []}
        await ws.send(json.dumps(ack))
        for entry in entries:
            self.acked_readings[(entry["ts"], json.dumps(entry["values"], sort_keys=True))] += 1
            self.acked_values.append(entry["values"])

    def batch_frames(self) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if "batch" in frame]


class CountingSource:
    """Produces ``{"n": 1}``, ``{"n": 2}``, ... up to ``total`` readings, then nothing."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0

    def read(self, now: datetime) -> dict[str, float] | None:
        if self.count >= self.total:
            return None
        self.count += 1
        return {"n": float(self.count)}


class ManualSource:
    """Produces exactly the readings a test pushes, one per tick."""

    def __init__(self) -> None:
        self.pending: collections.deque[dict[str, float]] = collections.deque()

    def read(self, now: datetime) -> dict[str, float] | None:
        return self.pending.popleft() if self.pending else None


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def make_agent(tmp_path):
    """Build agents with fast timings on one queue file; their queues are closed after the test."""
    agents: list[Agent] = []

    def make(portal: FakePortal, source: Any, **options: Any) -> Agent:
        settings = {
            "interval": 0.02,
            "backoff_base": 0.02,
            "backoff_cap": 0.1,
            "heartbeat": 5.0,
            **options,
        }
        agent = Agent(portal.url, TOKEN, "pi-test", source, tmp_path / "queue.sqlite3", **settings)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.close()


@asynccontextmanager
async def running(agent: Agent):
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        await asyncio.wait_for(agent.stop(), 5)
        await task  # re-raises whatever run() died of


def produced_keys(agent: Agent) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(
        (reading.ts, json.dumps(reading.values, sort_keys=True)) for reading in agent.produced
    )


@pytest.mark.asyncio
async def test_readings_are_sent_as_single_frames_and_leave_the_queue_when_acked(make_agent):
    async with FakePortal() as portal:
        source = ManualSource()
        agent = make_agent(portal, source)
        async with running(agent):
            await wait_until(lambda: agent.connected, "a connection")
            for n in range(1, 4):
                source.pending.append({"power_w": 100.0 * n, "voltage_v": 230.0})
                await wait_until(lambda n=n: agent.stats.acked == n, f"ack number {n}")
                assert agent.queue_length() == 0

        assert agent.stats.produced == 3
        assert produced_keys(agent) == portal.acked_readings
        telemetry = [frame for frame in portal.frames if frame["type"] == "telemetry"]
        assert [set(frame) for frame in telemetry] == [{"type", "msg_id", "ts", "values"}] * 3
        assert [frame["msg_id"] for frame in telemetry] == [r.msg_id for r in agent.produced]
        assert telemetry[0]["values"] == {"power_w": 100.0, "voltage_v": 230.0}
        # RFC 3339 in UTC with milliseconds and Z, e.g. 2026-11-22T10:00:00.250Z
        ts = telemetry[0]["ts"]
        assert len(ts) == 24 and ts.endswith("Z")
        assert datetime.fromisoformat(ts).tzinfo is not None


def test_a_sample_in_the_same_millisecond_as_the_last_is_not_kept(tmp_path):
    # After a stall the next tick comes at once: two samples can share the millisecond that
    # the readings' times are sent with, and the portal would see one instant twice. Samples
    # after the clock was set back (five minutes here) are readings of their own: kept.
    agent = Agent("ws://127.0.0.1:9/ws/devices/", TOKEN, "pi-test", ManualSource(), tmp_path / "q")
    start = datetime(2026, 11, 24, 10, 0, 0, 250_000, tzinfo=UTC)
    for offset_us in (0, 400, 999, 1_000, 1_000, 250_000, -300_000_000, -299_990_000):
        agent._record_reading(Sample(start + timedelta(microseconds=offset_us), {"power_w": 1.0}))

    assert [reading.ts for reading in agent.produced] == [
        "2026-11-24T10:00:00.250Z",
        "2026-11-24T10:00:00.251Z",
        "2026-11-24T10:00:00.500Z",
        "2026-11-24T09:55:00.250Z",
        "2026-11-24T09:55:00.260Z",
    ]
    assert (agent.stats.produced, agent.stats.same_instant, agent.queue_length()) == (5, 3, 5)
    agent.close()


@pytest.mark.asyncio
async def test_unacked_readings_survive_a_drop_and_are_replayed_in_batches_exactly_once(make_agent):
    async with FakePortal() as portal:
        portal.script = {8: "drop"}
        source = CountingSource(total=60)
        agent = make_agent(portal, source, batch_size=10)
        async with running(agent):
            await wait_until(lambda: not portal.accepting, "the portal dropping the socket")
            await wait_until(lambda: agent.queue_length() >= 25, "a backlog while offline")
            portal.accepting = True
            await wait_until(
                lambda: source.count == 60 and agent.queue_length() == 0, "the backlog drained"
            )

        assert agent.stats.connections >= 2
        batches = portal.batch_frames()
        assert batches, "the backlog should be replayed in batch frames"
        assert all(1 <= len(frame["batch"]) <= 10 for frame in batches)
        assert any(len(frame["batch"]) > 1 for frame in batches)
        assert set(batches[0]) == {"type", "msg_id", "batch"}
        produced = produced_keys(agent)
        assert len(produced) == 60
        assert portal.acked_readings == produced  # every reading acked, none twice
        assert agent.stats.acked == 60


@pytest.mark.asyncio
async def test_queue_survives_an_agent_restart_and_is_replayed_on_the_next_run(make_agent):
    async with FakePortal(accepting=False) as portal:
        first = make_agent(portal, CountingSource(total=12))
        async with running(first):
            await wait_until(lambda: first.stats.produced == 12, "readings while offline")
        assert first.queue_length() == 12
        portal.accepting = True

        second = make_agent(portal, CountingSource(total=0))
        async with running(second):
            await wait_until(lambda: second.queue_length() == 0, "the old backlog delivered")

        assert portal.acked_readings == produced_keys(first)
        assert second.stats.acked == 12


@pytest.mark.asyncio
async def test_handshake_refused_with_403_is_retried_with_backoff_until_accepted(
    make_agent, caplog
):
    async with FakePortal(refuse_first=3) as portal:
        agent = make_agent(portal, CountingSource(total=3))
        async with running(agent):
            await wait_until(lambda: agent.stats.acked == 3, "readings after the refusals")

        assert portal.refused == 3
        assert portal.handshakes == 4
        assert agent.stats.connections == 1
        assert "refused the device token (HTTP 403)" in caplog.text


def test_backoff_doubles_up_to_the_cap_with_full_jitter_and_resets():
    class Highest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    backoff = Backoff(0.5, 30.0, Highest())
    ceilings = [backoff.next_delay() for _ in range(9)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5

    jittered = Backoff(0.5, 30.0, random.Random(1))
    delays = [jittered.next_delay() for _ in range(50)]
    assert all(0.0 <= delay <= 30.0 for delay in delays)
    assert len(set(delays)) == 50


@pytest.mark.asyncio
async def test_commands_ping_relay_unknown_and_expired_get_the_right_results(make_agent):
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    async with FakePortal() as portal:
        portal.commands_on_connect = [
            {"type": "command", "id": "c-ping", "name": "ping", "args": {}, "expires_at": soon},
            {"type": "command", "id": "c-relay", "name": "relay", "args": {"state": "off"}},
            {"type": "command", "id": "c-dance", "name": "dance", "args": {}, "expires_at": soon},
            {"type": "command", "id": "c-old", "name": "ping", "args": {}, "expires_at": past},
            {"type": "command", "id": "c-bad", "name": "relay", "args": {"state": "maybe"}},
        ]
        source = SimulatorSource(seed=3)
        agent = make_agent(portal, source)
        async with running(agent):
            await wait_until(lambda: len(portal.results) == 5, "five command results")
            # the simulated load behind the open relay falls to near zero
            await wait_until(
                lambda: all(values["power_w"] < 5 for values in portal.acked_values[-3:]),
                "readings near zero after the relay opened",
            )

        results = {result["id"]: result for result in portal.results}
        assert results["c-ping"] == {
            "type": "command_result",
            "id": "c-ping",
            "status": "done",
            "detail": "pong",
        }
        assert results["c-relay"]["status"] == "done"
        assert results["c-dance"]["status"] == "rejected"
        assert "dance" in results["c-dance"]["detail"]
        assert (results["c-old"]["status"], results["c-old"]["detail"]) == ("rejected", "expired")
        assert results["c-bad"]["status"] == "rejected"
        assert source.load.relay_on is False


@pytest.mark.asyncio
async def test_a_repeated_command_id_is_answered_again_without_running_twice(make_agent):
    ping = {"type": "command", "id": "c-1", "name": "ping", "args": {}}
    async with FakePortal() as portal:
        portal.commands_on_connect = [ping]
        agent = make_agent(portal, CountingSource(total=0))
        async with running(agent):
            await wait_until(lambda: len(portal.results) == 1, "the first answer")
            await portal.send(ping)
            await wait_until(lambda: len(portal.results) == 2, "the second answer")

        assert [result["detail"] for result in portal.results] == ["pong", "pong"]
        assert agent.stats.commands == 1


@pytest.mark.asyncio
async def test_command_hook_maps_exit_codes_to_done_rejected_and_failed(tmp_path):
    hook = tmp_path / "hook.py"
    hook.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "command = json.load(sys.stdin)\n"
        "print(command['name'], command['args'].get('valve', ''))\n"
        "sys.exit({'open': 0, 'nope': 2}.get(command['name'], 1))\n"
    )
    hook.chmod(0o755)
    handler = HookCommands(str(hook))

    def command(name: str) -> Command:
        return Command("c-1", name, {"valve": "v1"}, None)

    assert await handler.handle(command("open")) == CommandResult("done", "open v1")
    assert await handler.handle(command("nope")) == CommandResult("rejected", "nope v1")
    assert (await handler.handle(command("boom"))).status == "failed"


@pytest.mark.asyncio
async def test_power_lost_and_restored_are_queued_offline_and_delivered_on_reconnect(
    make_agent, tmp_path
):
    power_file = tmp_path / "mains"
    power_file.write_text("on\n")
    async with FakePortal(accepting=False) as portal:
        monitor = PowerFileMonitor(power_file)
        agent = make_agent(portal, CountingSource(total=0), power_monitor=monitor)
        async with running(agent):
            power_file.write_text("off\n")
            await wait_until(lambda: agent.stats.power_events == 1, "the mains loss noticed")
            power_file.write_text("on\n")
            await wait_until(lambda: agent.stats.power_events == 2, "the mains return noticed")
            assert agent.queue_length() == 2
            assert portal.acked_power == []

            portal.accepting = True
            await wait_until(lambda: agent.queue_length() == 0, "the power reports delivered")

        states = [(frame["state"], frame["ts"]) for frame in portal.acked_power]
        assert [state for state, _ in states] == ["lost", "restored"]
        assert states[0][1] < states[1][1]
        assert set(portal.acked_power[0]) == {"type", "msg_id", "state", "ts"}


@pytest.mark.asyncio
async def test_invalid_payload_drops_the_rows_and_rate_limited_keeps_them_for_later(make_agent):
    async with FakePortal() as portal:
        portal.script = {1: "invalid_payload", 2: "rate_limited"}
        source = ManualSource()
        agent = make_agent(portal, source)
        async with running(agent):
            await wait_until(lambda: agent.connected, "a connection")
            source.pending.append({"power_w": 1.0})
            await wait_until(lambda: agent.stats.dropped == 1, "the refused reading dropped")
            source.pending.append({"power_w": 2.0})
            await wait_until(lambda: agent.stats.acked == 1, "the rate-limited reading acked")

        assert agent.queue_length() == 0
        assert portal.acked_values == [{"power_w": 2.0}]
        assert portal.telemetry_frames == 3  # the rate-limited reading went out twice


@pytest.mark.asyncio
async def test_frames_without_ack_time_out_and_are_replayed_on_a_new_connection(make_agent):
    async with FakePortal() as portal:
        portal.silent_connections = 1
        source = CountingSource(total=20)
        agent = make_agent(portal, source, ack_timeout=0.3)
        async with running(agent):
            await wait_until(
                lambda: source.count == 20 and agent.queue_length() == 0, "everything acked"
            )

        assert agent.stats.connections == 2
        assert portal.batch_frames(), "the unacked frames should be replayed as a backlog"
        assert portal.acked_readings == produced_keys(agent)


@pytest.mark.asyncio
async def test_heartbeat_is_sent_when_there_is_nothing_else_to_send(make_agent):
    async with FakePortal() as portal:
        agent = make_agent(portal, CountingSource(total=0), heartbeat=0.05)
        async with running(agent):
            await wait_until(
                lambda: portal.frames.count({"type": "heartbeat"}) >= 3, "three heartbeats"
            )


def test_simulator_gives_a_plausible_household_day():
    # given a simulated day sampled every 30 s in UTC
    source = SimulatorSource(seed=42, tz=UTC)
    start = datetime(2026, 11, 22, tzinfo=UTC)
    samples = [
        (start + timedelta(seconds=30 * i), source.read(start + timedelta(seconds=30 * i)))
        for i in range(24 * 120 + 1)
    ]

    # then every value is finite and within a household's range
    for _, values in samples:
        assert set(values) == {"power_w", "voltage_v", "energy_kwh"}
        assert all(math.isfinite(value) for value in values.values())
        assert 100.0 <= values["power_w"] <= 8000.0
        assert 225.4 <= values["voltage_v"] <= 234.6
    energy = [values["energy_kwh"] for _, values in samples]
    assert all(later >= earlier for earlier, later in itertools.pairwise(energy))
    # one day of a household is a few to a few tens of kWh
    assert 2.0 <= energy[-1] - energy[0] <= 40.0

    def mean_power(first_hour: int, last_hour: int) -> float:
        window = [v["power_w"] for t, v in samples if first_hour <= t.hour < last_hour]
        return sum(window) / len(window)

    # the evening peak stands well above the night, and appliances spike past a kilowatt
    assert mean_power(18, 21) > 2 * mean_power(1, 5)
    assert max(values["power_w"] for _, values in samples) > 1500.0
    # heavier load pulls the voltage down a little
    heavy = [v["voltage_v"] for _, v in samples if v["power_w"] > 1500]
    light = [v["voltage_v"] for _, v in samples if v["power_w"] < 400]
    assert sum(heavy) / len(heavy) < sum(light) / len(light)


def test_simulator_load_follows_relay_and_curtailment_by_level_until_it_ends():
    evening = datetime(2026, 11, 22, 19, tzinfo=UTC)
    until = evening + timedelta(minutes=30)

    def power(level: int | None, at: datetime) -> float:
        # the same seed each time, so the household is the same and only the curtailment differs
        source = SimulatorSource(seed=5, tz=UTC)
        if level is not None:
            source.load.curtailment = Curtailment(7, level, until)
        return source.read(at)["power_w"]

    normal, level0, level1, level2, level3 = (power(level, evening) for level in (None, 0, 1, 2, 3))
    assert level0 == normal
    # each level sheds a third more of the heat pump (300-600 W, x1.5 at the evening peak)
    steps = [normal - level1, level1 - level2, level2 - level3]
    assert all(130.0 <= step <= 320.0 for step in steps), steps
    assert max(steps) - min(steps) < 0.07 * normal  # equal thirds, but for the +-3 % noise
    assert level3 >= 150.0  # the base load, fridge and evening activity keep running
    # at `until` the curtailment is over by itself
    assert power(3, until) == power(None, until)

    source = SimulatorSource(seed=5, tz=UTC)
    source.load.relay_on = False
    assert source.read(evening)["power_w"] < 5.0


@pytest.mark.parametrize(
    ("args", "detail"),
    [
        ({"kw": 1.5}, "no longer supported"),
        ({"event": 3, "level": 2}, "missing until"),
        ({"event": 3, "level": 4, "until": "SOON"}, "level must be a whole number from 0 to 3"),
        ({"event": 3, "level": 2.0, "until": "SOON"}, "level must be a whole number"),
        ({"event": 3, "level": True, "until": "SOON"}, "level must be a whole number"),
        ({"event": None, "level": 1, "until": "SOON"}, "event must be the event's id"),
        ({"event": 3, "level": 1, "until": "tomorrow"}, "bad until"),
        ({"event": 3, "level": 1, "until": "2030-01-01T10:00:00"}, "has no zone"),
        ({"event": 3, "level": 1, "until": 1893456000}, "until must be an ISO 8601 string"),
        ({"event": 3, "level": 1, "until": "2020-01-01T10:00:00Z"}, "has passed"),
    ],
)
@pytest.mark.asyncio
async def test_curtail_with_bad_args_is_rejected_with_the_reason_and_sheds_nothing(args, detail):
    soon = format_ts(datetime.now(UTC) + timedelta(minutes=5))
    args = {key: soon if value == "SOON" else value for key, value in args.items()}
    load = LoadControl()
    handler = BuiltinCommands(load)

    result = await handler.handle(Command("c-1", "curtail", args, None))

    assert result.status == "rejected"
    assert detail in result.detail
    assert load.curtailment is None


def relay_script(tmp_path, *, fail_on: str = "") -> tuple[str, str, Any]:
    """Shell commands for on_curtail / on_restore that append what they were told to a log (as a
    relay driver would switch a GPIO), and fail when the log's last line is `fail_on`."""
    log_file = tmp_path / "relay.log"
    script = tmp_path / "relay.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $EP_EVENT $EP_LEVEL $EP_SHED $EP_UNTIL" >> {log_file}\n'
        f'[ "$1" = "{fail_on}" ] && {{ echo "relay stuck" ; exit 3 ; }}\n'
        "exit 0\n"
    )
    script.chmod(0o755)

    def lines() -> list[str]:
        return (
            [line.rstrip() for line in log_file.read_text().splitlines()]
            if log_file.exists()
            else []
        )

    return f"{script} curtail", f"{script} restore", lines


@pytest.mark.asyncio
async def test_curtail_and_restore_run_the_relay_commands_with_the_event_level_and_end(tmp_path):
    on_curtail, on_restore, relay_log = relay_script(tmp_path)
    load = LoadControl()
    handler = BuiltinCommands(load, hooks=RelayHooks(on_curtail, on_restore))
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    curtail = {"event": 12, "level": 2, "until": until.isoformat()}

    result = await handler.handle(Command("c-1", "curtail", curtail, None))
    assert result == CommandResult(
        "done",
        f"curtailed for event 12 at level 2 (67% of flexible load off) until {format_ts(until)}",
    )
    assert load.curtailment == Curtailment(12, 2, until)
    assert load.shed(datetime.now(UTC)) == pytest.approx(2 / 3)

    # a restore of another (earlier) event arriving late changes nothing
    stale = await handler.handle(Command("c-2", "restore", {"event": 11}, None))
    assert stale.status == "done"
    assert "not curtailed for event 11" in stale.detail
    assert load.curtailment is not None

    restored = await handler.handle(Command("c-3", "restore", {"event": 12}, None))
    assert restored == CommandResult("done", "curtailment for event 12 lifted")
    assert load.curtailment is None
    assert relay_log() == [
        f"curtail 12 2 0.6667 {format_ts(until)}",
        "restore 12 0 0.0000",
    ]
    await handler.aclose()


@pytest.mark.asyncio
async def test_a_failing_relay_command_fails_the_curtail_and_leaves_the_load_alone(tmp_path):
    on_curtail, on_restore, relay_log = relay_script(tmp_path, fail_on="curtail")
    load = LoadControl()
    handler = BuiltinCommands(load, hooks=RelayHooks(on_curtail, on_restore))
    until = format_ts(datetime.now(UTC) + timedelta(minutes=5))

    result = await handler.handle(
        Command("c-1", "curtail", {"event": 1, "level": 3, "until": until}, None)
    )

    assert result.status == "failed"
    assert "exited with 3: relay stuck" in result.detail
    assert load.curtailment is None
    assert len(relay_log()) == 1


@pytest.mark.asyncio
async def test_a_restore_when_not_curtailed_still_switches_the_relay_back(tmp_path):
    # given an agent restarted mid-event: it forgot the curtailment, the relay did not
    on_curtail, on_restore, relay_log = relay_script(tmp_path)
    handler = BuiltinCommands(LoadControl(), hooks=RelayHooks(on_curtail, on_restore))

    result = await handler.handle(Command("c-1", "restore", {}, None))

    assert result == CommandResult("done", "not curtailed; loads as normal")
    assert relay_log() == ["restore  0 0.0000"]  # no event, level 0, nothing shed
    bad = await handler.handle(Command("c-2", "restore", {"kw": 1}, None))
    assert bad.status == "rejected"


@pytest.mark.asyncio
async def test_a_curtailment_ends_by_itself_at_until_when_no_restore_comes(make_agent, tmp_path):
    on_curtail, on_restore, relay_log = relay_script(tmp_path)
    until = datetime.now(UTC) + timedelta(seconds=1.5)
    async with FakePortal() as portal:
        portal.commands_on_connect = [
            {
                "type": "command",
                "id": "c-curtail",
                "name": "curtail",
                "args": {"event": 5, "level": 3, "until": until.isoformat()},
            }
        ]
        source = SimulatorSource(seed=8)
        agent = make_agent(portal, source, relay_hooks=RelayHooks(on_curtail, on_restore))
        async with running(agent):
            await wait_until(lambda: len(portal.results) == 1, "the curtail's result")
            assert portal.results[0]["status"] == "done"
            assert source.load.curtailment is not None
            # the portal goes quiet: no restore ever comes
            await wait_until(lambda: len(relay_log()) == 2, "the relay switched back", timeout=5)

    assert datetime.now(UTC) >= until
    assert source.load.curtailment is None
    assert [line.split()[:3] for line in relay_log()] == [
        ["curtail", "5", "3"],
        ["restore", "5", "0"],
    ]
    # the portal's restore, coming late, finds it over
    restored = await agent.command_handler.handle(Command("c-late", "restore", {"event": 5}, None))
    assert restored.detail == (
        f"curtailment for event 5 had ended by itself at {format_ts(until)}; loads as normal"
    )


def test_file_source_follows_json_lines_and_skips_bad_ones(tmp_path):
    path = tmp_path / "meter.jsonl"
    path.write_text(
        '{"ts": "2026-11-22T10:00:00.250Z", "values": {"power_w": 512.3}}\n'
        '{"power_w": 20, "voltage_v": 231.2, "label": "kitchen"}\n'
        "not json\n"
        '{"power_w": 3'
    )
    source = FileSource(path)
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)

    assert source.read(now) == Sample(
        datetime(2026, 11, 22, 10, 0, 0, 250000, tzinfo=UTC), {"power_w": 512.3}
    )
    assert source.read(now) == Sample(now, {"power_w": 20.0, "voltage_v": 231.2})
    assert source.read(now) is None  # skipped the bad line; the last one is not finished
    with path.open("a") as handle:
        handle.write("3}\n")
    assert source.read(now) == Sample(now, {"power_w": 33.0})
    assert source.read(now) is None


def test_command_source_reads_values_from_stdout_and_skips_failures():
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    ok = CommandSource("""printf '{"power_w": 12.5, "state": "x"}'""")
    assert ok.read(now) == Sample(now, {"power_w": 12.5})
    assert CommandSource("exit 3").read(now) is None
    assert CommandSource("echo nope").read(now) is None


def simulate_mains(command_id: str, **args: Any) -> dict[str, Any]:
    return {"type": "command", "id": command_id, "name": "simulate_mains", "args": args}


@pytest.mark.asyncio
async def test_a_simulated_cut_drops_the_socket_and_its_reports_arrive_after_it_with_true_instants(
    make_agent,
):
    # given a simulated home whose router loses power with the mains
    async with FakePortal() as portal:
        mains = OutageSimulator(rate_per_hour=0.0)
        agent = make_agent(
            portal,
            SimulatorSource(seed=3, outages=mains),
            power_monitor=mains,
            offline_while_mains_off=True,
        )
        async with running(agent):
            await wait_until(lambda: agent.connected, "a connection")
            # when the portal cuts the mains for 0.6 s
            asked = datetime.now(UTC)
            await portal.send(simulate_mains("cut-1", state="lost", minutes=0.01))
            await wait_until(lambda: agent.router_down, "the simulated cut")
            # then nothing reaches the portal during the cut
            await wait_until(lambda: not agent.connected, "the socket dropped")
            assert portal.acked_power == []
            assert agent.queue_length() >= 1
            await wait_until(
                lambda: len(portal.acked_power) == 2 and agent.queue_length() == 0,
                "both reports delivered after the cut",
            )

    assert portal.results[0]["status"] == "done"
    assert agent.stats.connections == 2
    lost, restored = portal.acked_power
    assert (lost["state"], restored["state"]) == ("lost", "restored")
    # The reports carry the instants of the cut itself (0.6 s from the command), not the ticks
    # that noticed it, nor when they arrived together after the reconnect.
    lost_at, restored_at = parse_ts(lost["ts"]), parse_ts(restored["ts"])
    assert portal.results[0]["detail"] == f"simulated mains cut until {restored['ts']}"
    assert parse_ts(format_ts(asked)) <= lost_at  # both in whole milliseconds
    assert abs(restored_at - lost_at - timedelta(seconds=0.6)) <= timedelta(milliseconds=1)


@pytest.mark.asyncio
async def test_a_simulated_cut_with_the_router_on_a_ups_reports_lost_at_once(make_agent):
    async with FakePortal() as portal:
        mains = OutageSimulator(rate_per_hour=0.0)
        source = SimulatorSource(seed=4, outages=mains)
        agent = make_agent(portal, source, power_monitor=mains, offline_while_mains_off=False)
        async with running(agent):
            await wait_until(lambda: agent.connected, "a connection")
            await portal.send(simulate_mains("cut-2", state="lost", minutes=60))
            await wait_until(lambda: len(portal.acked_power) == 1, "the loss reported live")
            # the meter reads nothing while the mains are off
            await wait_until(
                lambda: bool(portal.acked_values) and portal.acked_values[-1]["power_w"] == 0.0,
                "a reading during the cut",
            )
            await portal.send(simulate_mains("restore-2", state="restored"))
            await wait_until(lambda: len(portal.acked_power) == 2, "the return reported live")

    assert agent.stats.connections == 1
    assert [frame["state"] for frame in portal.acked_power] == ["lost", "restored"]
    assert [(r["id"], r["status"]) for r in portal.results] == [
        ("cut-2", "done"),
        ("restore-2", "done"),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("args", "detail"),
    [
        ({"state": "lost"}, "simulate_mains needs args"),
        ({"state": "lost", "minutes": 0}, "simulate_mains needs args"),
        ({"state": "lost", "minutes": 1441}, "simulate_mains needs args"),
        ({"state": "off", "minutes": 5}, "simulate_mains needs args"),
    ],
)
async def test_simulate_mains_with_bad_args_is_rejected_and_cuts_nothing(args, detail):
    mains = OutageSimulator(rate_per_hour=0.0)
    handler = BuiltinCommands(LoadControl(), mains)

    result = await handler.handle(Command("c", "simulate_mains", args, None))

    assert result.status == "rejected"
    assert detail in result.detail
    assert mains.mains_on(datetime.now(UTC)) is True


@pytest.mark.asyncio
async def test_a_pi_on_real_mains_rejects_simulate_mains_with_a_reason(make_agent, tmp_path):
    power_file = tmp_path / "mains"
    power_file.write_text("on\n")
    async with FakePortal() as portal:
        agent = make_agent(
            portal, CountingSource(total=0), power_monitor=PowerFileMonitor(power_file)
        )
        async with running(agent):
            await wait_until(lambda: agent.connected, "a connection")
            await portal.send(simulate_mains("cut-3", state="lost", minutes=5))
            await wait_until(lambda: portal.results, "the command's result")

    assert portal.results[0]["status"] == "rejected"
    assert "real mains" in portal.results[0]["detail"]
    assert agent.stats.power_events == 0


@pytest.mark.asyncio
async def test_unacked_power_reports_are_replayed_on_the_next_connection_unchanged(make_agent):
    async with FakePortal() as portal:
        portal.silent_connections = 1
        mains = OutageSimulator(rate_per_hour=0.0)
        agent = make_agent(portal, CountingSource(total=0), power_monitor=mains, ack_timeout=0.3)
        async with running(agent):
            await wait_until(lambda: agent.connected, "a connection")
            mains.cut(datetime.now(UTC), 0.1)
            await wait_until(
                lambda: len(portal.acked_power) == 2 and agent.queue_length() == 0,
                "both reports acked on the second connection",
            )

    sent = [frame for frame in portal.frames if frame["type"] == "power"]
    assert len(sent) >= 3, "the first connection's unacked report(s) should go out again"
    # What was replayed is the very report first sent: same msg_id, same instant.
    first = sent[0]
    assert any(
        frame["msg_id"] == first["msg_id"] and frame["ts"] == first["ts"]
        for frame in portal.acked_power
    )
    assert agent.stats.connections == 2


def test_the_outage_simulator_says_when_the_mains_changed_not_when_it_was_asked():
    mains = OutageSimulator(rate_per_hour=0.0)
    start = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert mains.mains_on(start) is True

    mains.cut(start + timedelta(seconds=1.25), 30)

    assert mains.mains_on(start + timedelta(seconds=2)) is False
    assert mains.changed_at == start + timedelta(seconds=1.25)
    assert mains.mains_on(start + timedelta(seconds=10)) is False
    assert mains.changed_at == start + timedelta(seconds=1.25)
    assert mains.mains_on(start + timedelta(seconds=32)) is True
    assert mains.changed_at == start + timedelta(seconds=31.25)
