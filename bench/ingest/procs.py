"""Processes under test (server, writers): their commands, CPU accounting, py-spy. Starting and
stopping them is `bench.common`'s."""

import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil

from bench.common import daphne_command, free_port, uvicorn_command
from bench.ingest import common

# -- commands -------------------------------------------------------------------------------------


def server_commands(kind: str, procs: int) -> list[tuple[list[str], int]]:
    """(command, port) per server process. Daphne: one process per port (clients are spread
    over them); uvicorn: one command with --workers sharing one port."""
    app = "energy_portal.asgi:application"
    if kind == "daphne":
        ports = [free_port() for _ in range(procs)]
        return [(daphne_command(app, port), port) for port in ports]
    if kind == "uvicorn":
        port = free_port()
        return [(uvicorn_command(app, port, "--workers", str(procs)), port)]
    raise SystemExit(f"unknown server {kind!r}: daphne or uvicorn")


def writer_command(name: str, max_rows: int, max_age: float) -> list[str]:
    manage = [common.PYTHON, str(common.ROOT / "manage.py"), "run_ingest_writer"]
    return [*manage, "--max-rows", str(max_rows), "--max-age", str(max_age), "--name", name]


# -- CPU ------------------------------------------------------------------------------------------


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class CpuMeter:
    """CPU seconds per component between two snapshots, as cores (CPU seconds / wall seconds).

    Components: named process trees (server, writers, load generator), Redis, PostgreSQL
    backends of the benchmark's database, its autovacuum, the WAL writer/checkpointer/bgwriter,
    other databases' sessions (other people's work on the shared server), this driver, and the
    whole machine (so other people's work outside PostgreSQL shows as "others")."""

    def __init__(self, db_name: str, redis_pid: int | None):
        self.db_name = db_name
        self.redis_pid = redis_pid
        self.trees: dict[str, list[int]] = {}

    def track(self, label: str, pids: list[int]) -> None:
        self.trees[label] = pids

    def snapshot(self) -> dict:
        per_pid: dict[int, tuple[str, float]] = {}

        def add(label: str, proc: psutil.Process) -> None:
            try:
                t = proc.cpu_times()
                per_pid[proc.pid] = (label, t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

        for label, pids in self.trees.items():
            for pid in pids:
                for proc in _tree(pid):
                    add(label, proc)
        if self.redis_pid:
            for proc in _tree(self.redis_pid):
                add("redis", proc)
        for proc in psutil.process_iter(["name", "cmdline"]):
            if proc.info["name"] not in ("postgres", "postmaster") or proc.pid in per_pid:
                continue
            add(self._pg_label(" ".join(proc.info["cmdline"] or []) + " "), proc)
        add("driver", psutil.Process())
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0)
        return {"t": time.monotonic(), "pids": per_pid, "machine": busy}

    def _pg_label(self, title: str) -> str:
        """What a PostgreSQL process is, from its process title."""
        ours = f" {self.db_name} " in title
        if "autovacuum worker" in title:
            return "postgres autovacuum (bench db)" if ours else "postgres autovacuum (other dbs)"
        if ours:
            return "postgres (bench db backends)"
        if any(w in title for w in ("walwriter", "checkpointer", "background writer")):
            return "postgres (wal writer, checkpointer, bgwriter)"
        return "postgres (other databases' sessions)"

    @staticmethod
    def cores(a: dict, b: dict) -> dict:
        wall = b["t"] - a["t"]
        if wall <= 0:
            return {}
        used: Counter = Counter()
        for pid, (label, cpu) in b["pids"].items():
            before = a["pids"].get(pid)
            used[label] += cpu - (before[1] if before else 0.0)
        out = {k: round(v / wall, 3) for k, v in sorted(used.items(), key=lambda kv: -kv[1])}
        out["machine (all processes)"] = round((b["machine"] - a["machine"]) / wall, 3)
        out["others (machine - listed)"] = round(
            out["machine (all processes)"] - sum(used.values()) / wall, 3
        )
        return out


# -- py-spy ---------------------------------------------------------------------------------------


def pyspy_start(pid: int, out: Path, seconds: float, rate: int = 100) -> subprocess.Popen:
    """py-spy record of one process (and its children), collapsed stacks to `out`; idle threads
    are not sampled, so samples are where the process spends CPU."""
    pyspy = str(Path(common.PYTHON).with_name("py-spy"))
    cmd = [
        pyspy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--subprocesses",
        "--threads",
        "-o",
        str(out),
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
