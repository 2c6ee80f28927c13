"""Run several simulated devices in one process, e.g. for the demo: `make run` starts this.

    python -m pi_agent.simulate --url ws://127.0.0.1:8000/ws/devices/ --tokens var/tokens.json

The tokens file maps device uids to their tokens, `{uid: token}`: each such device is a Pi with
the reference agent's household simulator. `manage.py seed_demo --tokens-file` (and then
`seed_demo_readings --tokens-file`, for the counters) write richer entries, `{uid: {"token",
"profile", "sensors", "flexible_w", "timezone", "counters"}}`: each such device follows its demo
profile (pi_agent/demo_profiles.py, the shapes of the history the portal seeded), so its live
readings continue that history, appliances (heat pump, EV charger, PV inverter) included. Each
device gets its own seed and SQLite queue under `--queue-dir`.

Their mains fail at random (`--outage-rate`), on command from the portal (`simulate_mains`), and
for the devices in `--scheduled-cuts` on a fixed schedule, so a demo shows a cut within a minute
or two. During a cut a device drops its socket (its router has no power either) unless it is in
`--router-on-ups`. Each obeys the portal's demand-response `curtail` / `restore`: its flexible
loads drop by level.
"""

import argparse
import asyncio
import json
import logging
import random
import signal
import socket
import time
import zlib
import zoneinfo
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from pi_agent import demo_profiles
from pi_agent.energy_pi_agent import (
    Agent,
    LoadControl,
    OutageSimulator,
    SimulatorSource,
)

log = logging.getLogger("pi_agent.simulate")

# The keys of the sensors a demo device may have, by what they measure.
POWER_KEYS = ("power_w", "pv_w")
COUNTER_KEYS = ("energy_kwh", "pv_energy_kwh")
# The share of a profile's load that demand response may switch off (up to the device's
# flexible watts): all of a dedicated heat pump or EV charger, part of a home's or a shop's,
# none of a PV inverter's output.
FLEXIBLE_SHARE = {"heat_pump": 1.0, "ev": 1.0, "household": 0.4, "household_pv": 0.4, "shop": 0.3}
STANDBY_W = 3.0  # what a device draws behind its own open relay


class ProfileSource:
    """A demo device whose readings follow its profile live (see the module docstring).

    The mains (an :class:`OutageSimulator`) zero its power and voltage during a cut, as an
    inverter without grid stops too; its relay (``load``, set by the built-in commands) cuts
    all but the electronics' standby, a demand-response curtailment the flexible share of the
    load by level; its energy counters add up what it imports (or generates, for a PV
    inverter) from `counters`, the values the seeded history ended on
    (`seed_demo_readings --tokens-file` writes them), else from a start below any history's, so
    that the portal reads the first live value as a counter reset rather than a jump.
    """

    def __init__(
        self,
        uid: str,
        *,
        profile: str,
        sensors: list[str],
        flexible_w: float = 0.0,
        timezone: str = "UTC",
        counters: dict[str, float] | None = None,
        outages: OutageSimulator | None = None,
    ) -> None:
        if profile not in demo_profiles.PROFILES:
            raise ValueError(f"{uid}: unknown profile {profile!r}")
        self.seed = zlib.crc32(uid.encode())
        self.profile = profile
        self.sensors = list(sensors)
        self.flexible_w = flexible_w
        self.tz = zoneinfo.ZoneInfo(timezone)
        self.outages = outages
        self.load = LoadControl()
        start = 1000.0 + 18000.0 * demo_profiles.noise(self.seed, 3)
        self._counters = {
            key: float((counters or {}).get(key, start))
            for key in self.sensors
            if key in COUNTER_KEYS
        }
        self._last: datetime | None = None
        self._last_w = 0.0

    def _watts(self, instant: demo_profiles.Instant) -> float:
        watts = demo_profiles.PROFILES[self.profile](self.seed, instant)
        if not self.load.relay_on:  # only the electronics stay behind an open relay
            return min(watts, STANDBY_W)
        share = FLEXIBLE_SHARE.get(self.profile, 0.0)
        flexible = min(self.flexible_w, share * max(watts, 0.0))
        return watts - flexible * self.load.shed(instant.at)

    def read(self, now: datetime) -> dict[str, float]:
        """The device's sensors at ``now``, by key."""
        elapsed_s = 0.0 if self._last is None else max(0.0, (now - self._last).total_seconds())
        for key in self._counters:  # an import counter: export adds nothing
            self._counters[key] += max(self._last_w, 0.0) * elapsed_s / 3_600_000.0
        mains = self.outages is None or self.outages.mains_on(now)
        instant = demo_profiles.instants([now], self.tz)[0]
        watts = self._watts(instant) if mains else 0.0
        self._last, self._last_w = now, watts
        values = {}
        for key in self.sensors:
            if key in POWER_KEYS:
                values[key] = round(watts, 1)
            elif key in COUNTER_KEYS:
                values[key] = round(self._counters[key], 5)
            elif key == "voltage_v":
                volts = demo_profiles.voltage_v(self.seed, instant, watts) if mains else 0.0
                values[key] = round(volts, 1)
            elif key == "outdoor_temp_c":
                values[key] = round(instant.temp_c, 1)
        return values


def wait_for_portal(url: str, timeout: float = 60.0) -> None:
    """Give a portal that is still starting a moment, instead of logging refused connections."""
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((parts.hostname, parts.port or 80), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)


async def cut_on_schedule(
    mains: dict[str, OutageSimulator], *, first_after: float, every: float, length: float
) -> None:
    """Cut the mains of all these Pis together: first after `first_after` seconds, then every
    `every` seconds, each cut `length` seconds long."""
    await asyncio.sleep(first_after)
    while True:
        now = datetime.now(UTC)
        for simulator in mains.values():
            simulator.cut(now, length)
        log.warning("scheduled mains cut of %s for %g s", ", ".join(sorted(mains)), length)
        await asyncio.sleep(every)


async def run_fleet(agents: list[Agent], schedule: asyncio.Future | None = None) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: [agent.request_stop() for agent in agents])
    try:
        await asyncio.gather(*(agent.run() for agent in agents))
    finally:
        if schedule is not None:
            schedule.cancel()


def device_source(
    uid: str, entry: str | dict, outages: OutageSimulator
) -> tuple[str, SimulatorSource | ProfileSource]:
    """A tokens file entry's token and the source its device reads from (module docstring)."""
    if isinstance(entry, str):
        return entry, SimulatorSource(zlib.crc32(uid.encode()), outages=outages)
    if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
        raise ValueError(f"{uid}: expected a token or an object with a token, got {entry!r}")
    source = ProfileSource(
        uid,
        profile=entry.get("profile", "household"),
        sensors=entry.get("sensors", ["power_w", "voltage_v", "energy_kwh"]),
        flexible_w=float(entry.get("flexible_w", 0.0)),
        timezone=entry.get("timezone", "UTC"),
        counters=entry.get("counters"),
        outages=outages,
    )
    return entry["token"], source


def _uids(text: str) -> set[str]:
    return {uid.strip() for uid in text.split(",") if uid.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="portal socket URL")
    parser.add_argument(
        "--tokens", required=True, type=Path, help="JSON file {uid: token or device entry}"
    )
    parser.add_argument("--queue-dir", type=Path, default=Path("var/pi-queues"))
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    parser.add_argument("--outage-rate", type=float, default=0.5, help="simulated cuts per hour")
    parser.add_argument(
        "--scheduled-cuts", type=_uids, default=set(), help="uids (comma-separated) cut together"
    )
    parser.add_argument("--first-cut-after", type=float, default=60.0, help="seconds")
    parser.add_argument("--cut-every", type=float, default=900.0, help="seconds")
    parser.add_argument("--cut-for", type=float, default=240.0, help="seconds")
    parser.add_argument(
        "--router-on-ups",
        type=_uids,
        default=set(),
        help="uids (comma-separated) that keep their socket during a cut",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")

    tokens: dict[str, str | dict] = json.loads(args.tokens.read_text())
    args.queue_dir.mkdir(parents=True, exist_ok=True)
    agents = []
    scheduled: dict[str, OutageSimulator] = {}
    for uid, entry in sorted(tokens.items()):
        seed = zlib.crc32(uid.encode())  # stable per device, different between devices
        outages = OutageSimulator(random.Random(seed), rate_per_hour=args.outage_rate)
        if uid in args.scheduled_cuts:
            scheduled[uid] = outages
        try:
            token, source = device_source(uid, entry, outages)
        except ValueError as error:
            parser.error(f"{args.tokens}: {error}")
        agents.append(
            Agent(
                args.url,
                token,
                uid,
                source,
                args.queue_dir / f"{uid}.sqlite3",
                args.interval,
                power_monitor=outages,
                offline_while_mains_off=uid not in args.router_on_ups,
            )
        )
    wait_for_portal(args.url)
    print(f"simulating {len(agents)} device(s): {', '.join(sorted(tokens))}", flush=True)
    if scheduled:
        print(
            f"mains of {', '.join(sorted(scheduled))} cut for {args.cut_for:g} s every "
            f"{args.cut_every:g} s, first in {args.first_cut_after:g} s",
            flush=True,
        )

    async def fleet() -> None:
        schedule = None
        if scheduled:
            schedule = asyncio.ensure_future(
                cut_on_schedule(
                    scheduled,
                    first_after=args.first_cut_after,
                    every=args.cut_every,
                    length=args.cut_for,
                )
            )
        await run_fleet(agents, schedule)

    try:
        asyncio.run(fleet())
    finally:
        for agent in agents:
            agent.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
