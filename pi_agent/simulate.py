"""Run several simulated Pis in one process, e.g. for the demo: `make run` starts this.

    python -m pi_agent.simulate --url ws://127.0.0.1:8000/ws/devices/ --tokens var/tokens.json

The tokens file maps device uids to their tokens (`manage.py seed_demo --tokens-file` writes it).
Each Pi gets its own simulator seed and SQLite queue under `--queue-dir`.
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
from pathlib import Path
from urllib.parse import urlsplit

from pi_agent.energy_pi_agent import Agent, OutageSimulator, SimulatorSource


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


async def run_fleet(agents: list[Agent]) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: [agent.request_stop() for agent in agents])
    await asyncio.gather(*(agent.run() for agent in agents))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="portal socket URL")
    parser.add_argument("--tokens", required=True, type=Path, help="JSON file {uid: token}")
    parser.add_argument("--queue-dir", type=Path, default=Path("var/pi-queues"))
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    parser.add_argument("--outage-rate", type=float, default=0.5, help="simulated cuts per hour")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")

    tokens: dict[str, str] = json.loads(args.tokens.read_text())
    args.queue_dir.mkdir(parents=True, exist_ok=True)
    agents = []
    for uid, token in sorted(tokens.items()):
        seed = zlib.crc32(uid.encode())  # stable per device, different between devices
        outages = OutageSimulator(random.Random(seed), rate_per_hour=args.outage_rate)
        agents.append(
            Agent(
                args.url,
                token,
                uid,
                SimulatorSource(seed, outages=outages),
                args.queue_dir / f"{uid}.sqlite3",
                args.interval,
                power_monitor=outages,
            )
        )
    wait_for_portal(args.url)
    print(f"simulating {len(agents)} Pi(s): {', '.join(sorted(tokens))}", flush=True)
    try:
        asyncio.run(run_fleet(agents))
    finally:
        for agent in agents:
            agent.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
