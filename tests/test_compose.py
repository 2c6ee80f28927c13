"""compose.yaml and the Dockerfile, checked by running what they say.

compose.yaml is rendered with compose's own rules (Debian's `docker-compose config`, which needs
no engine; else PyYAML, whose merge keys are compose's, and the same `${...}` interpolation),
then each portal service's command runs here as a local process with the environment the file
gives it, until it is healthy, and is stopped. What differs from the containers, and why:

- the hosts `timescaledb` and `redis` become the test's PostgreSQL and Redis, in a throwaway
  database and the test's Redis DB; `timescale://` becomes `postgres://`, since the local
  PostgreSQL has no TimescaleDB extension (migrations on TimescaleDB: tests/timescale/);
- `web` listens on a free port of 127.0.0.1, never 8000;
- the `metrics` volume (PROMETHEUS_MULTIPROC_DIR) becomes one temporary folder all share;
- each process gets its own copy of the image's data folder (ENERGY_PORTAL_DATA_DIR), as each
  container has its own file system: the Dockerfile's build steps that can run here
  (collectstatic) fill the copy first, and anything a process writes stays its own.

Afterwards each data folder must hold no embedded server and no development key: a service that
starts without DATABASE_URL, REDIS_URL or the secret key would leave one there.
"""

import http.client
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
import yaml
from cryptography.fernet import Fernet

from tests.e2e.servers import BASE_DIR, free_port

pytestmark = pytest.mark.compose

COMPOSE_FILE = BASE_DIR / "compose.yaml"
DOCKERFILE = BASE_DIR / "Dockerfile"
PORTAL_IMAGE = "energy-portal:latest"
PORTAL_SERVICES = {"migrate", "web", "writer", "worker", "beat", "ven"}
REQUIRED_ENV = (
    "DATABASE_URL",
    "REDIS_URL",
    "DJANGO_SECRET_KEY",
    "FIELD_ENCRYPTION_KEY",
    "DJANGO_DEBUG",
)
READY_TIMEOUT_S = 90
WRITER_READY = r"ingest writer \S+ started"
STOP_TIMEOUT_S = 20
# What a container's environment has before compose adds to it (PATH points at this checkout's
# virtual environment, standing in for the image's Python).
BASE_ENV = {
    "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
    "HOME": str(BASE_DIR),  # the image user's home is /app, the checkout
    "LANG": "C.UTF-8",
}


# ---------------------------------------------------------------------------------------------
# Rendering


_VARIABLE = re.compile(
    r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `$$`."""

    def substitute(match: re.Match) -> str:
        escaped, name, operator, argument, bare = match.groups()
        if escaped:
            return "$"
        name = name or bare
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and operator and operator.startswith(":"))
        if operator in ("-", ":-"):
            return argument if unset_or_empty else value
        if operator in ("?", ":?"):
            if unset_or_empty:
                raise ValueError(f"{name}: {argument}")
            return value
        return value or ""

    return _VARIABLE.sub(substitute, text)


def _interpolated(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: _interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolated(item, env) for item in node]
    return node


def render_with_pyyaml(text: str, env: dict[str, str]) -> dict:
    """What compose makes of `text`: PyYAML applies merge keys (`<<`) as compose does, one level
    deep; then variables are interpolated in every string."""
    return _interpolated(yaml.safe_load(text), env)


def render_with_docker_compose(path: Path, env: dict[str, str]) -> dict:
    result = subprocess.run(
        ["docker-compose", "-f", str(path), "config"],
        env={**BASE_ENV, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return yaml.safe_load(result.stdout)


def render(path: Path, env: dict[str, str]) -> dict:
    if shutil.which("docker-compose"):
        return render_with_docker_compose(path, env)
    return render_with_pyyaml(path.read_text(), env)


def environment_of(service: dict) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def command_of(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def portal_services(config: dict) -> dict[str, dict]:
    return {
        name: service
        for name, service in config["services"].items()
        if service.get("image") == PORTAL_IMAGE or "build" in service
    }


def environment_problems(config: dict) -> list[str]:
    """What a portal service's rendered environment lacks to run in production."""
    problems = []
    for name, service in sorted(portal_services(config).items()):
        env = environment_of(service)
        problems += [f"{name}: no {key}" for key in REQUIRED_ENV if not env.get(key)]
        if env.get("DJANGO_DEBUG", "").lower() not in ("0", "false", "no", "off"):
            problems.append(f"{name}: DJANGO_DEBUG is not off")
    return problems


# ---------------------------------------------------------------------------------------------
# The Dockerfile


@dataclass
class Image:
    env: dict[str, str] = field(default_factory=dict)
    build_commands: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


def dockerfile_image(text: str) -> Image:
    """ENV, the RUN steps of Django's manage.py (the ones that can run here) and CMD of the
    Dockerfile's last stage."""
    text = re.sub(r"\\\n\s*", " ", text)  # line continuations
    stages = re.split(r"^FROM\s.*$", text, flags=re.MULTILINE)
    image = Image()
    for line in stages[-1].splitlines():
        instruction, _, argument = line.strip().partition(" ")
        if instruction == "ENV":
            image.env.update(part.split("=", 1) for part in shlex.split(argument))
        elif instruction == "RUN" and "manage.py" in argument:
            image.build_commands.append(argument)
        elif instruction == "CMD":
            image.cmd = yaml.safe_load(argument)  # the exec form is a JSON array
    return image


# ---------------------------------------------------------------------------------------------
# Running the services here


@dataclass
class Local:
    """Where the containers' hosts lead here."""

    database_url: str  # postgres://, a throwaway database
    redis_url: str
    metrics_dir: Path  # the shared `metrics` volume

    @staticmethod
    def volume_paths(service: dict, volume: str) -> list[str]:
        """Where `service` mounts the named `volume` (short or long form)."""
        paths = []
        for mount in service.get("volumes") or []:
            if isinstance(mount, dict):
                if mount.get("source") == volume:
                    paths.append(mount["target"])
            elif mount.split(":")[0] == volume:
                paths.append(mount.split(":")[1])
        return paths

    def environment(self, compose_env: dict[str, str]) -> dict[str, str]:
        env = dict(compose_env)
        database = urlsplit(env["DATABASE_URL"])
        assert database.hostname == "timescaledb", "DATABASE_URL should name the compose service"
        env["DATABASE_URL"] = self.database_url
        assert urlsplit(env["REDIS_URL"]).hostname == "redis", "REDIS_URL should name the service"
        env["REDIS_URL"] = self.redis_url
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        return env


def local_command(command: list[str], port: int) -> list[str]:
    """The command with `--host 0.0.0.0 --port 8000` made 127.0.0.1 and a free port."""
    line = list(command)
    for option, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if option in line:
            line[line.index(option) + 1] = value
    return line


@dataclass
class Process:
    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                self.command,
                cwd=BASE_DIR,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its group is stopped as a container is
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
            raise AssertionError(f"{self.name} did not stop on SIGTERM:\n{self.output()}") from None


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """The status and body of GET `path` (redirects not followed), 0 while nothing answers."""
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        client.request("GET", path, headers=headers or {})
        response = client.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError:
        return 0, ""
    finally:
        client.close()


def http_status(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    return http_get(port, path, headers)[0]


def succeeds(command: list[str], env: dict[str, str]) -> bool:
    return subprocess.run(command, cwd=BASE_DIR, env=env, capture_output=True).returncode == 0


def wait_for(what: str, ready, processes: list[Process]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        for process in processes:
            if process.popen.poll() is not None:
                raise AssertionError(
                    f"{process.name} exited ({process.popen.returncode}) while waiting for "
                    f"{what}:\n{process.output()}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in processes)
            raise AssertionError(f"{what}: not within {READY_TIMEOUT_S} s\n{logs}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def secrets_env() -> dict[str, str]:
    """The secrets compose.yaml asks its user for."""
    return {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }


@pytest.fixture
def local(tmp_path):
    """A throwaway database beside the test database, and the test Redis DB, emptied."""
    test_url = urlsplit(os.environ["DATABASE_URL"])
    name = f"{test_url.path.lstrip('/') or 'energy_portal'}_compose"
    admin = urlunsplit(test_url._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    redis_client = redis.Redis.from_url(os.environ["REDIS_URL"])
    redis_client.flushdb()
    yield Local(
        database_url=urlunsplit(test_url._replace(scheme="postgres", path=f"/{name}")),
        redis_url=os.environ["REDIS_URL"],
        metrics_dir=tmp_path / "metrics-volume",
    )
    redis_client.flushdb()
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------------------------------
# Tests

BROKEN_COMPOSE = """
x-portal: &portal
  image: energy-portal:latest
  environment:
    DATABASE_URL: postgres://db/portal
    REDIS_URL: redis://redis:6379/0
    DJANGO_DEBUG: "0"
    DJANGO_SECRET_KEY: ${DJANGO_SECRET_KEY:?set DJANGO_SECRET_KEY}
    FIELD_ENCRYPTION_KEY: ${FIELD_ENCRYPTION_KEY:?set FIELD_ENCRYPTION_KEY}
services:
  web:
    <<: *portal
    environment:
      WEB_CONCURRENCY: 2
  worker:
    <<: *portal
"""


def test_a_service_environment_replacing_the_shared_one_is_caught():
    # The mistake compose.yaml once had: web's own `environment:` replaced the anchor's.
    config = render_with_pyyaml(
        BROKEN_COMPOSE, {"DJANGO_SECRET_KEY": "k", "FIELD_ENCRYPTION_KEY": "f"}
    )

    assert environment_problems(config) == [
        "web: no DATABASE_URL",
        "web: no REDIS_URL",
        "web: no DJANGO_SECRET_KEY",
        "web: no FIELD_ENCRYPTION_KEY",
        "web: no DJANGO_DEBUG",
        "web: DJANGO_DEBUG is not off",
    ]


def test_interpolation_follows_compose_rules():
    env = {"SET": "value", "EMPTY": ""}

    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $SET $$SET", env) == (
        "value d  d value $SET"
    )
    with pytest.raises(ValueError, match="UNSET: say it"):
        interpolate("${UNSET:?say it}", env)


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_the_fallback_renders_compose_yaml_as_docker_compose_does(secrets_env):
    env = secrets_env
    ours = render_with_pyyaml(COMPOSE_FILE.read_text(), env)
    theirs = render_with_docker_compose(COMPOSE_FILE, env)

    for name, service in theirs["services"].items():
        assert environment_of(ours["services"][name]) == environment_of(service), name
        if "command" in service:
            assert command_of(ours["services"][name]) == command_of(service), name


def test_compose_refuses_to_render_without_a_secret_key():
    with pytest.raises((ValueError, subprocess.CalledProcessError)):
        render(COMPOSE_FILE, {})


def test_every_portal_service_runs_healthy_with_the_environment_compose_gives_it(
    local, secrets_env, tmp_path
):
    # given: the rendered file and the image
    config = render(COMPOSE_FILE, secrets_env)
    services = portal_services(config)
    assert set(services) == PORTAL_SERVICES
    assert environment_problems(config) == []
    image = dockerfile_image(DOCKERFILE.read_text())
    image_data = tmp_path / "image-var"
    for step in image.build_commands:  # as `docker build` runs them, in the image's folder
        build_env = {**BASE_ENV, **image.env, "ENERGY_PORTAL_DATA_DIR": str(image_data)}
        subprocess.run(["sh", "-c", step], cwd=BASE_DIR, env=build_env, check=True, timeout=120)

    def process(name: str, command: list[str], compose_env: dict[str, str]) -> Process:
        data_dir = tmp_path / f"{name}-var"
        if image_data.exists():
            shutil.copytree(image_data, data_dir)
        else:
            data_dir.mkdir()
        env = {**BASE_ENV, **image.env, **local.environment(compose_env)}
        env["ENERGY_PORTAL_DATA_DIR"] = str(data_dir)
        return Process(name, command, env, log=tmp_path / f"{name}.log")

    # when: migrate runs to completion, then the long-running services start
    one_shot = {
        dependency
        for service in services.values()
        for dependency, condition in (service.get("depends_on") or {}).items()
        if isinstance(condition, dict)
        and condition.get("condition") == "service_completed_successfully"
    }
    assert one_shot == {"migrate"}
    # every portal service mounts the metrics volume where its PROMETHEUS_MULTIPROC_DIR says
    for name, service in services.items():
        target = environment_of(service)["PROMETHEUS_MULTIPROC_DIR"]
        assert Local.volume_paths(service, "metrics") == [target], name
    local.metrics_dir.mkdir()
    stale = local.metrics_dir / "counter_999999.db"  # a process of the previous run
    stale.write_bytes(b"left over")
    migrate = process(
        "migrate", command_of(services["migrate"]), environment_of(services["migrate"])
    )
    migrate.start()
    migrate.popen.wait(timeout=READY_TIMEOUT_S)
    assert migrate.popen.returncode == 0, migrate.output()
    assert not stale.exists(), "migrate should empty the metrics volume"

    web_port, image_port = free_port(), free_port()
    web = services["web"]
    published = web["ports"][0]  # docker-compose renders the long form, the file the short one
    container_port = str(
        published["target"] if isinstance(published, dict) else published.split(":")[-1]
    )
    assert command_of(web)[command_of(web).index("--port") + 1] == container_port
    running = [
        process("web", local_command(command_of(web), web_port), environment_of(web)),
        *(
            process(name, command_of(services[name]), environment_of(services[name]))
            for name in ("writer", "worker", "beat", "ven")
        ),
        # The image's own CMD, as `docker run` would start it with web's environment.
        process("image-cmd", local_command(image.cmd, image_port), environment_of(web)),
    ]
    try:
        for each in running:
            each.start()
        by_name = {each.name: each for each in running}

        # then: web answers its own healthcheck, serves pages (static files from the image)
        healthcheck = [
            part.replace("127.0.0.1:8000", f"127.0.0.1:{web_port}")
            for part in web["healthcheck"]["test"][1:]
        ]
        wait_for("web's healthcheck", lambda: succeeds(healthcheck, by_name["web"].env), running)
        behind_proxy = {"X-Forwarded-Proto": "https"}
        assert http_status(web_port, "/login/", behind_proxy) == 200
        assert http_status(web_port, "/login/") == 301  # plain http: to https
        wait_for(
            "the image's CMD answering health",
            lambda: http_status(image_port, "/api/v1/health/") == 200,
            running,
        )
        # the writer reads the stream, the worker answers a ping, beat sends its tasks to Redis
        writer_log = by_name["writer"].output
        wait_for("the ingest writer", lambda: re.search(WRITER_READY, writer_log()), running)
        ping = ["celery", "-A", "energy_portal", "inspect", "ping", "--timeout", "5"]
        wait_for("the worker answering", lambda: succeeds(ping, by_name["worker"].env), running)
        beat_log = by_name["beat"].output
        wait_for("beat sending a task", lambda: "Sending due task" in beat_log(), running)
        ven_log = by_name["ven"].output  # no VTN connection configured: it waits for one
        wait_for("the OpenADR VEN", lambda: "OpenADR VEN for" in ven_log(), running)
        # /metrics (from an allowed address: 127.0.0.1 by default) adds up web's processes
        status, metrics = http_get(web_port, "/metrics")
        assert status == 200, metrics
        assert 'route="/api/v1/health/"' in metrics
        assert "energy_portal_ingest_stream_length" in metrics
        writers = {path.name.split("_")[-1] for path in local.metrics_dir.glob("*.db")}
        assert len(writers) >= 2, sorted(local.metrics_dir.iterdir())  # web's two processes
    finally:
        for each in running:
            each.stop()

    for each in [migrate, *running]:
        assert "Traceback" not in each.output(), f"{each.name}:\n{each.output()}"
        data_dir = Path(each.env["ENERGY_PORTAL_DATA_DIR"])
        for leftover in ("pgdata", "valkey", "dev-secret-key"):
            assert not (data_dir / leftover).exists(), f"{each.name} made {leftover}"
