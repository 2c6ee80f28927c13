"""A real TimescaleDB for tests: PGlite (WASM PostgreSQL + TimescaleDB 2.23) on the wire protocol.

`timescale_server` starts `node tests/timescale/pglite/server.mjs` once per test session and
yields a URL psycopg connects to (`postgres://postgres:x@127.0.0.1:PORT/postgres?sslmode=disable`;
for Django, `timescale://` in place of `postgres://`). It runs one transaction at a time over
one shared session, and switches database only while no connection is open: see
pglite/server.mjs for that and for what it can't do (COPY FROM STDIN).

The npm packages come from `npm ci --prefix tests/timescale/pglite`; when they are missing the
fixture runs that itself, and skips only if it cannot.
"""

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

PGLITE_DIR = Path(__file__).resolve().parent / "pglite"
SERVER_SCRIPT = PGLITE_DIR / "server.mjs"
READY_TIMEOUT_S = 120
NPM_CI_TIMEOUT_S = 600


def url_for_database(url: str, database: str, *, scheme: str | None = None) -> str:
    """The same server URL with another database (and optionally another scheme)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=scheme or parts.scheme, path=f"/{database}"))


def _installed() -> bool:
    """True when node_modules holds every package of package-lock.json, at its version."""
    lock = json.loads((PGLITE_DIR / "package-lock.json").read_text())
    for path, entry in lock["packages"].items():
        if not path:
            continue
        manifest = PGLITE_DIR / path / "package.json"
        if not manifest.is_file():
            return False
        if json.loads(manifest.read_text()).get("version") != entry.get("version"):
            return False
    return True


def _ensure_npm_packages() -> None:
    if _installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(
            "TimescaleDB tests need Node.js packages: tests/timescale/pglite/node_modules is "
            "missing and npm is not installed to run `npm ci --prefix tests/timescale/pglite`"
        )
    command = [npm, "ci", "--prefix", str(PGLITE_DIR), "--no-audit", "--no-fund"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"`{' '.join(command)}` took over {NPM_CI_TIMEOUT_S} s")
    if result.returncode != 0 or not _installed():
        pytest.skip(
            f"TimescaleDB tests need Node.js packages and `npm ci --prefix {PGLITE_DIR}` "
            f"failed (exit {result.returncode}): {(result.stderr or result.stdout)[-2000:]}"
        )


def _wait_ready(process: subprocess.Popen, log_path: Path) -> int:
    """The port from the server's `READY port=NNNNN ...` line."""
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    line = ""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 0.5)
        if readable:
            line = process.stdout.readline()
            if line.startswith("READY "):
                fields = dict(field.split("=", 1) for field in line.split()[1:])
                return int(fields["port"])
            if not line and process.poll() is not None:
                break
        elif process.poll() is not None:
            break
    process.kill()
    process.wait()
    raise RuntimeError(
        f"the PGlite server did not get ready (exit {process.returncode}, last line {line!r}); "
        f"its log:\n{log_path.read_text()[-4000:]}"
    )


@pytest.fixture(scope="session")
def timescale_server(tmp_path_factory) -> Iterator[str]:
    """URL of a TimescaleDB 2.23 server (PGlite) for this test session; database `postgres`."""
    _ensure_npm_packages()
    node = shutil.which("node")
    if node is None:
        pytest.skip("TimescaleDB tests need Node.js (`node` is not on PATH)")
    log_path = tmp_path_factory.mktemp("pglite") / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            # Its stdin is a pipe it watches: the server also stops if pytest dies.
            [node, str(SERVER_SCRIPT), "--port", "0", "--exit-on-stdin-close"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=PGLITE_DIR,
            env={**os.environ, "PGLITE_DEBUG": os.environ.get("PGLITE_DEBUG", "0")},
        )
    try:
        port = _wait_ready(process, log_path)
        yield f"postgres://postgres:x@127.0.0.1:{port}/postgres?sslmode=disable"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
