"""Driver of the query benchmark (on demand; not part of the test suite).

    python -m bench.query.run [--sizes 1M,10M,50M] [--repeat 200] [--quick]

For each size, smallest first, on one database of its own that grows from size to size:
(1) load the readings missing up to that size (binary COPY through the table's triggers, a
progress line with rows/s and ETA); (2) bring the rollups up to date with the project's own
refresh, `telemetry.rollups.rollups_refresh` (timed; when it would take longer than
`--refresh-budget` seconds, the rest is rolled up by set-based SQL and the refresh's rate is
reported for extrapolation); (3) VACUUM ANALYZE and CHECKPOINT; (4) wait for a quiet machine;
(5) time each kind of query `--repeat` times with random sensors, sites and dates (in-process,
the functions the API calls, DB round trip included), EXPLAIN ANALYZE one call of each, and ask
the API the same over HTTP (Django's test client) a few times for reference.

Prints a table (also var/bench-query-<timestamp>.txt) and writes everything measured to
var/bench-query-<timestamp>.json. See bench/query/README.md.
"""

# ruff: noqa: E501, S608  (report lines are long by nature; SQL is built from constant names)

import argparse
import contextlib
import json
import os
import random
import re
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.query import common, setup_data
from bench.query.common import log, percentile

TARGET_P95_MS = 20.0
FLAT_RATIO = 1.5  # p95 at the largest size / at the smallest: "flat" at or below this ...
FLAT_NOISE_MS = 2.0  # ... or when p95 grew by no more than this (noise on a shared 2-core box)


def is_flat(first: float, last: float) -> bool:
    return last <= first * FLAT_RATIO or last - first <= FLAT_NOISE_MS


ROLLUP_TABLES = (
    "rollup_15m", "rollup_1h", "rollup_1d", "rollup_dirty", "rollup_site_day",
    "rollup_site_day_dirty",
)  # fmt: skip
ORIGIN_SQL = "TIMESTAMPTZ '2000-01-03 00:00:00+00'"  # telemetry.queries.ORIGIN_SQL (checked)


def parse_size(text: str) -> int:
    text = text.strip().upper().replace("_", "")
    mult = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * mult)


def size_label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}K"
    return str(n)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# -- the database under test ------------------------------------------------------------------


class Db:
    def __init__(self):
        import psycopg

        self.conn = psycopg.connect(common.psycopg_url(), autocommit=True)
        self.name = self.conn.info.dbname

    def one(self, sql: str, params=None):
        return self.conn.execute(sql, params).fetchone()

    def truncate(self) -> None:
        self.conn.execute(f"TRUNCATE energy_readings, {', '.join(ROLLUP_TABLES)}")

    def sizes(self) -> dict:
        out = {}
        for table in ("energy_readings", *ROLLUP_TABLES):
            total, heap, rows = self.one(
                "SELECT pg_total_relation_size(c.oid), pg_relation_size(c.oid), c.reltuples "
                "FROM pg_class c WHERE c.relname = %s",
                [table],
            )
            out[table] = {"total_mb": round(total / 2**20), "heap_mb": round(heap / 2**20),
                          "rows_est": int(max(rows, 0))}  # fmt: skip
        out["database_mb"] = round(self.one("SELECT pg_database_size(%s)", [self.name])[0] / 2**20)
        return out

    def vacuum(self) -> float:
        started = time.monotonic()
        for table in ("energy_readings", *ROLLUP_TABLES):
            self.conn.execute(f"VACUUM (ANALYZE) {table}")
        self.conn.execute("ANALYZE devices_sensor, devices_device, devices_site, devices_feeder")
        self.conn.execute("CHECKPOINT")
        return time.monotonic() - started


def load_state(db: Db, data: dict, sensors: list[dict]) -> tuple[datetime | None, int]:
    """(T0, steps) of what the table holds, when it matches the saved state; else (None, 0)."""
    state = data.get("load")
    first = sensors[0]["id"]
    n, last = db.one(
        "SELECT count(*), max(time) FROM energy_readings WHERE sensor_id = %s", [first]
    )
    if not state or n == 0:
        return None, 0
    t0 = datetime.fromisoformat(state["t0"])
    steps = state["steps"]
    if n != steps or last != t0 + timedelta(minutes=15) * (steps - 1):
        log(f"the table holds {n:,} steps of sensor {first}, the saved state says {steps:,}: "
            "starting over")  # fmt: skip
        return None, 0
    return t0, steps


def save_state(data: dict, t0: datetime, steps: int, name: str | None = None) -> None:
    data["load"] = {"t0": t0.isoformat(), "steps": steps}
    common.data_file(name).write_text(json.dumps(data))


# -- rollups ------------------------------------------------------------------------------------

_BULK_15M = f"""
INSERT INTO rollup_15m AS r (sensor_id, bucket, sum, count, min, max, last)
SELECT sensor_id, date_bin(interval '15 minutes', time, {ORIGIN_SQL}), sum(value), count(*),
       min(value), max(value), (array_agg(value ORDER BY time DESC))[1]
FROM energy_readings WHERE time >= %(lo)s AND time < %(hi)s GROUP BY 1, 2
ON CONFLICT (sensor_id, bucket) DO UPDATE SET sum = EXCLUDED.sum, count = EXCLUDED.count,
    min = EXCLUDED.min, max = EXCLUDED.max, last = EXCLUDED.last
"""


def _bulk_parent(table: str, child: str, interval: str) -> str:
    return f"""
INSERT INTO {table} AS r (sensor_id, bucket, sum, count, min, max, last)
SELECT sensor_id, date_bin(interval '{interval}', bucket, {ORIGIN_SQL}), sum(sum),
       sum(count)::bigint, min(min), max(max), (array_agg(last ORDER BY bucket DESC))[1]
FROM {child} WHERE bucket >= %(lo)s AND bucket < %(hi)s GROUP BY 1, 2
ON CONFLICT (sensor_id, bucket) DO UPDATE SET sum = EXCLUDED.sum, count = EXCLUDED.count,
    min = EXCLUDED.min, max = EXCLUDED.max, last = EXCLUDED.last
"""


_BULK_1H = _bulk_parent("rollup_1h", "rollup_15m", "1 hour")
_BULK_1D = _bulk_parent("rollup_1d", "rollup_1h", "1 day")


def bulk_rollups(db: Db, lo: datetime, hi: datetime, *, label: str, chunk_days: int = 14) -> float:
    """Roll up [lo, hi) set-based (15 min from raw, hours from 15 min, days from hours), in
    day-aligned chunks, then drop the marks below `hi`: the same rows the refresh would make."""
    from telemetry.queries import ORIGIN, ceil_to, floor_to

    started = time.monotonic()
    day, hour = timedelta(days=1), timedelta(hours=1)
    cursor_lo = lo
    total = (hi - lo).total_seconds()
    while cursor_lo < hi:
        c_hi = min(floor_to(cursor_lo, day) + chunk_days * day, hi)
        with db.conn.transaction():
            db.conn.execute("SET LOCAL work_mem = '256MB'")
            db.conn.execute(_BULK_15M, {"lo": cursor_lo, "hi": c_hi})
            db.conn.execute(_BULK_1H, {"lo": floor_to(cursor_lo, hour), "hi": ceil_to(c_hi, hour)})
            db.conn.execute(_BULK_1D, {"lo": floor_to(cursor_lo, day), "hi": ceil_to(c_hi, day)})
        cursor_lo = c_hi
        el = time.monotonic() - started
        frac = (cursor_lo - lo).total_seconds() / total
        log(f"  bulk rollups {label}: {100 * frac:.0f}% of the range, {el:.0f}s, "
            f"ETA {el / frac - el:.0f}s")  # fmt: skip
    assert ORIGIN  # the bulk SQL cuts buckets at the project's origin
    # The marks below `hi` are done; keep the newer ones (the tail a running refresh leaves).
    with db.conn.transaction():
        db.conn.execute(
            "CREATE TEMP TABLE bq_keep ON COMMIT DROP AS "
            "SELECT sensor_id, bucket FROM rollup_dirty WHERE bucket >= %s",
            [hi],
        )
        db.conn.execute("TRUNCATE rollup_dirty")
        db.conn.execute("INSERT INTO rollup_dirty (sensor_id, bucket) SELECT * FROM bq_keep")
    return time.monotonic() - started


def refresh(db: Db, *, now: datetime, lo: datetime, budget_s: float, label: str) -> dict:
    """The project's refresh for up to `budget_s`; set-based SQL for whatever it left."""
    from telemetry import rollups
    from telemetry.queries import STEPS

    marks = db.one("SELECT count(*) FROM rollup_dirty")[0]
    log(f"  rollups_refresh (the project's beat job) on {marks:,} marks, budget {budget_s:.0f}s")
    # Called in slices of <= 15 s (each run resumes where the marks left off) to show progress.
    started = time.monotonic()
    buckets = batches = 0
    more = True
    while more and time.monotonic() - started < budget_s:
        slice_s = min(15.0, budget_s - (time.monotonic() - started))
        r = rollups.rollups_refresh(now=now, time_budget_s=slice_s, batch=5_000)
        if r.skipped:
            raise SystemExit("rollups_refresh skipped: another refresh holds the lock")
        buckets += r.buckets
        batches += r.batches
        more = r.more
        el = time.monotonic() - started
        log(f"  rollups_refresh {label}: {buckets:,}/{marks:,} quarter-hours, {el:.0f}s, "
            f"{buckets / el:,.0f}/s")  # fmt: skip
    seconds = time.monotonic() - started
    result = rollups.RefreshResult(buckets=buckets, batches=batches, more=more)
    out = {
        "marks_before": marks,
        "project_refresh": {
            "buckets": result.buckets,
            "batches": result.batches,
            "seconds": round(seconds, 1),
            "buckets_per_s": round(result.buckets / seconds) if seconds else None,
            "finished": not result.more,
        },
    }
    rate = result.buckets / seconds if seconds else 0
    log(f"  rollups_refresh: {result.buckets:,} quarter-hours in {seconds:.1f}s "
        f"({rate:,.0f}/s), {'done' if not result.more else 'out of budget'}")  # fmt: skip
    if result.more:
        left = marks - result.buckets
        out["project_refresh"]["extrapolated_s_for_all"] = round(marks / rate) if rate else None
        settled = now - STEPS["15m"]
        log(f"  {left:,} marks left: extrapolated {left / rate / 60:.0f} more min at that rate; "
            f"rolling up the rest set-based")  # fmt: skip
        out["bulk_seconds"] = round(bulk_rollups(db, lo, settled, label=label), 1)
        # The marks the bulk SQL dropped would have marked their sites' days: mark every day.
        db.conn.execute(
            "INSERT INTO rollup_site_day_dirty (site_id, day) "
            "SELECT s.id, d::date FROM devices_site s, generate_series(%s::date - 1, "
            "%s::date + 1, interval '1 day') d ON CONFLICT DO NOTHING",
            [lo, settled],
        )
    out["marks_after"] = db.one("SELECT count(*) FROM rollup_dirty")[0]
    out["site_days"] = site_days(db, now=now, label=label)
    out["beat_once"] = beat_once(now=now)
    return out


def beat_once(*, now: datetime) -> dict:
    """One more run of the refresh at the data's end, as the beat's next minute: with nothing
    left to roll up it stores the sites' beginning of today (`rollup_site_today`)."""
    from telemetry import rollups

    started = time.monotonic()
    r = rollups.rollups_refresh(now=now)
    if r.skipped or r.more:
        raise SystemExit(f"the refresh at the data's end did not finish: {r}")
    seconds = time.monotonic() - started
    log(f"  refresh at the data's end: {r.buckets:,} quarter-hours, {r.sites_today} sites' "
        f"today stored, {seconds:.1f}s")  # fmt: skip
    return {"buckets": r.buckets, "sites_today": r.sites_today, "seconds": round(seconds, 1)}


def bring_up_to_date(name: str, *, end: datetime) -> dict:
    """--measure-only on a database loaded under older migration files: apply the newer ones
    (the project only adds tables and indexes after a load) and run the refresh once at the
    data's end, as a running system's beat would have; then the database counts as made with
    the current migration files."""
    from django.core.management import call_command
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    applied = [f"{migration.app_label}.{migration.name}" for migration, _ in plan]
    if applied:
        log(f"  {name}: applying {', '.join(applied)}")
        call_command("migrate", verbosity=0, interactive=False)
    out = {"migrations_applied": applied, "beat_once": beat_once(now=end)}
    marker = common.db_dir(name) / "migrations-fingerprint"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(setup_data.migrations_fingerprint())
    return out


def site_days(db: Db, *, now: datetime, label: str) -> dict:
    """The project's per-site local days (`rollups.site_days_refresh`) for every marked day
    that is over, in slices of <= 15 s to show progress."""
    from telemetry import rollups
    from telemetry.queries import STEPS

    marked = db.one("SELECT count(*) FROM rollup_site_day_dirty")[0]
    started = time.monotonic()
    done, more = 0, True
    while more:
        r = rollups.site_days_refresh(settled=now - STEPS["15m"], time_budget_s=15.0)
        done += r.site_days
        more = r.more
        el = time.monotonic() - started
        log(f"  site days {label}: {done:,}/{marked:,} stored, {el:.0f}s")
    seconds = time.monotonic() - started
    return {"marked": marked, "stored": done, "seconds": round(seconds, 1),
            "per_s": round(done / seconds) if seconds else None}  # fmt: skip


def check_rollups(data: dict, span, rng: random.Random, n: int = 3) -> list[dict]:
    """Spot check: daily aggregates (UTC) of a few sensors over all the data, from the API's
    function, equal those computed straight from raw readings."""
    import zoneinfo

    from django.db import connection

    from telemetry import queries

    out = []
    for s in rng.sample(data["sensors"], n):
        api = queries.aggregates(sensor_id=s["id"], start=span.start, end=span.end, bucket="1d",
                                 tz=zoneinfo.ZoneInfo("UTC"))  # fmt: skip
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT date_trunc('day', time, 'UTC'), sum(value), count(*), min(value), "
                "max(value) FROM energy_readings WHERE sensor_id = %s AND time >= %s AND "
                "time < %s GROUP BY 1 ORDER BY 1",
                [s["id"], span.start, span.end],
            )
            raw = cursor.fetchall()
        same = len(api) == len(raw) and all(
            a["bucket"] == r[0] and a["count"] == r[2] and abs(a["sum"] - r[1]) < 1e-6 * max(1, abs(r[1]))
            and a["min"] == r[3] and a["max"] == r[4]
            for a, r in zip(api, raw, strict=False)
        )  # fmt: skip
        out.append({"sensor": s["public_id"], "days": len(raw), "equal": same})
    return out


# -- measuring ----------------------------------------------------------------------------------


class SqlTimer:
    """Django execute wrapper: time spent in cursor.execute (server + round trip) per call, and
    the statements of the last call (for EXPLAIN)."""

    def __init__(self):
        self.seconds = 0.0
        self.statements = 0
        self.captured: list[tuple[str, object]] = []
        self.capture = False

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - started
            self.statements += 1
            if self.capture:
                self.captured.append((sql, params))

    def reset(self):
        self.seconds = 0.0
        self.statements = 0
        self.captured = []


def summarise(values_ms: list[float]) -> dict:
    return {
        "p50": round(percentile(values_ms, 50), 2),
        "p95": round(percentile(values_ms, 95), 2),
        "p99": round(percentile(values_ms, 99), 2),
        "max": round(max(values_ms), 2),
        "mean": round(sum(values_ms) / len(values_ms), 2),
    }


def measure_kind(kind, rng: random.Random, repeat: int, timer: SqlTimer) -> dict:
    from django.db import connection

    warmup = max(3, min(20, repeat // 10))
    totals, dbs, rows, stmts = [], [], [], []
    with connection.execute_wrapper(timer):
        for i in range(warmup + repeat):
            params = kind.params(rng)
            timer.reset()
            started = time.perf_counter()
            result = kind.call(params)
            elapsed = time.perf_counter() - started
            if i < warmup:
                continue
            totals.append(elapsed * 1000)
            dbs.append(timer.seconds * 1000)
            stmts.append(timer.statements)
            rows.append(kind.count(result))
    out = summarise(totals)
    out.update(
        n=repeat,
        db_p50=round(percentile(dbs, 50), 2),
        db_p95=round(percentile(dbs, 95), 2),
        statements=round(sum(stmts) / len(stmts), 1),
        rows_avg=round(sum(rows) / len(rows), 1),
    )
    return out


_TIME = re.compile(r"(Planning|Execution) Time: ([\d.]+) ms")


def explain_kind(kind, rng: random.Random, timer: SqlTimer, path: Path) -> dict:
    """One call with its statements captured, then EXPLAIN (ANALYZE, BUFFERS) of each."""
    from django.db import connection, transaction

    params = kind.params(rng)
    timer.reset()
    timer.capture = True
    try:
        with connection.execute_wrapper(timer):
            kind.call(params)
    finally:
        timer.capture = False
    summary = []
    text = [f"# {kind.name}: {kind.label}", f"# params: {params}", ""]
    # One transaction, so that SET LOCAL statements of the call apply to the EXPLAINs after them.
    with transaction.atomic(), connection.cursor() as cursor:
        for n, (sql, sql_params) in enumerate(timer.captured, 1):
            head = sql.lstrip().split(None, 1)[0].upper()
            if head == "SET":
                cursor.execute(sql, sql_params)
                text += [f"## statement {n}", sql.strip(), ""]
                continue
            if head not in ("SELECT", "WITH"):
                continue
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, SETTINGS) " + sql, sql_params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            times = dict(_TIME.findall(plan))
            summary.append({
                "statement": n,
                "sql_head": " ".join(sql.split())[:90],
                "planning_ms": float(times.get("Planning", "nan")),
                "execution_ms": float(times.get("Execution", "nan")),
                "jit": "JIT:" in plan,
                "parallel_workers": sum(int(w) for w in re.findall(r"Workers Launched: (\d+)", plan)),
                "disk_sorts": plan.count("external merge"),
            })  # fmt: skip
            text += [
                f"## statement {n}",
                sql.strip(),
                f"-- params: {sql_params!r}"[:4000],
                "",
                plan,
                "",
            ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    return {"file": str(path.relative_to(common.ROOT)), "statements": summary}


def http_kind(kind, rng: random.Random, client, repeat: int) -> dict | None:
    if kind.http is None:
        return None
    times, statuses = [], []
    for _ in range(repeat):
        url = kind.http(kind.params(rng))
        started = time.perf_counter()
        try:
            response = client.get(url)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[:300], "example": url}
        if getattr(response, "streaming", False):
            b"".join(response.streaming_content)
        else:
            response.content  # noqa: B018
        times.append((time.perf_counter() - started) * 1000)
        statuses.append(response.status_code)
    return {"n": repeat, "first_ms": round(times[0], 2), **summarise(times),
            "statuses": sorted(set(statuses)), "example": url}  # fmt: skip


def measure_size(label: str, kinds, args, seed: int, client) -> dict:
    timer = SqlTimer()
    out: dict = {"kinds": {}, "explain": {}, "http": {}}
    out["prewarm_each"] = []
    for kind in kinds:
        if args.prewarm_each:
            # This machine's host reclaims page cache left untouched for a minute or two
            # (13 GB prewarmed at 50M were under 1 GB two minutes later): read it in again, so
            # that every kind is measured against the tables, not against the reclaim.
            out["prewarm_each"].append({"kind": kind.name, **prewarm()})
        rng = random.Random(f"{seed}-{kind.name}")
        repeat = args.repeat if kind.target else min(args.repeat, args.extra_repeat)
        r = measure_kind(kind, rng, repeat, timer)
        out["kinds"][kind.name] = r
        flag = "" if not kind.target else ("  ok" if r["p95"] <= TARGET_P95_MS else "  OVER")
        log(f"  {kind.name:18} p50 {r['p50']:8.2f}  p95 {r['p95']:8.2f}  p99 {r['p99']:8.2f} ms"
            f"  (db p50 {r['db_p50']:.2f}, {r['statements']} stmt, {r['rows_avg']} rows){flag}")  # fmt: skip
    for kind in kinds:
        rng = random.Random(f"{seed}-{kind.name}-explain")
        path = common.WORK / "explain" / args.started / f"{label}-{kind.name}.txt"
        out["explain"][kind.name] = explain_kind(kind, rng, timer, path)
    for kind in kinds:
        rng = random.Random(f"{seed}-{kind.name}-http")
        r = http_kind(kind, rng, client, args.http_repeat)
        out["http"][kind.name] = r
        if r and r.get("error"):
            log(f"  HTTP {kind.name:13} ERROR {r['error']}")
        elif r:
            log(f"  HTTP {kind.name:13} first {r['first_ms']:.1f} ms, p50 {r['p50']:.1f}, "
                f"max {r['max']:.1f} (n={r['n']}, status {r['statuses']})")  # fmt: skip
    return out


def find_fleet_function() -> list[str]:
    """Names in the project that look like a fleet-by-feeder query (checked at measurement)."""
    import importlib

    found = []
    for module in ("telemetry.queries", "telemetry.history_apis", "telemetry.analytics"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        except Exception as exc:
            found.append(f"{module}: import failed ({exc})")
            continue
        for name in dir(mod):
            low = name.lower()
            if any(w in low for w in ("feeder", "fleet", "grid")) and callable(getattr(mod, name)):
                found.append(f"{module}.{name}")
    return found


# -- report -------------------------------------------------------------------------------------


def report(results: dict) -> str:
    out = []
    m = results["machine"]
    out.append(f"Query benchmark {results['started']} — {m['cpus']} CPUs, PostgreSQL "
               f"{m['postgres']}, shared_buffers {m['postgres_settings'].get('shared_buffers')} "
               f"x 8 kB, jit {m['postgres_settings'].get('jit')}; {results['data_set']}")  # fmt: skip
    out.append("")
    out.append("Loading and rollups")
    out.append(f"{'size':>5} {'rows added':>11} {'load s':>7} {'rows/s':>9} {'refresh':>24} "
               f"{'bulk s':>7} {'vacuum s':>8} {'db MB':>7}")  # fmt: skip
    for label, sz in results["sizes"].items():
        ld, rf = sz.get("load") or {}, sz.get("refresh") or {}
        if sz.get("reused"):
            out.append(f"{label:>5}  already loaded by an earlier run (reused; see its JSON)")
            continue
        pr = rf.get("project_refresh") or {}
        ref = (f"{pr.get('buckets', 0):,} in {pr.get('seconds', 0)}s"
               f" ({pr.get('buckets_per_s') or 0:,}/s)") if pr else "-"  # fmt: skip
        out.append(f"{label:>5} {ld.get('rows', 0):>11,} {ld.get('seconds', '-'):>7} "
                   f"{ld.get('rows_per_s', 0):>9,} {ref:>24} {rf.get('bulk_seconds', '-'):>7} "
                   f"{sz.get('vacuum_s', '-'):>8} {sz.get('relations', {}).get('database_mb', '-'):>7}")  # fmt: skip
        if pr.get("extrapolated_s_for_all"):
            out.append(f"      project refresh out of its budget: all {rf['marks_before']:,} marks "
                       f"would take ~{pr['extrapolated_s_for_all'] / 60:.0f} min at that rate")  # fmt: skip
    out.append("")
    out.append(f"Latency in ms (in-process call of the API's query function, DB round trip "
               f"included; target p95 <= {TARGET_P95_MS:.0f} ms)")  # fmt: skip
    out.append(f"{'size':>5} {'kind':18} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} "
               f"{'db p50':>7} {'stmts':>5} {'rows':>7}  target")  # fmt: skip
    kinds_meta = results["kinds"]
    for label, sz in results["sizes"].items():
        ms_ = sz.get("measure")
        if not ms_:
            continue
        for name, r in ms_["kinds"].items():
            tgt = kinds_meta[name]["target"]
            verdict = ("met" if r["p95"] <= TARGET_P95_MS else "MISSED") if tgt else "(extra)"
            out.append(f"{label:>5} {name:18} {r['p50']:>8.2f} {r['p95']:>8.2f} {r['p99']:>8.2f} "
                       f"{r['max']:>8.2f} {r['db_p50']:>7.2f} {r['statements']:>5} "
                       f"{r['rows_avg']:>7}  {verdict}")  # fmt: skip
        out.append(f"      measured when: {ms_.get('quiet', {}).get('note', '-')}")
    labels = [lb for lb, sz in results["sizes"].items() if sz.get("measure")]
    if len(labels) >= 2:
        out.append("")
        out.append(f"Flatness: p95 at {labels[-1]} / p95 at {labels[0]} (flat if <= {FLAT_RATIO}, "
                   f"or if p95 grew by <= {FLAT_NOISE_MS} ms)")  # fmt: skip
        out.append(f"{'kind':18} " + " ".join(f"{lb:>8}" for lb in labels) + f" {'ratio':>7}")
        for name in kinds_meta:
            p95s = [results["sizes"][lb]["measure"]["kinds"][name]["p95"] for lb in labels]
            ratio = p95s[-1] / p95s[0] if p95s[0] else float("nan")
            out.append(f"{name:18} " + " ".join(f"{p:>8.2f}" for p in p95s) + f" {ratio:>7.2f}"
                       + ("  flat" if is_flat(p95s[0], p95s[-1]) else "  NOT flat"))  # fmt: skip
    if labels:
        last = labels[-1]
        over = [n for n, meta in kinds_meta.items() if meta["target"]
                and results["sizes"][last]["measure"]["kinds"][n]["p95"] > TARGET_P95_MS]  # fmt: skip
        if over:
            out.append("")
            out.append(
                f"Over target at {last}: EXPLAIN ANALYZE of one call (var/bench-query/explain/)"
            )
            for name in over:
                ex = results["sizes"][last]["measure"]["explain"][name]
                out.append(f"  {name} ({kinds_meta[name]['calls']}): {ex['file']}")
                for st in ex["statements"]:
                    flags = ", ".join(f for f in (
                        f"{st['parallel_workers']} parallel workers" if st["parallel_workers"] else "",
                        f"{st['disk_sorts']} sorts on disk" if st["disk_sorts"] else "",
                        "JIT" if st["jit"] else "") if f)  # fmt: skip
                    out.append(f"    #{st['statement']} exec {st['execution_ms']:8.2f} ms, plan "
                               f"{st['planning_ms']:.2f} ms  {st['sql_head'][:60]}"
                               + (f"  [{flags}]" if flags else ""))  # fmt: skip
    out.append("")
    out.append("HTTP round trips (Django test client, operator session; middleware, DRF, JSON "
               "included, no network)")  # fmt: skip
    for label in labels:
        for name, r in results["sizes"][label]["measure"]["http"].items():
            if r and r.get("error"):
                out.append(f"{label:>5} {name:18} error: {r['error'][:100]}")
            elif r:
                out.append(f"{label:>5} {name:18} first {r['first_ms']:>7.2f}  p50 {r['p50']:>7.2f}"
                           f"  max {r['max']:>7.2f} ms  (n={r['n']}, HTTP {r['statuses']})")  # fmt: skip
            else:
                out.append(f"{label:>5} {name:18} n/a: {kinds_meta[name]['note']}")
    out.append("")
    out.append("Targets")
    for t in results.get("targets", []):
        out.append(f"  {t['what']}: {t['value']} -> {'MET' if t['met'] else 'MISSED'}")
    return "\n".join(out)


def evaluate_targets(results: dict) -> list[dict]:
    out = []
    labels = [lb for lb, sz in results["sizes"].items() if sz.get("measure")]
    for name, meta in results["kinds"].items():
        if not meta["target"]:
            continue
        for lb in labels:
            p95 = results["sizes"][lb]["measure"]["kinds"][name]["p95"]
            out.append({"what": f"[{lb}] {name} p95 <= {TARGET_P95_MS:.0f} ms", "value": f"{p95} ms",
                        "met": p95 <= TARGET_P95_MS})  # fmt: skip
        if len(labels) >= 2:
            out.append(_flatness(results, name, labels))
    return out


# A kind whose window the smaller databases do not fill (30 days hourly at 1M = 10 days, 1 year
# daily below 50M) returns fewer buckets there: equal work is compared instead, from the first
# size that returns as many rows as the largest, else by the kind of the same question over a
# window every size fills.
EQUAL_WORK = {"daily_1y": "daily_10d", "hourly_30d": "hourly_10d"}


def _flatness(results: dict, name: str, labels: list[str]) -> dict:
    def measured(kind: str, label: str) -> dict:
        return results["sizes"][label]["measure"]["kinds"][kind]

    rule = f"(p95 ratio <= {FLAT_RATIO} or +{FLAT_NOISE_MS} ms at most)"
    last = labels[-1]
    rows = measured(name, last)["rows_avg"]
    full = [lb for lb in labels if measured(name, lb)["rows_avg"] >= rows * 0.99]
    kind, first, how = name, labels[0], ""
    if full[0] != labels[0]:
        if len(full) >= 2:
            first = full[0]
            how = f", from the first size returning as many rows ({rows:g})"
        elif EQUAL_WORK.get(name) in results["sizes"][labels[0]]["measure"]["kinds"]:
            kind = EQUAL_WORK[name]
            how = f", by {kind}: {rows:g} rows at {last} against fewer below"
    a, b = measured(kind, first)["p95"], measured(kind, last)["p95"]
    ratio = b / a if a else float("inf")
    return {"what": f"{name} flat {first} -> {last} {rule}{how}",
            "value": f"{ratio:.2f} ({a} -> {b} ms)", "met": is_flat(a, b)}  # fmt: skip


# -- snapshots and the measurement phase ---------------------------------------------------------


def snapshot(db: "Db", label: str) -> tuple["Db", str, float]:
    """A copy of the benchmark's database as it is now (CREATE DATABASE ... TEMPLATE, file
    copy), named <database>_<size>. Every session of the database is closed for the copy."""
    import psycopg

    from django.db import connection

    name = f"{db.name}_{label.lower()}"
    connection.close()
    db.conn.close()
    started = time.monotonic()
    admin = common.psycopg_url().rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{db.name}" STRATEGY FILE_COPY')
    return Db(), name, time.monotonic() - started


def use_database(name: str) -> None:
    """Point Django's default connection at another database (the snapshots)."""
    from django.db import connections

    conn = connections["default"]
    conn.close()
    conn.settings_dict["NAME"] = name


PREWARM_TABLES = ("energy_readings", "rollup_15m", "rollup_1h", "rollup_1d", "rollup_dirty",
                  "rollup_site_day", "rollup_site_day_dirty")  # fmt: skip


def prewarm() -> dict:
    """Read the tables the kinds query, and their indexes, into the OS page cache
    (pg_prewarm 'read'): the machine's memory reclaim evicts pages that sat unused while
    other databases were loaded, and a measurement should not depend on what was evicted."""
    from django.db import connection

    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        cursor.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relname = ANY(%s) "
            "UNION SELECT i.indexrelid::regclass::text FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid WHERE c.relname = ANY(%s)",
            [list(PREWARM_TABLES), list(PREWARM_TABLES)],
        )
        relations = [row[0] for row in cursor.fetchall()]
        blocks = 0
        for relation in relations:
            cursor.execute("SELECT pg_prewarm(%s::regclass, 'read')", [relation])
            blocks += cursor.fetchone()[0]
    return {"relations": len(relations), "mb": round(blocks * 8192 / 2**20),
            "seconds": round(time.monotonic() - started, 1)}  # fmt: skip


def measure_one(label, size, span, args, data, results, *, first: bool) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from bench.query import kinds as kinds_mod

    entry = results["sizes"][label]
    if args.no_wait:
        quiet = {"quiet": None, "note": "not waited for (--no-wait)", "load1": common.load1()}
    else:
        if not first:
            # Our own measuring of the previous size holds the 1-minute load up for a while.
            log("  cool-down: 90 s for our own load to fade from the 1-minute average")
            time.sleep(90)
        log(f"== waiting for a quiet machine before measuring {label}")
        quiet = common.wait_quiet(max_wait_s=args.wait_max * 60)
    log(f"  {quiet['note']}")
    client = Client()  # a session of this database's operator
    client.force_login(get_user_model().objects.get(username=data["operator"]))
    fleet_fns = find_fleet_function()
    entry["database"] = connection.settings_dict["NAME"]
    entry["prewarm"] = prewarm()
    log(f"  prewarmed {entry['prewarm']['mb']:,} MB into the OS page cache in "
        f"{entry['prewarm']['seconds']} s")  # fmt: skip
    # The project stores site days now (rollup_site_day); the what-if TEMP table is not built.
    kinds = kinds_mod.build(data, span)
    for kind in kinds:
        results["kinds"][kind.name] = {"label": kind.label, "target": kind.target,
                                       "note": kind.note, "calls": kind.func,
                                       "http": kind.http is not None}  # fmt: skip
    log(f"== {label}: measuring {len(kinds)} kinds x {args.repeat} on {entry['database']} "
        f"(project fleet functions found: {fleet_fns or 'none'})")  # fmt: skip
    m_started = time.monotonic()
    measure_clock = time.strftime("%H:%M:%S")
    entry["measure"] = measure_size(label, kinds, args, args.seed + size, client)
    entry["measure"]["started_at"] = measure_clock
    entry["measure"]["quiet"] = quiet
    entry["measure"]["loadavg_before"] = [str(quiet.get("load1"))]
    entry["measure"]["fleet_functions_found"] = fleet_fns
    entry["measure"]["seconds"] = round(time.monotonic() - m_started, 1)
    entry["measure"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    entry["measure"]["others_after"] = common.other_benchmarks()


def measure_existing(args, results: dict, save) -> None:
    """--measure-only: each SIZE=DB in turn, with the fleet and load state of that database."""
    from bench.query import kinds as kinds_mod
    from bench.query.loader import STEP

    targets = []
    for item in args.measure_only.split(","):
        size_text, _, name = item.partition("=")
        targets.append((parse_size(size_text), name.strip() or common.database_name()))
    for n, (size, name) in enumerate(targets):
        label = size_label(size)
        data = json.loads(common.data_file(name).read_text())
        t0 = datetime.fromisoformat(data["load"]["t0"])
        steps = data["load"]["steps"]
        if steps * len(data["sensors"]) != size:
            raise SystemExit(
                f"{name} holds {steps * len(data['sensors']):,} readings, not {size:,}"
            )
        use_database(name)
        end = t0 + STEP * steps
        results["sizes"][label] = {
            "rows": size,
            "database": name,
            "span": {"from": t0.isoformat(), "to": end.isoformat(),
                     "days": round((end - t0).total_seconds() / 86400, 1)},
            "brought_up_to_date": bring_up_to_date(name, end=end),
        }  # fmt: skip
        measure_one(label, size, kinds_mod.Span(t0, end), args, data, results, first=n == 0)
        save()


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", help="readings at each measurement, e.g. 1M,10M,50M (default)")
    parser.add_argument("--repeat", type=int, help="timed calls per kind and size (200)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: sizes 100K,300K, 30 repeats, 3 HTTP calls")  # fmt: skip
    parser.add_argument("--http-repeat", type=int, help="HTTP round trips per kind (10)")
    parser.add_argument("--extra-repeat", type=int, default=50,
                        help="timed calls of the extra (diagnostic, what-if) kinds (50)")  # fmt: skip
    parser.add_argument("--refresh-budget", type=float, default=180,
                        help="seconds the project's refresh may run per size before the rest is "
                        "rolled up set-based (default 180)")  # fmt: skip
    parser.add_argument("--sites", type=int, default=500, help="sites (2 sensors each)")
    parser.add_argument("--fresh", action="store_true", help="empty the tables first")
    parser.add_argument("--no-wait", action="store_true",
                        help="measure without waiting for a quiet machine (development)")  # fmt: skip
    parser.add_argument("--wait-max", type=float, default=30, help="minutes to wait at most")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument("--in-place", action="store_true",
                        help="measure each size right after loading it, on the growing database "
                        "(default: snapshot each smaller size, measure all sizes at the end in "
                        "one quiet window)")  # fmt: skip
    parser.add_argument("--load-only", action="store_true",
                        help="load (and snapshot) the sizes, measure nothing; keeps the snapshots")  # fmt: skip
    parser.add_argument("--measure-only", metavar="SIZE=DB,...",
                        help="measure databases loaded earlier, e.g. 1M=energy_portal_bench_query_1m,"
                        "50M=energy_portal_bench_query, in one quiet window; nothing is loaded")  # fmt: skip
    parser.add_argument("--no-prewarm-each", dest="prewarm_each", action="store_false",
                        help="prewarm once per size only, not again before each kind")  # fmt: skip
    parser.add_argument("--keep-snapshots", action="store_true",
                        help="keep the snapshot databases of the smaller sizes")  # fmt: skip
    parser.add_argument("--database-url", help=f"default {common.DEFAULT_DATABASE_URL}")
    parser.add_argument("--redis-url", help=f"default {common.DEFAULT_REDIS_URL}")
    args = parser.parse_args()
    q = args.quick
    sizes = sorted(
        parse_size(s) for s in (args.sizes or ("100K,300K" if q else "1M,10M,50M")).split(",")
    )
    args.repeat = args.repeat or (30 if q else 200)
    args.http_repeat = args.http_repeat or (3 if q else 10)
    common.set_urls(args.database_url, args.redis_url)
    warnings.filterwarnings("ignore", message="No directory at")  # staticfiles, irrelevant here

    run_started = time.monotonic()
    started = time.strftime("%Y%m%d-%H%M%S")
    args.started = started
    log(f"query benchmark: sizes {', '.join(size_label(s) for s in sizes)}, {args.repeat} calls "
        f"per kind; load average {Path('/proc/loadavg').read_text().strip()}")  # fmt: skip
    if args.measure_only:
        # The databases named are measured as loaded (see bring_up_to_date): nothing is made
        # or dropped, whatever the migration files say.
        common.django_setup()
        first = args.measure_only.split(",")[0].partition("=")[2].strip()
        data = json.loads(common.data_file(first or None).read_text())
    else:
        data = setup_data.ensure(args.sites)  # also sets Django up here
    from bench.query import kinds as kinds_mod
    from telemetry import queries

    if queries.ORIGIN_SQL != ORIGIN_SQL:
        raise SystemExit("telemetry.queries.ORIGIN_SQL changed; update bench/query/run.py")
    sensors = data["sensors"]
    n_sensors = len(sensors)
    db = Db()
    settings_rows = db.conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', 'work_mem', "
        "'effective_cache_size', 'random_page_cost', 'jit', 'max_parallel_workers_per_gather', "
        "'synchronous_commit', 'autovacuum', 'max_wal_size')"
    ).fetchall()
    results: dict = {
        "started": started,
        "command": " ".join(["python -m bench.query.run", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "python": sys.version.split()[0],
            "postgres": db.one("SHOW server_version")[0],
            "postgres_settings": dict(settings_rows),
        },
        "args": vars(args),
        "data_set": f"{n_sensors} sensors on {len(data['sites'])} sites, "
        f"{len(data['feeders'])} feeders, every 15 min; database {db.name}",
        "sizes": {},
    }
    out_path = common.VAR / f"bench-query-{started}.json"

    def save():
        results["targets"] = evaluate_targets(results)
        out_path.write_text(json.dumps(results, indent=1, default=str))

    if args.measure_only:
        results["mode"] = "measure only"
        results["kinds"] = {}
        try:
            measure_existing(args, results, save)
        finally:
            use_database(db.name)
            results["finished"] = time.strftime("%Y%m%d-%H%M%S")
            results["run_minutes"] = round((time.monotonic() - run_started) / 60, 1)
            results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
            save()
        text = report(results)
        print(text)
        (common.VAR / f"bench-query-{started}.txt").write_text(text + "\n")
        log(f"results: {out_path.relative_to(common.ROOT)}; took {results['run_minutes']} min")
        return

    t0, steps = (None, 0) if args.fresh else load_state(db, data, sensors)
    first_steps = sizes[0] // n_sensors
    if t0 is None or steps > first_steps:
        if steps > first_steps:
            log(
                f"the table holds {steps * n_sensors:,} rows, more than the first size: starting over"
            )
        log("emptying energy_readings and the rollup tables")
        db.truncate()
        max_steps = sizes[-1] // n_sensors
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        t0 = today - timedelta(days=-(-max_steps // 96))  # the largest size ends by today
        steps = 0
        save_state(data, t0, 0)
    from bench.query.loader import STEP, Loader

    loader = Loader(db.conn, sensors, t0)
    results["kinds"] = {}
    results["mode"] = "in place" if args.in_place else "snapshots"
    measured_dbs: dict[str, str] = {}  # size label -> database to measure it on
    try:
        for n, size in enumerate(sizes):
            label = size_label(size)
            target_steps = size // n_sensors
            entry: dict = {"rows": target_steps * n_sensors}
            results["sizes"][label] = entry
            if target_steps > steps:
                log(f"== {label}: loading {(target_steps - steps) * n_sensors:,} rows "
                    f"(steps {steps:,} to {target_steps:,})")  # fmt: skip
                entry["load"] = loader.load(steps, target_steps - steps, label=label)
                entry["load"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
                prev_end = loader.time_of(steps)
                steps = target_steps
                save_state(data, t0, steps)
                end = loader.time_of(steps)
                lo = prev_end - STEP if prev_end > t0 else t0
                entry["refresh"] = refresh(db, now=end, lo=lo, budget_s=args.refresh_budget,
                                           label=label)  # fmt: skip
                log("  VACUUM (ANALYZE) + CHECKPOINT")
                entry["vacuum_s"] = round(db.vacuum(), 1)
            else:
                entry["reused"] = True
                log(f"== {label}: already loaded ({steps * n_sensors:,} rows), reused")
            end = loader.time_of(steps)
            span = kinds_mod.Span(t0, end)
            entry["span"] = {"from": t0.isoformat(), "to": end.isoformat(),
                             "days": round((end - t0).total_seconds() / 86400, 1)}  # fmt: skip
            entry["relations"] = db.sizes()
            entry["check"] = check_rollups(data, span, random.Random(args.seed))
            bad = [c for c in entry["check"] if not c["equal"]]
            log(f"  rollups spot check: {'OK' if not bad else f'MISMATCH {bad}'}")
            save()
            if args.in_place:
                measured_dbs[label] = db.name
                measure_one(label, size, span, args, data, results, first=True)
                save()
            elif n < len(sizes) - 1:
                # Keep this size as it is (a file-level copy) and measure it later, in the same
                # quiet window as the others: loading needs no quiet machine, measuring does.
                db, snap, seconds = snapshot(db, label)
                snap_dir = common.db_dir(snap)
                snap_dir.mkdir(parents=True, exist_ok=True)
                (snap_dir / "migrations-fingerprint").write_text(
                    (common.db_dir() / "migrations-fingerprint").read_text()
                )
                save_state(dict(data), t0, steps, name=snap)
                entry["snapshot"] = {"database": snap, "seconds": round(seconds, 1)}
                measured_dbs[label] = snap
                loader.conn = db.conn
                log(f"  snapshot {snap} made in {seconds:.0f}s")
                save()
            else:
                measured_dbs[label] = db.name
        results["load_phase_minutes"] = round((time.monotonic() - run_started) / 60, 1)
        if args.load_only:
            log("load only: measure with --measure-only "
                + ",".join(f"{lb}={name}" for lb, name in measured_dbs.items()))  # fmt: skip
        elif not args.in_place:
            for n, size in enumerate(sizes):
                label = size_label(size)
                use_database(measured_dbs[label])
                end = loader.time_of(size // n_sensors)
                span = kinds_mod.Span(t0, end)
                measure_one(label, size, span, args, data, results, first=n == 0)
                save()
    finally:
        if not args.in_place and not args.keep_snapshots and not args.load_only:
            use_database(db.name)
            for name in measured_dbs.values():
                if name != db.name:
                    setup_data.drop_database(common.database_url(), name=name)
                    log(f"  snapshot {name} dropped")
        results["finished"] = time.strftime("%Y%m%d-%H%M%S")
        results["run_minutes"] = round((time.monotonic() - run_started) / 60, 1)
        results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
        with contextlib.suppress(Exception):
            results["database_mb_at_end"] = db.sizes()["database_mb"]
        save()
    text = report(results)
    print(text)
    (common.VAR / f"bench-query-{started}.txt").write_text(text + "\n")
    log(f"results: {out_path.relative_to(common.ROOT)}; took {results['run_minutes']} min")
    if args.drop:
        from django.db import connection

        connection.close()
        db.conn.close()
        setup_data.drop_database(common.database_url())
        log("database dropped")
    else:
        log(f"database {db.name} kept ({results.get('database_mb_at_end', '?')} MB); "
            "--drop removes it")  # fmt: skip


if __name__ == "__main__":
    main()
