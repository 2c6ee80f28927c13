"""Why the project's rollup refresh slows down as its backlog of marks grows: one experiment on
the benchmark's database (after `bench.query.run`, which leaves it loaded).

    python -m bench.query.refresh_probe [--marks 2000000] [--budget 60]

Marks `--marks` quarter-hours again (1,000 sensors x the steps in the middle of the data: the
values do not change, so the rollups stay right), then times `telemetry.rollups.rollups_refresh`
(at most `--budget` seconds unless said) in each configuration, re-marking the same quarter-hours
first:

A. statistics of `rollup_dirty` fresh (ANALYZE after marking); runs until no mark is left, which
   leaves the table drained: its pages full of dead marks;
B. `VACUUM (ANALYZE) rollup_dirty` on that drained table *before* marking, as a maintenance run
   or autovacuum between two backlogs would: the statistics say "a thousand rows" while the
   backlog lands (what happened at 10M in the full run; autovacuum is off on this server);
C. B, then `ANALYZE rollup_dirty` after marking;
D. C with `SET jit = off` in the session; runs until no mark is left, so the database is left
   as it was.

Each configuration starts with EXPLAIN of the refresh's statements on its first batch (which
plans scan the whole marks table, and which get JIT-compiled).
"""

import argparse
import json
import time
from datetime import UTC, datetime, timedelta

from bench.query import common
from bench.query.common import log


def _plans(cursor, rollups, end: datetime) -> dict:
    cursor.execute(
        "SELECT sensor_id, bucket, seq FROM rollup_dirty ORDER BY sensor_id, bucket LIMIT 5000"
    )
    marks = cursor.fetchall()
    params = {
        "sensor_ids": [m[0] for m in marks],
        "buckets": [m[1] for m in marks],
        "seqs": [m[2] for m in marks],
    }
    out = {}
    for name in ("_MARKS", "_RECOMPUTE_15M", "_DERIVE_1H", "_DERIVE_1D", "_UNMARK"):
        sql = getattr(rollups, name)
        p = params
        if name == "_MARKS":
            p = {"sensor_id": 0, "bucket": datetime(1, 1, 1, tzinfo=UTC), "settled": end,
                 "limit": 5000}  # fmt: skip
        cursor.execute("EXPLAIN " + sql, p)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        out[name] = {
            "seq_scan_on_marks": "Seq Scan on rollup_dirty" in plan,
            "jit": "JIT:" in plan,
            "cost": float(plan.split("cost=")[1].split("..")[1].split()[0]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--marks", type=int, default=2_000_000)
    parser.add_argument("--budget", type=float, default=60)
    args = parser.parse_args()
    common.django_setup()
    from django.db import connection

    from telemetry import rollups

    data = json.loads(common.data_file().read_text())
    t0 = datetime.fromisoformat(data["load"]["t0"])
    steps = data["load"]["steps"]
    end = t0 + timedelta(minutes=15) * steps
    n_steps = args.marks // len(data["sensors"])
    lo = t0 + timedelta(minutes=15) * ((steps - n_steps) // 2)
    hi = lo + timedelta(minutes=15) * n_steps
    results = {"marks": n_steps * len(data["sensors"]), "range": [str(lo), str(hi)], "runs": {}}

    def remark() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO rollup_dirty (sensor_id, bucket) SELECT sensor_id, bucket "
                "FROM rollup_15m WHERE bucket >= %s AND bucket < %s ORDER BY 1, 2 "
                "ON CONFLICT (sensor_id, bucket) DO UPDATE SET seq = EXCLUDED.seq",
                [lo, hi],
            )
            return cursor.rowcount

    # (label, before re-marking, after re-marking, run until no mark is left)
    configs = [
        ("A: fresh statistics", [], ["ANALYZE rollup_dirty"], True),
        ("B: stale statistics of a drained table", ["VACUUM (ANALYZE) rollup_dirty"], [], False),
        ("C: B, then ANALYZE rollup_dirty", [], ["ANALYZE rollup_dirty"], False),
        ("D: C, with jit = off", [], ["ANALYZE rollup_dirty", "SET jit = off"], True),
    ]
    for label, before, setup, to_the_end in configs:
        with connection.cursor() as cursor:
            for statement in before:
                cursor.execute(statement)
        marked = remark()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint, relpages FROM pg_class WHERE relname = 'rollup_dirty'"
            )
            stats = cursor.fetchone()
            for statement in setup:
                cursor.execute(statement)
            plans = _plans(cursor, rollups, end)
        log(f"{label}: {marked:,} marks; plans {plans}")
        started = time.monotonic()
        done = 0
        while True:
            r = rollups.rollups_refresh(now=end, time_budget_s=15)
            done += r.buckets
            el = time.monotonic() - started
            log(f"  {done:,} quarter-hours in {el:.0f}s ({done / el:,.0f}/s)")
            if not r.more or (not to_the_end and el >= args.budget):
                break
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM rollup_dirty")
            left = cursor.fetchone()[0]
            cursor.execute("RESET jit")
        results["runs"][label] = {
            "marks": marked,
            "refreshed": done,
            "seconds": round(el, 1),
            "per_s": round(done / el),
            "left": left,
            "plans": plans,
            "stats_at_start": {"reltuples": stats[0], "relpages": stats[1]},
        }
    path = common.VAR / f"bench-query-refresh-probe-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    for label, r in results["runs"].items():
        print(f"{label:32} {r['refreshed']:>10,} in {r['seconds']:>6}s = {r['per_s']:>7,}/s  "
              f"(seq scans of the marks: "
              f"{[k for k, v in r['plans'].items() if v['seq_scan_on_marks']]}, "
              f"JIT: {[k for k, v in r['plans'].items() if v['jit']]})")  # fmt: skip
    log(f"results: {path.relative_to(common.ROOT)}")


if __name__ == "__main__":
    main()
