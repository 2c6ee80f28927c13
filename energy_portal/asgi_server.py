"""The ASGI server of every portal process that serves HTTP and WebSockets: Uvicorn.

bench/live measured it against Daphne on the same code (README, Benchmarks): with the
`websockets-sansio` protocol, uvloop and httptools it spent the least CPU per message and held
the highest sustained rate. `make run`, compose.yaml, the Dockerfile and the end-to-end tests
all start the server through `command()` / `python -m energy_portal.asgi_server`, so they run
the same configuration. (Daphne stays installed for `manage.py runserver` only.)
"""

import argparse
import os
import sys

from django.core.exceptions import ImproperlyConfigured

from energy_portal.environment import int_setting

APPLICATION = "energy_portal.asgi:application"
# Largest WebSocket message the server reads. The device socket refuses frames over its own
# 64 KiB limit with a `too_large` error frame; past this size the server stops reading and closes
# with 1009 (message too big), so a hostile frame cannot make it buffer megabytes (default 16 MiB).
WS_MAX_BYTES = 256 * 1024
OPTIONS = [
    "--ws", "websockets-sansio",
    "--loop", "uvloop",
    "--http", "httptools",
    "--lifespan", "on",  # energy_portal.asgi.lifespan: the metrics of a stopping process
    "--timeout-graceful-shutdown", "5",  # open sockets are closed (1012) after at most 5 s
    "--ws-max-size", str(WS_MAX_BYTES),
    # No permessage-deflate: the portal's frames are JSON of a few hundred bytes, which deflate
    # hardly shrinks, while compressing and inflating every frame cost the server ~8 % of its
    # CPU, and the Pis theirs, when 5,000 devices got their `curtail` at once (bench/dr).
    "--ws-per-message-deflate", "false",
]  # fmt: skip


def default_workers() -> int:
    """Server processes: WEB_CONCURRENCY, else one per core. One event loop runs Python on one
    core; bench/live measured two processes on two cores at 1.45x one's sustained rate."""
    if not os.environ.get("WEB_CONCURRENCY", "").strip():
        return os.cpu_count() or 1
    workers = int_setting("WEB_CONCURRENCY", 1)
    if workers < 1:
        raise ImproperlyConfigured(f"WEB_CONCURRENCY must be at least 1, got {workers}")
    return workers


def command(
    *, host: str, port: int, access_log: bool = True, workers: int | None = None
) -> list[str]:
    """The command line that serves the portal on host:port with `workers` processes sharing
    the port (default: default_workers())."""
    line = [sys.executable, "-m", "uvicorn", APPLICATION, "--host", host, "--port", str(port)]
    line += ["--workers", str(workers or default_workers())]
    return [*line, *OPTIONS, *([] if access_log else ["--no-access-log"])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the portal (Uvicorn).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default: WEB_CONCURRENCY or cores)"
    )
    options = parser.parse_args(argv)
    try:
        workers = options.workers or default_workers()
    except ImproperlyConfigured as exc:
        parser.error(str(exc))
    line = command(
        host=options.host,
        port=options.port,
        access_log=not options.no_access_log,
        workers=workers,
    )
    os.execv(line[0], line)  # noqa: S606 - a fixed argument list, no shell


if __name__ == "__main__":
    main()
