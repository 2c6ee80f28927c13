"""Driver of the live-path benchmark (on demand; not part of the test suite).

    python -m bench.live.run [--n 100,500,1000,2000] [--duration 20]
        [--servers daphne-core,daphne-pubsub,uvicorn-core,uvicorn-pubsub,relay] [--quick]
        [--profile daphne-core] [--wait-quiet]

For each server configuration: flush the benchmark's Redis DB, start the server as a subprocess on
127.0.0.1, and run the load generator (`bench.live.loadgen`, a separate process) through
(a) the N sweep at 1 Hz per device, (b) the sustained-rate ramp, (c) idle sockets per core.
Prints a results table (with ratios against the bare `websockets` relay measured in the same run)
and writes everything to var/bench-live-<timestamp>.json. See bench/live/README.md.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import common as shared
from bench.common import collapsed_stacks, log
from bench.live import common

CONFIGS = ["daphne-core", "daphne-pubsub", "uvicorn-core", "uvicorn-pubsub", "relay"]
WHATIFS = (
    "nolock",
    "nogc",
    "nobatch",
    "probe",
)  # patched in by bench/live/whatif_asgi.py
# Also accepted: granian-core, granian-pubsub (Granian, a Rust ASGI server; +w2 as for Uvicorn).
FULL_RATES = [
    250,
    500,
    1000,
    1500,
    2000,
    3000,
    4000,
    6000,
    8000,
    12000,
    16000,
    20000,
    24000,
    32000,
    40000,
    48000,
]


# -- processes ------------------------------------------------------------------------------------


def code_state() -> dict:
    """The commit and the uncommitted changes to the portal's code when a server starts."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=common.ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.rstrip("\n")

    dirty = [
        line[3:]
        for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
        if line[3:].endswith(".py") and not line[3:].startswith(("bench/", "tests/"))
    ]
    head = git("rev-parse", "--short", "HEAD").strip()
    return {"head": head, "uncommitted": dirty, "at": time.time()}


def server_command(config: str, port: int, uvicorn_ws: str) -> tuple[list[str], dict]:
    py = common.PYTHON
    if config == "relay":
        cmd = [
            py,
            "-m",
            "bench.live.relay",
            "--port",
            str(port),
            "--tokens",
            str(common.RELAY_TOKENS),
        ]
        return cmd, common.portal_env()
    base, *variants = config.split("+")
    server, _, layer = base.partition("-")
    if layer not in ("core", "pubsub") or not set(variants) <= {"pool", *WHATIFS, "w2", "rt2"}:
        raise SystemExit(
            f"unknown server config {config!r}; known: {', '.join(CONFIGS)} "
            f"(+pool, +w2, +{', +'.join(WHATIFS)})"
        )
    env = common.portal_env(channel_layer=layer)
    app = "energy_portal.asgi:application"
    if "pool" in variants:
        # What-if: redis-py's asyncio pools allow 100 connections and then *raise*
        # MaxConnectionsError; a larger pool (channel layer and the portal's own client alike,
        # both built from REDIS_URL) shows what that limit costs.
        env["REDIS_URL"] += ("&" if "?" in env["REDIS_URL"] else "?") + "max_connections=5000"
    if patches := [variant for variant in variants if variant in WHATIFS]:
        env["BENCH_WHATIF"] = ",".join(patches)
        app = "bench.live.whatif_asgi:application"
    if server == "daphne":
        cmd = shared.daphne_command(app, port)
    elif server == "granian":
        workers = ["--workers", "2"] if "w2" in variants else []
        # +rt2: two Rust runtime threads (socket I/O and framing) beside the Python thread
        threads = ["--runtime-threads", "2"] if "rt2" in variants else []
        cmd = shared.granian_command(app, port, *workers, *threads)
    elif server == "uvicorn":
        # +w2: two worker processes (one per core) behind one listening socket
        workers = ["--workers", "2"] if "w2" in variants else []
        cmd = shared.uvicorn_command(app, port, "--ws", uvicorn_ws, *workers)
    else:
        raise SystemExit(f"unknown server config {config!r}; known: {', '.join(CONFIGS)}")
    return cmd, env


def redis_client():
    import redis

    return redis.Redis.from_url(common.redis_url())


# -- plan -----------------------------------------------------------------------------------------


def build_plans(args) -> dict:
    if args.quick:
        sweep = {"n": args.n or [100, 200], "duration_s": args.duration or 6, "warmup_s": 2}
        sustained = {
            "n": 50,
            "rates": args.rates or [500, 1000, 2000, 4000],
            "step_s": 3,
            "warmup_s": 1,
            "refine": 1,
            "drain_s": 3,
        }
        idle = {"k": args.idle_k or [200, 400], "window_s": 4, "heartbeat_s": 15}
    else:
        duration = args.duration or 20
        sweep = {
            "n": args.n or [100, 500, 1000, 2000],
            "duration_s": duration,
            "warmup_s": min(5, duration / 4),
        }
        sustained = {
            "n": args.sustained_n,
            "rates": args.rates or FULL_RATES,
            "step_s": args.step,
            "warmup_s": 1,
            "refine": 2,
            "drain_s": 5,
        }
        idle = {
            "k": args.idle_k or [1000, 2000, 4000],
            "window_s": args.idle_window,
            "heartbeat_s": 15,
        }
    sweep.update(rate_hz=1.0, drain_s=5)
    if sustained["n"] not in sweep["n"]:
        sweep["n"] = sorted({*sweep["n"], sustained["n"]})
    return {
        "sweep": sweep if not args.skip_sweep else {"n": []},
        "sustained": sustained if not args.skip_sustained else None,
        "idle": idle if not args.skip_idle else None,
    }


def run_config(config: str, phases: dict, entries: list[dict], args, redis_pid) -> dict:
    port = shared.free_port()
    redis_client().flushdb()
    cmd, env = server_command(config, port, args.uvicorn_ws)
    common.LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = common.LOG_DIR / f"{config}.log"
    log(f"== {config}: {' '.join(cmd[1:])} (log {log_path.relative_to(common.ROOT)})")
    code = code_state()  # the code under test may change between configurations of one run
    started = time.monotonic()
    server = shared.spawn(cmd, env=env, log_path=log_path)
    try:
        shared.wait_port(port, server)
        plan = {
            "label": config,
            "kind": "relay" if config == "relay" else "portal",
            "host": "127.0.0.1",
            "port": port,
            "server_pid": server.pid,
            "redis_pid": redis_pid,
            "entries": entries,
            "connect_concurrency": args.connect_concurrency,
            **phases,
        }
        with tempfile.TemporaryDirectory() as tmp:
            loadgen, out_path = shared.start_loadgen("bench.live.loadgen", plan, Path(tmp))
            try:
                _follow(loadgen, args.config_timeout)
            finally:
                shared.stop(loadgen, grace=10)
            result = (
                json.loads(out_path.read_text()) if out_path.exists() else {"errors": ["no result"]}
            )
    except Exception as exc:
        log(f"{config}: failed: {exc}")
        result = {"errors": [repr(exc)]}
    finally:
        crashed = server.poll()
        shared.stop(server, grace=10)
    result.update(
        config=config, command=cmd[1:], seconds=round(time.monotonic() - started, 1), code=code
    )
    if crashed is not None:
        result.setdefault("errors", []).append(f"server exited by itself with code {crashed}")
    # -9: it did not stop within 10 s of SIGTERM (busy closing thousands of sockets).
    result["server_exit_code"] = server.returncode
    result["server_log_tail"] = _tail(log_path)
    result["server_log_counts"] = _log_counts(log_path)
    return result


LOG_SIGNS = {
    "tracebacks": "Traceback (most recent call last)",
    "redis MaxConnectionsError": "MaxConnectionsError",
    "core layer: channels over capacity (messages dropped)": "over capacity",
    "ChannelFull": "ChannelFull",
    "handshake/app timeouts": "took too long",
    "+probe: event loop late > 30 ms": "ms; gc ",
    "+probe: full collections": " full collection ",
}


def _log_counts(path: Path) -> dict:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    return {name: text.count(sign) for name, sign in LOG_SIGNS.items() if sign in text}


def _follow(proc: subprocess.Popen, timeout: float) -> None:
    """Wait for the load generator (its progress goes to our stderr), within a time bound."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            log(f"load generator over its {timeout:.0f}s budget; stopping it")
            return
        time.sleep(0.5)


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    # Repeated lines (e.g. one per connection) would drown the interesting ones.
    counts = Counter(line.split(" ", 3)[-1][:120] for line in text)
    return [f"{n}x {line}" for line, n in counts.most_common(lines)]


# -- profile --------------------------------------------------------------------------------------

CATEGORIES = [
    ("channels_redis group_send / receive", ("channels_redis/",)),
    ("redis-py client", ("redis/",)),
    ("msgpack", ("msgpack",)),
    ("json encode/decode", ("json/",)),
    ("Twisted / autobahn / daphne", ("twisted/", "autobahn/", "daphne/")),
    ("uvicorn / websockets / wsproto", ("uvicorn/", "websockets/", "wsproto/")),
    ("channels (consumer dispatch, middleware)", ("channels/",)),
    ("asgiref sync_to_async hops", ("asgiref/",)),
    ("Django (ORM, close_old_connections)", ("django/",)),
    ("portal: devices/consumers.py", ("devices/consumers",)),
    ("portal: telemetry (validation, ingest)", ("telemetry/",)),
    ("portal: energy_portal (realtime, live_hub, redis_client: ScriptLink)", ("energy_portal/",)),
]
# Where a sample's CPU goes, by the innermost frame that belongs to a known component.
COMPONENTS = [
    (
        "socket I/O syscalls (send/recv/epoll; uvloop native)",
        (
            "_SelectorSocketTransport.write",
            "untilConcludes",
            "_read_ready",
            "doRead (twisted",
            "writeSomeData",
            "_PollLikeSelector.modify",
            "StreamWriter.write",
            "Runner.run (asyncio/runners",  # under uvloop: time inside the C loop (I/O, callbacks)
        ),
    ),
    ("asyncio task/future machinery", ("asyncio/", "selectors.py", "_weakrefset", "contextvars")),
    (
        "thread hand-off (concurrent.futures, threading)",
        ("concurrent/futures", "threading.py", "queue.py"),
    ),
    *[(name, needles) for name, needles in CATEGORIES],
    ("logging", ("logging/",)),
]


# Stages of the live path (inclusive: share of busy samples whose stack is in the stage).
def _any(*needles):
    return lambda stack: any(needle in stack for needle in needles)


STAGES = [
    (
        "per-message DB-connection hop: channels dispatch -> aclose_old_connections",
        _any("aclose_old_connections"),
    ),
    (
        "device frame: json.loads + validation",
        _any("json/decoder", "readings_validate", "telemetry_items"),
    ),
    ("ingest: live message and sample rows built", _any("_point_messages", "_samples")),
    (
        "ingest: socket buffer trip (one script: live publishes + durable buffer)",
        _any("_SocketBuffer"),
    ),
    (
        "answers to the device (acks in frame order + socket send)",
        _any("DeviceConsumer._answer", "DeviceConsumer._send_answers", "_ack_text"),
    ),
    (
        "channel-layer receive (core: BZPOPMIN loop; pubsub: reader task)",
        _any(
            "RedisChannelLayer.receive",
            "_brpop_with_clean",
            "_clean_receive_backup",
            "_do_receiving",
            "RedisPubSubChannelLayer.receive",
        ),
    ),
    ("viewer: live hub reads Redis and fills outboxes", _any("LiveHub._serve")),
    ("viewer: outbox -> socket send", _any("Outbox.drain")),
    (
        "device liveness: silence watch + last-seen notes (socket_registry)",
        _any("SilenceWatch", "socket_registry"),
    ),
]
IDLE_LEAVES = (
    "EpollSelector.select",
    "select (selectors.py",
    "_worker (concurrent/futures/thread.py:8",
)


def _component(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in COMPONENTS:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def summarise_profile(raw: Path, expected: int | None = None) -> dict:
    """From py-spy's collapsed stacks of the server: for the event-loop thread's busy samples,
    the share spent under each part of the stack (inclusive), by component of the innermost
    known frame (self), and the hottest leaf functions; plus how busy the thread pool was.
    (Under uvloop an idle loop thread has no Python frames, so it is not sampled at all: busy
    share is then samples / `expected`.)"""
    loop_busy = loop_idle = worker_busy = 0
    inclusive: Counter = Counter()
    stages: Counter = Counter()
    components: Counter = Counter()
    leaves: Counter = Counter()
    for stack, n in collapsed_stacks(raw):
        frames = stack.split(";")
        leaf = frames[-1].strip()
        idle = any(x in leaf for x in IDLE_LEAVES)
        if frames[0].startswith("Thread._bootstrap"):  # the sync_to_async worker threads
            if not idle:
                worker_busy += n
            continue
        if idle:
            loop_idle += n
            continue
        loop_busy += n
        for name, needles in CATEGORIES:
            if any(needle in stack for needle in needles):
                inclusive[name] += n
        for name, matches in STAGES:
            if matches(stack):
                stages[name] += n
        components[_component(frames)] += n
        leaves[leaf] += n
    total = max(loop_busy + loop_idle, expected or 0)
    if not loop_busy:
        return {"samples": total}

    def share(counter: Counter, limit: int | None = None) -> dict:
        return {k: round(100 * v / loop_busy, 1) for k, v in counter.most_common(limit)}

    return {
        "samples": total,
        "loop_busy_pct": round(100 * loop_busy / total, 1),
        "worker_threads_busy_samples_pct_of_loop": round(100 * worker_busy / total, 1),
        "self_by_component_pct": share(components),
        "stages_pct": share(stages),
        "inclusive_pct": share(inclusive),
        "top_self_pct": share(leaves, 25),
    }


PROFILE_HZ = 50  # py-spy pauses the server to sample (exact stacks); keep the cost low


def profile(config: str, rate: float, n: int, entries: list[dict], args, redis_pid) -> dict:
    port = shared.free_port()
    redis_client().flushdb()
    cmd, env = server_command(config, port, args.uvicorn_ws)
    log(f"== profile {config} at {rate:.0f} msg/s ({n} devices + {n} viewers)")
    server = shared.spawn(cmd, env=env, log_path=common.LOG_DIR / f"profile-{config}.log")
    result: dict = {"config": config, "rate_per_s": rate}
    try:
        shared.wait_port(port, server)
        seconds = args.profile_seconds
        plan = {
            "label": f"profile {config}",
            "kind": "portal",
            "host": "127.0.0.1",
            "port": port,
            "server_pid": server.pid,
            "redis_pid": redis_pid,
            "entries": entries[:n],
            "connect_concurrency": args.connect_concurrency,
            "sweep": {"n": []},
            "hold": {"n": n, "rate_per_s": rate, "seconds": 2 * seconds + 8},
        }
        with tempfile.TemporaryDirectory() as tmp:
            ready = Path(tmp, "ready")
            plan["hold"]["ready_file"] = str(ready)
            loadgen, out_path = shared.start_loadgen("bench.live.loadgen", plan, Path(tmp))
            # The load generator creates the ready file when the sockets are open and the load
            # starts; profile from 2 s later.
            deadline = time.monotonic() + 180
            while not ready.exists() and time.monotonic() < deadline and loadgen.poll() is None:
                time.sleep(0.2)
            time.sleep(2)
            svg = common.VAR / f"profile-live-{config}.svg"
            raw = common.VAR / f"profile-live-{config}.txt"
            pyspy = str(Path(common.PYTHON).with_name("py-spy"))
            result["pyspy"] = []
            for fmt, out in (("flamegraph", svg), ("raw", raw)):
                done = subprocess.run(
                    [
                        pyspy,
                        "record",
                        "--pid",
                        str(server.pid),
                        "--duration",
                        str(seconds),
                        "--rate",
                        str(PROFILE_HZ),
                        "--format",
                        fmt,
                        "-o",
                        str(out),
                    ],
                    check=False,
                    timeout=seconds + 30,
                    capture_output=True,
                    text=True,
                )
                result["pyspy"].append(
                    {"format": fmt, "exit": done.returncode, "output": done.stderr[-600:]}
                )
            _follow(loadgen, 120)
            shared.stop(loadgen, grace=10)
            if out_path.exists():
                result["hold"] = json.loads(out_path.read_text()).get("hold")
            result.update(
                svg=str(svg.relative_to(common.ROOT)), raw=str(raw.relative_to(common.ROOT))
            )
            if raw.exists():
                result["summary"] = summarise_profile(raw, expected=seconds * PROFILE_HZ)
                if config == "daphne-core":
                    (common.VAR / "profile-live.svg").write_bytes(svg.read_bytes())
    finally:
        shared.stop(server, grace=10)
    return result


# -- report ---------------------------------------------------------------------------------------


def _ms(summary: dict) -> str:
    if not summary or summary.get("p50") is None:
        return "—"
    return f"{summary['p50']:.1f}/{summary['p95']:.1f}/{summary['p99']:.1f}"


def _flag(step: dict) -> str:
    lost = sum((step.get("closed_by_server") or {}).values())
    short = step.get("sent_per_s", 0) < 0.95 * step.get("target_per_s", 0)
    return "!" if lost or short else ""


def report(results: dict) -> str:
    runs = results["runs"]
    ns = sorted({s["n"] for r in runs.values() for s in r.get("sweep", [])})
    relay = runs.get("relay", {})
    relay_sustained = (relay.get("sustained") or {}).get("best_delivered_per_s")
    out = []
    out.append("")
    out.append(
        "Device→viewer latency, N devices at 1 Hz + N viewers: p50/p95/p99 ms (delivered/sent)"
    )
    header = f"{'config':20}" + "".join(f"{'N=' + str(n):>34}" for n in ns)
    out.append(header)
    for config, run in runs.items():
        cells = {s["n"]: s for s in run.get("sweep", [])}
        row = f"{config:20}"
        for n in ns:
            s = cells.get(n)
            cell = (
                f"{_ms(s['latency_ms'])} ({s['delivered_ratio'] or 0:.3f}){_flag(s)}" if s else "—"
            )
            row += f"{cell:>34}"
        out.append(row)
    out.append(
        "  ! = the server closed sockets during the step or < 95 % of the target rate was sent "
        "(see details)"
    )
    out.append("")
    out.append("Sweep details: sent/s of target, server CPU, sockets closed by the server, errors")
    for config, run in runs.items():
        for s in run.get("sweep", []):
            closed = sum((s.get("closed_by_server") or {}).values())
            reopened = s.get("reopened_before") or {}
            out.append(
                f"  {config:20}N={s['n']:<5} sent {s['sent_per_s']:>7}/{s['target_per_s']:<7} "
                f"cpu srv {s.get('server_cpu', 0):.2f} redis {s.get('redis_cpu', 0):.2f} "
                f"gen {s.get('loadgen_cpu', 0):.2f} others {s.get('others_cpu', 0):.2f}  "
                f"closed {closed}"
                + (
                    f" (reopened before: {reopened.get('devices', 0)} dev, "
                    f"{reopened.get('viewers', 0)} viewers)"
                    if reopened
                    else ""
                )
                + (f"  errors {s['errors']}" if s.get("errors") else "")
            )
    out.append("")
    sn = (results["phases"].get("sustained") or {}).get("n", "?")
    out.append(
        f"Sustained msg/s: {sn} devices + {sn} viewers, send rate stepped up; "
        "'sustained' = highest step"
    )
    out.append(
        "with ≥99% of sent points delivered, p99 ≤ 250 ms and ≥95% of the target actually offered."
    )
    out.append(
        f"{'config':20}{'msg/s':>9}{'p99 ms':>9}{'xrelay':>8}{'1st fail':>10}"
        f"{'srv cpu':>9}{'ms cpu/msg':>11}{'redis':>7}{'loadgen':>9}{'others':>8}"
        "  why the next step failed"
    )
    for config, run in runs.items():
        s = run.get("sustained")
        if not s:
            continue
        best = next((x for x in s["steps"] if x.get("target_total") == s["best_target_per_s"]), {})
        fail = next((x for x in s["steps"] if not x.get("passed")), {})
        ratio = f"{s['best_delivered_per_s'] / relay_sustained:.2f}x" if relay_sustained else "—"
        rate = best.get("delivered_per_s") or 0
        per_msg = f"{1000 * best.get('server_cpu', 0) / rate:.3f}" if rate else "—"
        out.append(
            f"{config:20}{s['best_delivered_per_s']:>9.0f}"
            f"{best.get('latency_ms', {}).get('p99') or 0:>9.1f}"
            f"{ratio:>8}{s['first_failing_target_per_s'] or '—':>10}"
            f"{best.get('server_cpu', 0):>9.2f}{per_msg:>11}{best.get('redis_cpu', 0):>7.2f}"
            f"{best.get('loadgen_cpu', 0):>9.2f}{best.get('others_cpu', 0):>8.2f}"
            f"  {fail.get('verdict', '')}"
        )
    out.append("")
    out.append("Idle device sockets (heartbeat every 15 s): server CPU and memory")
    out.append(
        f"{'config':20}{'K':>6}{'cpu (cores)':>12}{'sockets/core':>14}{'marginal':>10}{'RSS MB':>8}"
        f"{'KB/socket':>11}"
    )
    for config, run in runs.items():
        idle = run.get("idle")
        if not idle:
            continue
        for p in idle["points"]:
            out.append(
                f"{config:20}{p['k']:>6}{p['server_cpu']:>12.3f}"
                f"{p.get('sockets_per_core') or '—':>14}"
                f"{p.get('sockets_per_core_marginal') or '—':>10}{p['rss_mb']:>8.0f}"
                f"{idle.get('memory_per_socket_kb') or '—':>11}"
            )
    out.append("")
    out.append("Connection set-up (sockets opened per second, handshake p99)")
    for config, run in runs.items():
        cells = [
            f"{c['what']}: {c['per_s']}/s p99 {c['handshake_ms']['p99']} ms"
            + (f" FAILED {c['failed']}" if c["failed"] else "")
            for c in run.get("connect", [])
        ]
        out.append(f"{config:20}" + "; ".join(cells[-2:]))
    out.append("")
    out.append("Targets")
    for config, run in runs.items():
        if config == "relay":
            continue
        at1000 = next((s for s in run.get("sweep", []) if s["n"] == 1000), None)
        s = run.get("sustained") or {}
        ok_delivery = bool(at1000) and (at1000["delivered_ratio"] or 0) >= 0.99
        p99 = at1000["latency_ms"]["p99"] if at1000 else None
        lat_ok = "p99 ≤ 50 ms at 1000+1000: " + (
            "n/a"
            if p99 is None
            else f"{p99:.1f} ms {'MET' if p99 <= 50 and ok_delivery else 'MISSED'}"
        )
        if relay_sustained and s:
            ratio = s["best_delivered_per_s"] / relay_sustained
            sus_ok = f"≥ 0.5x relay: {ratio:.2f}x {'MET' if ratio >= 0.5 else 'MISSED'}"
        else:
            sus_ok = "≥ 0.5x relay: n/a"
        out.append(f"{config:20}{lat_ok}; {sus_ok}")
    for name, prof in results.get("profiles", {}).items():
        summary = prof.get("summary") or {}
        out.append("")
        out.append(
            f"Profile {name} at {prof['rate_per_s']:.0f} msg/s "
            f"({summary.get('samples', 0)} samples, {prof.get('svg')}):"
        )
        out.append(
            f"  event loop busy {summary.get('loop_busy_pct')}% of samples; where that goes:"
        )
        for k, v in list(summary.get("self_by_component_pct", {}).items())[:12]:
            out.append(f"  {v:5.1f}%  {k}")
        out.append("  by stage of the live path (inclusive):")
        for k, v in summary.get("stages_pct", {}).items():
            out.append(f"  {v:5.1f}%  {k}")
        out.append("  by library (inclusive: share of busy samples passing through):")
        for k, v in list(summary.get("inclusive_pct", {}).items())[:12]:
            out.append(f"  {v:5.1f}%  {k}")
    logs = {c: r.get("server_log_counts") for c, r in runs.items() if r.get("server_log_counts")}
    if logs:
        out.append("")
        out.append("Server logs (var/bench-live/logs/<config>.log):")
        for config, counts in logs.items():
            out.append(f"  {config:20}{counts}")
    errors = {c: r.get("errors") for c, r in runs.items() if r.get("errors")}
    if errors:
        out.append("")
        out.append(f"Errors: {errors}")
    return "\n".join(out)


# -- main -----------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=_ints, help="N sweep, e.g. 100,500,1000,2000")
    parser.add_argument("--duration", type=float, help="seconds per N step (default 20)")
    parser.add_argument("--servers", default=",".join(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="small N, short steps: a smoke test")
    parser.add_argument("--rates", type=_ints, help="sustained ramp, total msg/s per step")
    parser.add_argument("--sustained-n", type=int, default=100)
    parser.add_argument("--step", type=float, default=5, help="seconds per sustained step")
    parser.add_argument("--idle-k", type=_ints, help="idle socket counts, e.g. 1000,2000,4000")
    parser.add_argument("--idle-window", type=float, default=10)
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-sustained", action="store_true")
    parser.add_argument("--skip-idle", action="store_true")
    parser.add_argument(
        "--uvicorn-ws",
        default="websockets-sansio",
        choices=["websockets", "websockets-sansio", "wsproto"],
    )
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--config-timeout", type=float, default=900, help="bound per server config")
    parser.add_argument(
        "--profile", default="", help="configs to profile with py-spy under load, e.g. daphne-core"
    )
    parser.add_argument(
        "--profile-rate",
        type=float,
        help="msg/s while profiling (default: that config's sustained rate)",
    )
    parser.add_argument("--profile-seconds", type=int, default=15)
    parser.add_argument(
        "--profile-n", type=int, default=100, help="devices (+ viewers) while profiling"
    )
    parser.add_argument(
        "--wait-quiet",
        action="store_true",
        help="first wait (≤35 min) for the 1-minute load to drop below 0.8",
    )
    args = parser.parse_args()

    shared.stop_children_on_exit()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by servers and loadgen
    if hard < 10000:
        log(f"warning: RLIMIT_NOFILE hard limit is {hard}; large N may run out of sockets")

    quiet = shared.wait_quiet(35 * 60, 0.8) if args.wait_quiet else "not waited for"
    log(f"start: {quiet}; load average {Path('/proc/loadavg').read_text().strip()}")
    configs = [c.strip() for c in args.servers.split(",") if c.strip()]
    phases = build_plans(args)
    need = max(
        [
            *phases["sweep"]["n"],
            *(phases["idle"]["k"] if phases["idle"] else []),
            (phases["sustained"] or {}).get("n", 0),
            1,
        ]
    )
    log(f"data set: {need} residents/devices (bench.live.setup_data)")
    subprocess.run(
        [common.PYTHON, "-m", "bench.live.setup_data", "--count", str(need)],
        check=True,
        cwd=common.ROOT,
        env={**os.environ, "PYTHONPATH": str(common.ROOT)},
    )
    entries = json.loads(common.DATA_FILE.read_text())[:need]
    try:
        redis_pid = redis_client().info("server").get("process_id")
    except Exception as exc:
        raise SystemExit(f"Redis at {common.redis_url()} does not answer: {exc}") from None

    started = time.strftime("%Y%m%d-%H%M%S")
    results = {
        "started": started,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "python": sys.version.split()[0],
        },
        "quiet": quiet,
        "args": vars(args),
        "phases": phases,
        "uvicorn_ws": args.uvicorn_ws,
        "runs": {},
        "profiles": {},
    }
    out_path = common.VAR / f"bench-live-{started}.json"
    # The relay first: its figures are the yardstick for the others.
    for config in sorted(configs, key=lambda c: c != "relay"):
        # A "+variant" only shows what a proposed fix changes on the hot path.
        config_phases = {**phases, "idle": None} if "+" in config else phases
        results["runs"][config] = run_config(config, config_phases, entries, args, redis_pid)
        out_path.write_text(json.dumps(results, indent=1))
    for config in [c for c in args.profile.split(",") if c.strip()]:
        run = results["runs"].get(config, {})
        best = (run.get("sustained") or {}).get("best_target_per_s")
        rate = args.profile_rate or (round(0.7 * best, -1) if best else 600)
        results["profiles"][config] = profile(
            config, rate, args.profile_n, entries, args, redis_pid
        )
        out_path.write_text(json.dumps(results, indent=1))
    results["finished"] = time.strftime("%Y%m%d-%H%M%S")
    results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    out_path.write_text(json.dumps(results, indent=1))
    text = report(results)
    print(text)
    (common.VAR / f"bench-live-{started}.txt").write_text(text + "\n")
    log(f"results: {out_path.relative_to(common.ROOT)}")


if __name__ == "__main__":
    main()
