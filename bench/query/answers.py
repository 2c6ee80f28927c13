"""Record the fleet view's answers (`queries.grid_energy`) on a copy of a benchmark database, to
check that a change of how they are computed leaves them as they were.

    createdb -T energy_portal_bench_query_1m answers_a   # a copy: this mutates the database
    python -m bench.query.answers record --database answers_a --data energy_portal_bench_query_1m \\
        --out var/answers-before.json
    python -m bench.query.answers compare var/answers-before.json var/answers-after.json

`record` applies the project's migrations and runs the refresh at the data's end (as
`--measure-only` does), records every question (day, week and month around the day in
progress, several `now`: the data's end, just after its last quarter-hour boundary, mid-day,
later today, tomorrow), then inserts a fixed set of late and out-of-order readings (counters,
meters and power; yesterday, this morning, after the stored beginning of today, three days
ago) and records again before and after one more refresh. `compare` says whether two records
are equal, floats within 1e-9.
"""

import argparse
import json
import math
import os
import sys
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
TOLERANCE = 1e-9


def _plain(value):
    """An answer as JSON: dates and Decimals as text, floats kept exact (repr)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, date | datetime | Decimal):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return _plain(vars(value))
    return value


def _questions(end: datetime) -> list[tuple[str, date, datetime]]:
    today = (end - timedelta(microseconds=1)).astimezone(LISBON).date()
    nows = {
        "end": end,
        "after_boundary": end - timedelta(minutes=14),
        "midday": end - timedelta(hours=5, minutes=7),
        "later_today": end + timedelta(hours=2),
        "tomorrow": end + timedelta(days=1),
    }
    asked = [("day", today), ("day", today - timedelta(days=1)), ("day", today - timedelta(days=3)),
             ("week", today), ("month", today), ("week", today - timedelta(days=7))]  # fmt: skip
    return [(kind, day, now) for now in nows.values() for kind, day in asked]


def _record_state(end: datetime) -> list[dict]:
    from telemetry import queries

    return [
        {"period": kind, "day": str(day), "now": now.isoformat(),
         "answer": _plain(queries.grid_energy(period_kind=kind, day=day, now=now))}
        for kind, day, now in _questions(end)
    ]  # fmt: skip


def _late_readings(data: dict, end: datetime) -> list[tuple[int, datetime, float]]:
    """Late and out-of-order readings, from the sensors' roles (see setup_data.py)."""
    by_role: dict[str, list[int]] = {}
    for sensor in data["sensors"]:
        by_role.setdefault(sensor["role"], []).append(sensor["id"])
    counters, meters, powers = by_role["counter"], by_role["meter"], by_role["power"]
    through = end - timedelta(minutes=15)
    midnight = datetime.combine(
        (end - timedelta(microseconds=1)).astimezone(LISBON).date(), datetime.min.time(), LISBON
    ).astimezone(UTC)
    return [
        # yesterday 23:53 local, between two readings: today's first increase counts from it
        (counters[0], midnight - timedelta(minutes=7), None),
        # this morning, between two readings of a counter and in a meter's quarter-hour
        (counters[1], midnight + timedelta(hours=3, minutes=7), None),
        (meters[0], midnight + timedelta(hours=3, minutes=7), 1.0),
        # just before the stored beginning of today ends, and after it
        (counters[2], through - timedelta(seconds=1), None),
        (meters[1], through + timedelta(minutes=7), 0.5),
        (counters[3], through + timedelta(minutes=7), None),
        # power of a metered site (not counted while its meter has data) and three days ago
        (powers[0], midnight + timedelta(hours=5, minutes=1), 3000.0),
        (counters[4], midnight - timedelta(days=3, minutes=-421), None),
        (meters[2], midnight - timedelta(days=3, minutes=-307), 2.0),
    ]


def _insert_late(data: dict, end: datetime) -> int:
    """Insert the late readings; a counter's value lies between its neighbours' (what a
    reading missed in between would say)."""
    from django.db import connection

    rows = 0
    with connection.cursor() as cursor:
        for sensor_id, at, value in _late_readings(data, end):
            if value is None:
                cursor.execute(
                    "SELECT (SELECT value FROM energy_readings WHERE sensor_id = %(s)s "
                    "AND time < %(t)s ORDER BY time DESC LIMIT 1), (SELECT value FROM "
                    "energy_readings WHERE sensor_id = %(s)s AND time > %(t)s ORDER BY time "
                    "LIMIT 1)",
                    {"s": sensor_id, "t": at},
                )
                before, after = cursor.fetchone()
                value = (before + (after if after is not None else before + 0.2)) / 2
            cursor.execute(
                "INSERT INTO energy_readings (sensor_id, time, value) VALUES (%s, %s, %s)",
                [sensor_id, at, value],
            )
            rows += cursor.rowcount
    return rows


def record(args) -> None:
    from bench.query import common
    from bench.query.loader import STEP

    if args.database.startswith("energy_portal_bench_query"):
        raise SystemExit("record mutates the database: give it a copy (createdb -T ...)")
    data = json.loads(common.data_file(args.data).read_text())
    os.environ["BENCH_QUERY_DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    common.django_setup()
    from django.core.management import call_command

    from telemetry import rollups

    end = datetime.fromisoformat(data["load"]["t0"]) + STEP * data["load"]["steps"]
    call_command("migrate", verbosity=0, interactive=False)
    out = {"database": args.database, "end": end.isoformat(), "states": {}}
    rollups.rollups_refresh(now=end)
    out["states"]["clean"] = _record_state(end)
    out["late_rows"] = _insert_late(data, end)
    out["states"]["late"] = _record_state(end)
    rollups.rollups_refresh(now=end)
    out["states"]["refreshed"] = _record_state(end)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{sum(len(s) for s in out['states'].values())} answers in {args.out}")


def _differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and set(a) == {"float"} and isinstance(b, dict) and set(b) == {"float"}:
        x, y = float(a["float"]), float(b["float"])
        return [] if math.isclose(x, y, rel_tol=0, abs_tol=TOLERANCE) else [f"{path}: {x} != {y}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for key in a for d in _differences(a[key], b[key], f"{path}.{key}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        return [d for n, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _differences(x, y, f"{path}[{n}]")]  # fmt: skip
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def compare(args) -> None:
    a, b = (json.loads(Path(name).read_text()) for name in (args.before, args.after))
    differences = _differences(a["states"], b["states"])
    exact = json.dumps(a["states"]) == json.dumps(b["states"])
    answers = sum(len(state) for state in a["states"].values())
    if differences:
        print(f"{len(differences)} differences in {answers} answers:")
        print("\n".join(differences[:50]))
        sys.exit(1)
    print(f"{answers} answers equal ({'exactly' if exact else f'within {TOLERANCE} kWh'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True)
    rec = commands.add_parser("record")
    rec.add_argument("--database", required=True, help="a copy of a benchmark database")
    rec.add_argument("--data", required=True, help="the database whose data.json describes it")
    rec.add_argument("--out", required=True)
    rec.set_defaults(run=record)
    cmp = commands.add_parser("compare")
    cmp.add_argument("before")
    cmp.add_argument("after")
    cmp.set_defaults(run=compare)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
