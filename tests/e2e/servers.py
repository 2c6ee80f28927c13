"""Real ASGI servers for end-to-end tests: the portal's server (energy_portal.asgi_server).

Each server is a subprocess with the test process's environment, pointed at the database
pytest-django created and at the same Redis, so several of them share state the way production
instances do. Their output goes to a log file that is shown when a server fails to start.
"""

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.test import Client

from energy_portal import asgi_server

BASE_DIR = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10


@dataclass(frozen=True)
class Server:
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        """What a browser on a page of this server sends as `Origin`."""
        return self.http

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def session_cookie(user, server: Server) -> dict:
    """A browser cookie that signs `user` in on `server` (for Playwright's `add_cookies`). The
    login form itself is driven in test_browser_login; the server is another process, whose
    password hashers differ from the fast one the tests use."""
    client = Client()
    client.force_login(user)
    value = client.cookies[settings.SESSION_COOKIE_NAME].value
    return {"name": settings.SESSION_COOKIE_NAME, "value": value, "url": server.http}


def database_url(settings_dict: dict) -> str:
    """A `postgres://` URL for a Django database's settings (the test database's, say)."""
    user = quote(settings_dict.get("USER") or "postgres", safe="")
    password = settings_dict.get("PASSWORD")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{settings_dict['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def spawn(
    *,
    database_url: str,
    redis_url: str,
    log_dir: Path,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start one ASGI server (on a free port unless given; `extra_env` adds to or overrides the
    test process's environment); `wait_until_answering` tells when it serves."""
    port = port or free_port()
    log = log_dir / f"asgi-{port}.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            # one process each: tests that need two processes start two servers
            asgi_server.command(host="127.0.0.1", port=port, workers=1),
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(port=port, process=process, log=log)


def wait_until_answering(server: Server, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(server.port):
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"ASGI server on port {server.port} did not start:\n{server.output()}"
            )
        time.sleep(0.05)


def stop(server: Server) -> None:
    """SIGTERM, then SIGKILL if it will not go."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextmanager
def running(count: int, *, database_url: str, redis_url: str) -> Iterator[list[Server]]:
    """`count` ASGI servers sharing the database and Redis, stopped however the block ends."""
    with tempfile.TemporaryDirectory(prefix="ep-asgi-") as log_dir, ExitStack() as stack:
        servers = []
        for _ in range(count):  # all start at once: each takes a second or two to load
            server = spawn(database_url=database_url, redis_url=redis_url, log_dir=Path(log_dir))
            stack.callback(stop, server)
            servers.append(server)
        for server in servers:
            wait_until_answering(server)
        yield servers
