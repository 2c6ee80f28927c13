"""`make run`: one command that brings up the whole portal with demo data.

It settles the environment (starting embedded PostgreSQL and Valkey when no URLs are given),
migrates, seeds the demo (90 days of readings the first time, the gap since the last run
after), then runs the ASGI server, the ingest writer, a Celery worker, beat, the OpenADR VEN
and the demo homes' simulated Pis under one supervisor. Ctrl-C stops every process: the
supervisor's first, then, once they have all exited, the embedded servers (they run in sessions
of their own, out of the terminal's reach, and stop when this process exits), so nothing loses
its database or Redis while it shuts down.
"""

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from honcho.manager import Manager

from energy_portal import asgi_server, metrics_dir
from energy_portal.environment import BASE_DIR, load

DEMO_TOKENS = "demo-device-tokens.json"
# The devices of the four homes on feeder FD-101 (devices/demo.py) lose their mains a minute after
# start and every 15 minutes, for 6 minutes: long enough to pass the demo credit policy's
# threshold and first step (outages/demo.py), and a feeder outage, as they go dark together.
# Their routers are on a UPS, so the cut shows live and is paid once when it ends. (The other
# devices drop their sockets in their rare random cuts and report them afterwards; a late report
# earlier than a live one moves the outage's start, and the same outage is paid the difference.)
FD101_DEVICES = "pi-0001,pi-0002,pi-0005,hp-0005,pi-0006,pi-0007"
DEMO_SCHEDULED_CUTS = [
    "--scheduled-cuts", FD101_DEVICES, "--router-on-ups", FD101_DEVICES,
    "--first-cut-after", "60", "--cut-every", "900", "--cut-for", "360",
]  # fmt: skip


def _manage(*args: str) -> None:
    subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), *args], check=True)


def processes(*, host: str, port: int, data_dir: Path, simulate: bool) -> dict[str, list[str]]:
    """The command line of each long-running process, by name."""
    python = sys.executable
    celery = [python, "-m", "celery", "-A", "energy_portal"]
    commands = {
        "web": asgi_server.command(host=host, port=port),
        "worker": [*celery, "worker", "-l", "info", "--concurrency", "2", "--without-gossip",
                   "--without-mingle"],
        "beat": [*celery, "beat", "-l", "info", "--schedule", str(data_dir / "celerybeat")],
        "writer": [python, str(BASE_DIR / "manage.py"), "run_ingest_writer"],
        # The OpenADR VEN of the VTN connections (it waits for one while none is configured).
        "ven": [python, str(BASE_DIR / "manage.py"), "run_openadr_ven"],
    }  # fmt: skip
    if simulate:
        commands["pis"] = [python, "-m", "pi_agent.simulate",
                           "--url", f"ws://{host}:{port}/ws/devices/",
                           "--tokens", str(data_dir / DEMO_TOKENS),
                           "--queue-dir", str(data_dir / "pi-queues"),
                           *DEMO_SCHEDULED_CUTS]  # fmt: skip
    return commands


def shell_line(command: list[str]) -> str:
    """The shell line honcho runs for `command`: the shell replaced by the process itself."""
    return "exec " + shlex.join(command)


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except KeyboardInterrupt:
        # Ctrl-C before the supervisor runs (during migrate or seeding): stop without a traceback.
        return 130


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-demo", action="store_true", help="no demo data, no simulated Pis")
    options = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "energy_portal.settings")
    env = load()  # starts the embedded servers if needed and exports their URLs to children
    os.environ["ENERGY_PORTAL_DATA_DIR"] = str(env.data_dir)
    where = f"embedded (under {env.data_dir})" if env.embedded else "configured"
    print(f"Database and Redis: {where}", flush=True)

    _manage("migrate", "--no-input")
    if not options.no_demo:
        _manage("seed_demo", "--tokens-file", str(env.data_dir / DEMO_TOKENS))
        _manage("seed_demo_outages")
        _manage("seed_demo_readings", "--tokens-file", str(env.data_dir / DEMO_TOKENS))
        _manage("seed_demo_dr")

    # Every process started below writes its metrics there; /metrics adds them up.
    metrics_path = env.data_dir / "metrics"
    metrics_dir.wipe(metrics_path)
    os.environ[metrics_dir.VARIABLE] = str(metrics_path)
    manager = Manager()
    commands = processes(
        host=options.host, port=options.port, data_dir=env.data_dir, simulate=not options.no_demo
    )
    for name, command in commands.items():
        # honcho starts each through a shell in a session of its own; `exec` makes the process
        # itself lead that session, so the worker can lower its session's CPU priority below the
        # server's (energy_portal/priority.py), and signals reach it without a shell between.
        manager.add_process(name, shell_line(command), env=dict(os.environ))
    print(f"Portal at http://{options.host}:{options.port}/  (Ctrl-C stops everything)", flush=True)
    manager.loop()
    return 0 if manager.returncode in (0, 130, 143, None) else manager.returncode


if __name__ == "__main__":
    sys.exit(main())
