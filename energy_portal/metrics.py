"""The portal's Prometheus metrics, gathered across all its processes.

Every process (ASGI servers, ingest writers, Celery worker and beat) updates the metric objects
below. When `PROMETHEUS_MULTIPROC_DIR` is set (by `make run` and compose.yaml, before anything
imports prometheus_client) each process writes its values to files in that folder and
`GET /metrics` adds them up (`MultiProcessCollector`); without it, one process's own values are
served. Figures that live outside the processes (the ingest stream in Redis, the beat's last run)
are read when `/metrics` is scraped (`RedisCollector`).
"""

import asyncio
import atexit
import ipaddress
import logging
import os
import secrets
import socket
import time
from pathlib import Path

import redis
from asgiref.sync import iscoroutinefunction
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily

from django.db import transaction
from django.utils.decorators import sync_and_async_middleware

from energy_portal import metrics_dir
from energy_portal.per_loop import per_loop

logger = logging.getLogger(__name__)

PREFIX = "energy_portal_"


def multiprocess_dir() -> str | None:
    return os.environ.get(metrics_dir.VARIABLE) or None


def process_identifier() -> str:
    """This process among all that share the metrics folder: its host and pid. The containers of
    a compose project share the volume, and each numbers its processes from 1."""
    return f"{socket.gethostname().replace('_', '-')}-{os.getpid()}"


if multiprocess_dir():
    # Before any metric is made: each makes its value of this class, in files named by it.
    values.ValueClass = values.MultiProcessValue(process_identifier=process_identifier)

DEVICE_FRAMES = Counter(
    PREFIX + "device_frames",
    "Frames received on device sockets, by type (unknown: a type the portal does not know; "
    "error: not a readable frame at all, or refused before its type was read).",
    ["type"],
)
READINGS = Counter(
    PREFIX + "readings",
    "Readings handed to the ingest pipeline, by source and outcome (accepted or rejected).",
    ["source", "outcome"],
)
COMMAND_OUTCOMES = Counter(
    PREFIX + "command_outcomes",
    "Commands that reached a final status: done, failed, rejected (by the device) or expired.",
    ["status"],
)
HTTP_REQUESTS = Counter(
    PREFIX + "http_requests",
    "HTTP requests answered, by method, route pattern and status class.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    PREFIX + "http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route pattern and status class.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WRITER_BATCH_ROWS = Histogram(
    PREFIX + "writer_batch_rows",
    "Readings per batch the ingest writer wrote.",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10_000, 20_000, 50_000),
)
WRITER_BATCH_SECONDS = Histogram(
    PREFIX + "writer_batch_write_seconds",
    "Time to write one batch to the database and acknowledge it in the stream.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SOCKETS_OPEN = Gauge(
    PREFIX + "sockets_open",
    "WebSockets open now, by kind (device: a Pi; viewer: a browser's live feed).",
    ["kind"],
    multiprocess_mode="livesum",
)


def socket_opened(kind: str) -> bool:
    """Count a socket of `kind` as open; True, for the consumer to remember it was counted."""
    SOCKETS_OPEN.labels(kind).inc()
    return True


def socket_closed(kind: str, counted: bool) -> bool:
    """Count a socket out, if it was counted in; False, for the consumer to remember."""
    if counted:
        SOCKETS_OPEN.labels(kind).dec()
    return False


def readings_counted(*, result, source: str, later: bool = False) -> None:
    """Count what the ingest pipeline was handed: valid readings and rejected ones; `later`
    (from an event loop: the device sockets) with the loop's tally (`Tally`)."""
    add = _tally().add if later else _add
    if result.readings:
        add(READINGS, (source, "accepted"), len(result.readings))
    if result.rejected:
        add(READINGS, (source, "rejected"), len(result.rejected))


def frame_counted(kind: str) -> None:
    """A frame of a device socket, by its type, with the event loop's tally (`Tally`)."""
    _tally().add(DEVICE_FRAMES, (kind,))


def _add(counter: Counter, labels: tuple[str, ...], amount: int = 1) -> None:
    counter.labels(*labels).inc(amount)


class Tally:
    """Counts of the device sockets' hot path, kept in a dict and added to their counters at
    most `flush_s` after the first, one call per series, rather than a counter call per frame.

    A labelled counter's increment costs a few microseconds (the label look-up and its lock),
    and in multiprocess mode, as `make run` and compose run, about 15: with two counters per
    telemetry frame, several percent of a server's CPU at a frame per device a second. Counts
    reach `/metrics` within `flush_s`; a process stopping flushes its tally first
    (`energy_portal.asgi.lifespan`). One per event loop (`_tally`): added to and flushed on its
    loop's thread only."""

    def __init__(self, flush_s: float = 1.0):
        self.flush_s = flush_s
        self._counts: dict[tuple[Counter, tuple[str, ...]], int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, counter: Counter, labels: tuple[str, ...], amount: int = 1) -> None:
        key = (counter, labels)
        self._counts[key] = self._counts.get(key, 0) + amount
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, self._counts = self._counts, {}
        for (counter, labels), amount in counts.items():
            _add(counter, labels, amount)


_tally = per_loop(Tally)


def tally_flush() -> None:
    """Add the running loop's tallied counts to their counters now (a server stopping)."""
    _tally().flush()


def command_outcome_counted(status: str) -> None:
    """Count a command reaching its final status, once the change is committed."""
    transaction.on_commit(lambda: COMMAND_OUTCOMES.labels(str(status)).inc())


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def _observe(request, response, started: float) -> None:
    match = getattr(request, "resolver_match", None)
    route = "/" + match.route if match is not None else "unmatched"
    labels = (request.method, route, status_class(response.status_code))
    HTTP_REQUESTS.labels(*labels).inc()
    HTTP_LATENCY.labels(*labels).observe(time.perf_counter() - started)


@sync_and_async_middleware
def http_metrics_middleware(get_response):
    """Counts and times each request by route pattern (`/api/v1/sites/<int:pk>/`, never the raw
    path, so ids cannot multiply the series); an unrouted request (a 404, a static file) is
    `unmatched`. First in MIDDLEWARE, so it times the whole of Django's work; sync and async
    alike, so it adds no thread switch to an async chain."""
    if iscoroutinefunction(get_response):

        async def middleware(request):
            started = time.perf_counter()
            response = await get_response(request)
            _observe(request, response, started)
            return response

        return middleware

    def middleware(request):
        started = time.perf_counter()
        response = get_response(request)
        _observe(request, response, started)
        return response

    return middleware


class RedisCollector:
    """Figures read from Redis at scrape time: the ingest stream (length, its writers' lag and
    pending entries, the age of the oldest unwritten and oldest pending entries) and how long ago
    beat last ran. A Redis that cannot answer is a gauge (`energy_portal_redis_up` 0), not a
    failed scrape."""

    def collect(self):
        # Imported here: the modules that know these names import this one to count.
        from energy_portal.health import BEAT_KEY
        from energy_portal.redis_client import sync_client
        from telemetry.services import INGEST_STREAM
        from telemetry.writer import GROUP

        up = GaugeMetricFamily(PREFIX + "redis_up", "1 when Redis answered this scrape.")
        try:
            client = sync_client()
            pipe = client.pipeline(transaction=False)
            pipe.xlen(INGEST_STREAM)
            pipe.xrange(INGEST_STREAM, count=1)
            pipe.get(BEAT_KEY)
            length, oldest, beat = pipe.execute()
            groups = _groups(client, INGEST_STREAM, GROUP)
        except Exception as exc:  # any Redis failure is what the gauge reports
            logger.warning("metrics: Redis did not answer (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        now = time.time()
        yield GaugeMetricFamily(
            PREFIX + "ingest_stream_length",
            "Entries in the ingest stream not yet written (writers delete what they commit).",
            value=length,
        )
        yield GaugeMetricFamily(
            PREFIX + "ingest_oldest_entry_age_seconds",
            "How long the oldest unwritten entry of the ingest stream has waited (0: none).",
            value=_age(oldest[0][0], now) if oldest else 0.0,
        )
        lag = GaugeMetricFamily(
            PREFIX + "ingest_group_lag",
            "Entries of the ingest stream the writers' group has not read yet.",
            labels=["group"],
        )
        pending = GaugeMetricFamily(
            PREFIX + "ingest_group_pending",
            "Entries the writers' group has read but not acknowledged (written) yet.",
            labels=["group"],
        )
        pending_age = GaugeMetricFamily(
            PREFIX + "ingest_oldest_pending_age_seconds",
            "How long the oldest read but unacknowledged entry has waited (0: none).",
            labels=["group"],
        )
        for name, info in groups.items():
            lag.add_metric([name], info["lag"])
            pending.add_metric([name], info["pending"])
            pending_age.add_metric([name], _age(info["oldest"], now) if info["oldest"] else 0.0)
        yield lag
        yield pending
        yield pending_age
        # NaN until beat has run once: "never" is not "just now".
        yield GaugeMetricFamily(
            PREFIX + "beat_last_run_age_seconds",
            "Seconds since Celery beat's heartbeat task last ran (NaN: never).",
            value=now - float(beat) if beat is not None else float("nan"),
        )


def _age(entry_id: bytes, now: float) -> float:
    """Seconds since a stream entry was added (its id starts with the epoch milliseconds)."""
    return max(0.0, now - int(entry_id.split(b"-")[0]) / 1000)


def _groups(client, stream: str, group: str) -> dict[str, dict]:
    """The writers' group of the stream: lag, pending count, oldest pending id; none if the
    stream or group does not exist yet."""
    try:
        infos = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream yet
        return {}
    found = {}
    for info in infos:
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name != group:
            continue
        summary = client.xpending(stream, group)
        found[name] = {
            # Redis gives no lag when it cannot tell (after deletions past the read point):
            # then what is pending is the best figure there is.
            "lag": info.get("lag") or 0,
            "pending": summary["pending"],
            "oldest": summary["min"] if summary["pending"] else None,
        }
    return found


def exposition() -> bytes:
    """The text `/metrics` serves: every process's metrics (or this one's) and Redis's figures."""
    registry = CollectorRegistry()
    if path := multiprocess_dir():
        _forget_dead_processes(Path(path))
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(RedisCollector())
    return generate_latest(registry)


class _ThisProcess:
    """The process's own registry, as one collector of the registry a scrape builds."""

    def collect(self):
        return REGISTRY.collect()


def metrics_allowed(*, authorization: str, address: str, token: str, allow: list) -> bool:
    """Whether a scrape may read the metrics: the bearer token matches (compared in constant
    time), or the client's address is within the allow-list (addresses and networks)."""
    scheme, _, given = authorization.partition(" ")
    if token and scheme.lower() == "bearer" and secrets.compare_digest(given.strip(), token):
        return True
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(client in network for network in allow)


def process_exited() -> None:
    """This process's live gauges (sockets open) stop counting: called as it exits (atexit; for
    ASGI servers, whose Uvicorn ends them by re-raising SIGTERM, at lifespan shutdown)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(process_identifier())


def _forget_dead_processes(path: Path) -> None:
    """Live gauges of processes of this host that died without saying so (killed, crashed): a
    server process Uvicorn restarts would otherwise have its sockets counted twice."""
    host = process_identifier().rsplit("-", 1)[0]
    for file in path.glob(f"gauge_live*_{host}-*.db"):
        pid = file.stem.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(f"{host}-{pid}", str(path))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive
        return True
    return True


if multiprocess_dir():
    atexit.register(process_exited)
