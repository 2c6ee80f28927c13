"""Run several simulated Pis in one process, e.g. for the demo: `make run` starts this.

    python -m pi_agent.simulate --url ws://127.0.0.1:8000/ws/devices/ --tokens var/tokens.json

The tokens file maps device uids to their tokens (`manage.py seed_demo --tokens-file` writes it).
Each Pi gets its own simulator seed and SQLite queue under `--queue-dir`. Their mains fail at
random (`--outage-rate`), on command from the portal (`simulate_mains`), and for the devices in
`--scheduled-cuts` on a fixed schedule, so a demo shows a cut within a minute or two. During a cut
a Pi drops its socket (its router has no power either) unless it is in `--router-on-ups`. Each
obeys the portal's demand-response `curtail` / `restore`: its flexible loads drop by level.
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
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from pi_agent.energy_pi_agent import Agent, OutageSimulator, SimulatorSource

log = logging.getLogger("pi_agent.simulate")


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


def _uids(text: str) -> set[str]:
    return {uid.strip() for uid in text.split(",") if uid.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="portal socket URL")
    parser.add_argument("--tokens", required=True, type=Path, help="JSON file {uid: token}")
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

    tokens: dict[str, str] = json.loads(args.tokens.read_text())
    args.queue_dir.mkdir(parents=True, exist_ok=True)
    agents = []
    scheduled: dict[str, OutageSimulator] = {}
    for uid, token in sorted(tokens.items()):
        seed = zlib.crc32(uid.encode())  # stable per device, different between devices
        outages = OutageSimulator(random.Random(seed), rate_per_hour=args.outage_rate)
        if uid in args.scheduled_cuts:
            scheduled[uid] = outages
        agents.append(
            Agent(
                args.url,
                token,
                uid,
                SimulatorSource(seed, outages=outages),
                args.queue_dir / f"{uid}.sqlite3",
                args.interval,
                power_monitor=outages,
                offline_while_mains_off=uid not in args.router_on_ups,
            )
        )
    wait_for_portal(args.url)
    print(f"simulating {len(agents)} Pi(s): {', '.join(sorted(tokens))}", flush=True)
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
