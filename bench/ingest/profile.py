"""Summaries of py-spy's collapsed stacks (`--format raw --threads --subprocesses`).

py-spy leaves out threads it sees idle, but a thread blocked in a lock, a socket read or epoll is
not always seen as idle, so the summary sorts samples itself: WAITS (by the innermost frame) are
time a thread spends blocked — on the critical path when that thread is the bottleneck (a
Daphne process runs every sync view on one thread, so the view thread's wall time is the
server's capacity) — and the rest is CPU. Stages are inclusive: the share of a thread's samples
whose stack passes through the named function, waits included.
"""

from collections import Counter
from pathlib import Path

from bench.common import collapsed_stacks

WAITS = [
    ("wait: view thread blocked on the event loop (async_to_sync hop)", ("Condition.wait",)),
    (
        "wait: PostgreSQL (psycopg waits for the server)",
        ("Connection.wait (psycopg", "wait_c", "wait_epoll"),
    ),
    (
        "wait: Redis reply (incl. XREADGROUP block)",
        ("read_from_socket", "_read_response", "can_read"),
    ),
    (
        "idle: event loop / thread pool waiting",
        (
            "EpollSelector.select",
            "select (selectors",
            "_worker (concurrent/futures/thread.py:8",
            "wait (threading.py",
            "get (queue.py",
        ),
    ),
]

STAGES = {
    "server": [
        (
            "DRF auth + permission (token, has_perm)",
            ("perform_authentication", "check_permissions"),
        ),
        ("request body: JSON parse (request.data)", ("Request._parse", "JSONParser.parse")),
        ("view, all (IngestApi.post)", ("IngestApi.post",)),
        ("  sensor lookup (sensor_refs_by_public_id)", ("sensor_refs_by_public_id",)),
        ("  validate (readings_validate)", ("readings_validate",)),
        ("  enqueue, all (readings_ingest)", ("readings_ingest",)),
        (
            "    live messages built (_point_messages / _summary_messages)",
            ("_point_messages", "_summary_messages"),
        ),
        (
            "    live broadcast: view thread waits for the loop (async_to_sync)",
            ("readings_ingest (telemetry/services.py",),
        ),
        ("    stream entry JSON (_stream_entries)", ("_stream_entries",)),
        ("    XADD", ("xadd (",)),
        (
            "live broadcast on the event loop (_send_all -> group_send)",
            ("_send_all", "agroup_send"),
        ),
        ("response (DRF finalize/render)", ("finalize_response",)),
    ],
    "writer": [
        ("XREADGROUP / XAUTOCLAIM (incl. block)", ("xreadgroup", "xautoclaim")),
        ("batch build, all (Writer._add / Writer._fill)", ("Writer._add", "Writer._fill")),
        ("  entries -> array literal elements (entry_rows)", ("entry_rows",)),
        ("    not compact JSON: json.loads + row checks (parse_rows)", ("parse_rows",)),
        ("batch's array literal joined (_array_literal)", ("_array_literal",)),
        ("insert, all (readings_insert_rows)", ("readings_insert_rows",)),
        ("  psycopg: the literal merged into the statement", ("_convert_query",)),
        ("transaction (atomic enter/exit, commit)", ("Atomic.__exit__", "Atomic.__enter__")),
        ("XACK + XDEL", ("Pipeline.execute",)),
    ],
}

LIBRARIES = [
    ("json", ("json/",)),
    ("psycopg", ("psycopg/", "psycopg_c")),
    ("redis-py", ("redis/",)),
    ("channels_redis", ("channels_redis/",)),
    ("asgiref", ("asgiref/",)),
    ("asyncio", ("asyncio/", "selectors.py")),
    ("DRF", ("rest_framework/",)),
    ("Django", ("django/",)),
    ("Twisted/Daphne", ("twisted/", "daphne/", "autobahn/")),
    ("uvicorn", ("uvicorn/", "httptools")),
    ("portal code", ("telemetry/", "devices/", "energy_portal/")),
    ("threading/concurrent", ("threading.py", "concurrent/", "queue.py")),
]
PROJECT = ("telemetry/", "devices/", "energy_portal/")


def _first(frames: list[str], table) -> str | None:
    for frame in reversed(frames):
        for name, needles in table:
            if any(n in frame for n in needles):
                return name
    return None


def _thread_group(name: str) -> str:
    if "ThreadPool" in name:
        return "view thread (sync views run here, one at a time)"
    if name == "MainThread":
        return "main thread (event loop / writer loop)"
    return "other threads"


class _Group:
    def __init__(self):
        self.total = 0
        self.waits: Counter = Counter()
        self.stages: Counter = Counter()
        self.library: Counter = Counter()
        self.project: Counter = Counter()
        self.leaves: Counter = Counter()

    def add(self, frames: list[str], n: int, stages) -> None:
        self.total += n
        leaf = frames[-1]
        wait = None
        for wname, needles in WAITS:
            if any(x in leaf for x in needles):
                wait = wname
                self.waits[wname] += n
                break
        if wait is None:
            self.library[_first(frames, LIBRARIES) or "other"] += n
            for frame in reversed(frames):
                if any(p in frame for p in PROJECT):
                    func, _, where = frame.partition(" (")
                    self.project[f"{func} ({where.split(':')[0]})"] += n
                    break
            else:
                self.project["(no portal frame)"] += n
            self.leaves[leaf] += n
        joined = ";".join(frames)
        for sname, needles in stages:
            if "waits for the loop" in sname:
                # the view thread blocked in async_to_sync under readings_ingest
                hit = (
                    wait is not None
                    and wait.startswith("wait: view thread")
                    and any(x in joined for x in needles)
                )
            else:
                hit = any(x in joined for x in needles)
            if hit:
                self.stages[sname] += n

    def summary(self, stages, seconds: float | None, rate: int) -> dict:
        busy = self.total - sum(self.waits.values())

        def pct(counter: Counter, base: int, limit: int | None = None) -> dict:
            if not base:
                return {}
            return {k: round(100 * v / base, 1) for k, v in counter.most_common(limit)}

        out = {
            "samples": self.total,
            "cpu_pct_of_samples": round(100 * busy / self.total, 1) if self.total else 0,
            "waits_pct": pct(self.waits, self.total),
            "stages_pct": {
                s: round(100 * self.stages[s] / self.total, 1) for s, _ in stages if self.stages[s]
            },
            "cpu_by_library_pct": pct(self.library, busy),
            "cpu_by_portal_function_pct": pct(self.project, busy, 12),
            "top_self_pct": pct(self.leaves, busy, 12),
        }
        if seconds:
            out["sampled_share_of_wall"] = round(self.total / (seconds * rate), 2)
            out["cpu_cores"] = round(busy / (seconds * rate), 2)
        return out


def summarise(raw: Path, name: str, seconds: float | None = None, rate: int = 100) -> dict:
    """Per thread group (view thread, main thread, others) and for the whole process."""
    kind = "writer" if name.startswith("writer") else "server"
    stages = STAGES[kind]
    groups: dict[str, _Group] = {}
    whole = _Group()
    for stack, n in collapsed_stacks(raw):
        frames = stack.split(";")
        thread = "MainThread"
        # "process PID:cmd" and "thread (TID): NAME" come first.
        while frames and (frames[0].startswith("process ") or frames[0].startswith("thread (")):
            if frames[0].startswith("thread ("):
                thread = frames[0].split(":", 1)[-1].strip()
            frames = frames[1:]
        if not frames:
            continue
        groups.setdefault(_thread_group(thread), _Group()).add(frames, n, stages)
        whole.add(frames, n, stages)
    if not whole.total:
        return {"samples": 0}
    out = whole.summary(stages, seconds, rate)
    out["threads"] = {
        g: grp.summary(stages, seconds, rate)
        for g, grp in sorted(groups.items(), key=lambda kv: -kv[1].total)
    }
    return out
