"""What the benchmarks share: the processes under test (start, wait for, stop), a quiet machine,
a database of their own, the portal's environment, py-spy's collapsed stacks.

Each benchmark keeps its own paths, URLs and data set in `bench/<name>/common.py`; this module
takes them as arguments.
"""

import atexit
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

_children: list[subprocess.Popen] = []


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# -- processes under test -------------------------------------------------------------------------


def spawn(args: list[str], *, env: dict, log_path: Path | None = None) -> subprocess.Popen:
    """Start a process in the project folder, output to `log_path` (else inherited); `stop` or
    `cleanup` ends it."""
    out = open(log_path, "w") if log_path else None  # noqa: SIM115
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        start_new_session=True,  # its own process group: stopped as a whole, by its id
    )
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace: float = 15.0) -> int | None:
    """SIGTERM to the process group `spawn` made, SIGKILL after `grace` seconds; its exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
    if proc in _children:
        _children.remove(proc)
    return proc.returncode


def cleanup() -> None:
    """Stop every process `spawn` started that is still running, the last started first."""
    for proc in reversed(list(_children)):
        stop(proc, grace=5)


def _on_signal(signum, _frame):
    log(f"signal {signum}: stopping the processes under test")
    cleanup()
    sys.exit(130)


def stop_children_on_exit() -> None:
    """Whatever ends the driver (return, exception, SIGTERM, Ctrl-C) stops what it started."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    atexit.register(cleanup)


def start_loadgen(module: str, plan: dict, folder: Path) -> tuple[subprocess.Popen, Path]:
    """Start a load generator, `python -m module --plan PLAN --out OUT`, with `plan` written to
    `folder`; returns the process and the file it will write its results to."""
    plan_path, out_path = folder / "plan.json", folder / "out.json"
    plan_path.write_text(json.dumps(plan))
    command = [PYTHON, "-m", module, "--plan", str(plan_path), "--out", str(out_path)]
    return spawn(command, env={**os.environ, "PYTHONPATH": str(ROOT)}), out_path


def daphne_command(app: str, port: int) -> list[str]:
    return [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]


def uvicorn_command(app: str, port: int, *options: str) -> list[str]:
    """uvicorn as the benchmarks run it (uvloop, httptools, no access log), plus `options`."""
    where = ["--host", "127.0.0.1", "--port", str(port)]
    fixed = ["--loop", "uvloop", "--http", "httptools", "--lifespan", "off", "--no-access-log"]
    return [PYTHON, "-m", "uvicorn", app, *where, *options, *fixed, "--log-level", "warning"]


def granian_command(app: str, port: int, *options: str) -> list[str]:
    """Granian as the benchmarks run it: ASGI without lifespan events, uvloop, no access log."""
    where = ["--host", "127.0.0.1", "--port", str(port)]
    fixed = ["--interface", "asginl", "--loop", "uvloop", "--log-level", "warning"]
    return [PYTHON, "-m", "granian", *where, *options, *fixed, app]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s")


def wait_quiet(max_wait_s: float, threshold: float) -> str:
    """Poll the 1-minute load average every minute until it is below `threshold`, at most
    `max_wait_s`; says which happened."""
    started = time.monotonic()
    while True:
        load1 = float(Path("/proc/loadavg").read_text().split()[0])
        waited = time.monotonic() - started
        if load1 < threshold:
            return f"machine quiet (1-min load {load1} < {threshold}) after {waited / 60:.1f} min"
        if waited >= max_wait_s:
            return (
                f"started after {waited / 60:.1f} min of waiting regardless "
                f"(1-min load still {load1})"
            )
        log(
            f"waiting for a quiet machine: 1-min load {load1} (≥ {threshold}), "
            f"{waited / 60:.0f} min waited"
        )
        time.sleep(60)


# -- the portal under test ------------------------------------------------------------------------


def secret_key(work: Path) -> str:
    """A key of the benchmark's own in `work`, kept so stored sessions stay valid between runs."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


def portal_env(*, database_url: str, redis_url: str, secret_key: str, **extra: str) -> dict:
    """Environment of a portal process under test (and of the driver's own Django):
    production-like (DEBUG off), the benchmark's database and Redis, then `extra`. The caller's
    DATABASE_URL, REDIS_URL and CHANNEL_LAYER never leak in."""
    env = dict(os.environ)
    for name in ("DATABASE_URL", "REDIS_URL", "CHANNEL_LAYER"):
        env.pop(name, None)
    env.update(
        DJANGO_SETTINGS_MODULE="energy_portal.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DJANGO_DEBUG="0",
        # Production settings, but plain http on the loopback: no TLS proxy in front.
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_SECRET_KEY=secret_key,
        FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def django_setup(env: dict) -> None:
    """Set Django up in this process with the environment of a process under test."""
    os.environ.update(env)
    import django

    django.setup()


def residents_with_sessions(sites: dict) -> dict[str, dict]:
    """A resident for each site of `sites` (name -> Site), named as it, who cannot log in with a
    password and holds one session valid for a year; by name, {"user": id, "session": key}.
    Inside the caller's transaction."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    from devices.models import Site

    User = get_user_model()
    names = list(sites)
    User.objects.bulk_create([User(username=name, password=make_password(None)) for name in names])
    users = {u.username: u for u in User.objects.filter(username__in=names)}
    Site.residents.through.objects.bulk_create(
        [Site.residents.through(site_id=sites[n].pk, user_id=users[n].pk) for n in names]
    )
    store = SessionStore()
    expire = timezone.now() + timezone.timedelta(days=365)
    made, sessions = {}, []
    for name, user in users.items():
        key = get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
        made[name] = {"user": user.pk, "session": key}
        data = {
            "_auth_user_id": str(user.pk),
            "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
            "_auth_user_hash": user.get_session_auth_hash(),
        }
        sessions.append(
            Session(session_key=key, session_data=store.encode(data), expire_date=expire)
        )
    Session.objects.bulk_create(sessions)
    return made


def migrations_fingerprint() -> str:
    """Changes whenever a migration file of the project does."""
    digest = hashlib.sha256()
    for path in sorted(ROOT.glob("*/migrations/*.py")):
        if ".venv" in path.parts:
            continue
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_database(url: str, *, fingerprint_file: Path | None = None) -> bool:
    """Create the database of `url` if it is missing; returns whether it is new.

    With `fingerprint_file`, the database is also dropped and made again when the project's
    migration files changed since it was made (a rewritten work-in-progress migration would
    otherwise leave it out of step); the file keeps the fingerprint it was made with.
    """
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    fingerprint = migrations_fingerprint() if fingerprint_file else None
    with psycopg.connect(admin, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        stale = bool(
            found
            and fingerprint_file
            and (
                not fingerprint_file.exists() or fingerprint_file.read_text().strip() != fingerprint
            )
        )
        if stale:
            print(f"migration files changed: dropping database {name}", file=sys.stderr)
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        if found and not stale:
            return False
        print(f"creating database {name}", file=sys.stderr)
        conn.execute(f'CREATE DATABASE "{name}"')
    if fingerprint_file:
        fingerprint_file.parent.mkdir(parents=True, exist_ok=True)
        fingerprint_file.write_text(fingerprint)
    return True


# -- profiles -------------------------------------------------------------------------------------


def collapsed_stacks(raw: Path) -> Iterator[tuple[str, int]]:
    """(stack, samples) of each line of a py-spy `--format raw` file; a stack is its frames,
    outermost first, joined by ";"."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            yield stack, int(count)
