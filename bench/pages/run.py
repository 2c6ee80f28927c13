"""Page benchmark (on demand; not part of the test suite).

    python -m bench.pages.run [--sizes 1000:200,10000:2000] [--repeat 200] [--no-wait]

How the server-rendered pages scale with the fleet: the resident's dashboard (3 sites), the
operators' fleet page (first and last page of 100 devices) and the analytics page, at two or more
fleet sizes (devices:sites, smallest first, on one database that grows), each rendered through
Django's test client in this process. Per page and size: the number of SQL queries of one render
(`CaptureQueriesContext`; constant across sizes is the goal) and p50/p95/max of `--repeat` timed
renders after `--warmup` untimed ones, against a baseline measured in the same run and the same
way: the login page GET (anonymous). Target: p95 <= 50 ms at 10,000 devices and 2,000 sites.

Uses bench/query's database set-up (create, migrate, drop when the migration files change), its
Django set-up (production-like, DEBUG off), quiet-machine wait and percentiles; the fleet is made
here, since bench/query's (500 sites, 1,000 sensors) is far smaller. See bench/pages/README.md.
"""

# ruff: noqa: S608  (SQL is built from integers and constant names only)

import argparse
import cProfile
import io
import json
import pstats
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bench.query import common, setup_data
from bench.query.common import log, percentile

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/energy_portal_bench_pages"
PREFIX = "bp-"
TARGET_P95_MS = 50.0
DEVICE_KINDS = ("pi", "plug", "hvac", "meter", "ev_charger")  # cycled over a site's devices
HISTORY_DAYS = 35  # quarter-hourly power of the resident's sites: this month and the last
RECENT = timedelta(minutes=70)  # minute power and 5-minute voltage of every device


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        devices, _, sites = part.partition(":")
        sizes.append((int(devices), int(sites)))
    return sorted(sizes)


# -- the fleet ------------------------------------------------------------------------------------


def grow_fleet(devices_n: int, sites_n: int, now: datetime) -> dict:
    """Sites `bp-site-NNNNN` (one room each) and devices `bp-dev-NNNNNN` spread evenly over them,
    each with `power_w` (W) and `voltage_v` (V), up to the size asked; existing ones are kept
    (sizes grow). Bulk-made: 10,000 `device_create` calls would only time token hashing."""
    from django.db import transaction

    from devices.models import Device, Feeder, Room, Sensor, Site, Substation, Transformer

    started = time.monotonic()
    with transaction.atomic():
        sub, _ = Substation.objects.get_or_create(code="BP-SUB", defaults={"name": "Bench sub"})
        feeders = []
        for code, tr_code in setup_data.FEEDERS:
            tr, _ = Transformer.objects.get_or_create(
                code=f"P{tr_code}", defaults={"name": tr_code, "substation": sub}
            )
            feeder, _ = Feeder.objects.get_or_create(
                code=f"P{code}", defaults={"name": code, "transformer": tr}
            )
            feeders.append(feeder)
        have_sites = Site.objects.filter(name__startswith=PREFIX).count()
        Site.objects.bulk_create(
            [
                Site(
                    name=f"{PREFIX}site-{i:05d}",
                    address=f"Rua {i}, Lisboa",
                    timezone="Europe/Lisbon",
                    currency="EUR",
                    tariff_per_kwh=Decimal("0.1500") + Decimal("0.0100") * (i % 10),
                    feeder=feeders[i % len(feeders)],
                )
                for i in range(have_sites, sites_n)
            ]
        )
        sites = list(Site.objects.filter(name__startswith=PREFIX).order_by("name")[:sites_n])
        Room.objects.bulk_create(
            [Room(site=s, name="Living room") for s in sites[have_sites:]], ignore_conflicts=True
        )
        rooms = dict(Room.objects.filter(site__in=sites).values_list("site_id", "id"))
        have_devices = Device.objects.filter(uid__startswith=PREFIX).count()
        made = Device.objects.bulk_create(
            [
                Device(
                    uid=f"{PREFIX}dev-{i:06d}",
                    name=f"Device {i}",
                    kind=DEVICE_KINDS[i % len(DEVICE_KINDS)],
                    site=sites[i * sites_n // devices_n],
                    room_id=rooms[sites[i * sites_n // devices_n].id],
                    controllable=DEVICE_KINDS[i % len(DEVICE_KINDS)] == "plug",
                    token_hash=f"{i:064d}",
                    online=i % 4 != 0,
                    last_seen=now - timedelta(seconds=i % 600),
                )
                for i in range(have_devices, devices_n)
            ]
        )
        Sensor.objects.bulk_create(
            [
                Sensor(device=d, key=key, kind=kind, unit=unit)
                for d in made
                for key, kind, unit in (("power_w", "power", "W"), ("voltage_v", "voltage", "V"))
            ]
        )
    log(f"  fleet: {devices_n:,} devices on {sites_n:,} sites ({len(made):,} new devices, "
        f"{time.monotonic() - started:.1f}s)")  # fmt: skip
    return {"sites": [s.id for s in sites], "new_devices": [d.id for d in made]}


def users(resident_sites: list[int]):
    from django.contrib.auth import get_user_model

    from devices.models import Site

    User = get_user_model()
    resident, _ = User.objects.get_or_create(username=f"{PREFIX}resident")
    operator, _ = User.objects.get_or_create(
        username=f"{PREFIX}operator", defaults={"is_staff": True}
    )
    resident.sites.set(Site.objects.filter(id__in=resident_sites))
    return resident, operator


def load_readings(*, device_ids: list[int], resident_sites: list[int], now: datetime) -> dict:
    """Readings by set-based INSERT (the table's triggers mark the rollups, as ingest does):
    every new device's power each minute and voltage every 5 minutes over the last 70 minutes;
    the resident's sites' power every 15 minutes over 35 days (their energy figures), and their
    last 70 minutes topped up to `now` (so "latest" is fresh at every size)."""
    from django.db import connection

    end = now.replace(second=0, microsecond=0)
    started = time.monotonic()
    rows = 0
    with connection.cursor() as cursor:

        def insert(where: str, params: list, start: datetime, step: str, kinds: tuple) -> None:
            nonlocal rows
            cursor.execute(
                f"""INSERT INTO energy_readings (sensor_id, time, value)
                SELECT s.id, t, CASE WHEN s.kind = 'power' THEN 200 + (s.id * 37 + extract(epoch
                    FROM t)::bigint / 60) %% 1800 ELSE 228 + (s.id + extract(epoch FROM t)::bigint
                    / 60) %% 5 END
                FROM devices_sensor s JOIN devices_device d ON d.id = s.device_id
                CROSS JOIN generate_series(%s::timestamptz, %s::timestamptz, %s::interval) t
                WHERE {where} AND s.kind = ANY(%s)
                ON CONFLICT DO NOTHING""",
                [start, end, step, *params, list(kinds)],
            )
            rows += cursor.rowcount

        for first in range(0, len(device_ids), 2_000):
            chunk = device_ids[first : first + 2_000]
            insert("d.id = ANY(%s)", [chunk], end - RECENT, "1 minute", ("power",))
            insert("d.id = ANY(%s)", [chunk], end - RECENT, "5 minutes", ("voltage",))
        history = (end - timedelta(days=HISTORY_DAYS)).replace(minute=0)
        insert("d.site_id = ANY(%s)", [resident_sites], history, "15 minutes", ("power",))
        insert("d.site_id = ANY(%s)", [resident_sites], end - RECENT, "1 minute", ("power",))
        insert("d.site_id = ANY(%s)", [resident_sites], end - RECENT, "5 minutes", ("voltage",))
    seconds = time.monotonic() - started
    log(f"  readings: {rows:,} inserted in {seconds:.1f}s")
    return {"rows": rows, "seconds": round(seconds, 1)}


def refresh(now: datetime) -> dict:
    """The project's rollup refresh (the beat job) until nothing is left, then VACUUM ANALYZE."""
    from django.db import connection

    from telemetry import rollups

    started = time.monotonic()
    buckets, more = 0, True
    while more:
        r = rollups.rollups_refresh(now=now, time_budget_s=30.0)
        buckets += r.buckets
        more = r.more or r.skipped
        if r.skipped:
            log("  refresh skipped (lock held?); retrying")
            time.sleep(2)
    with connection.cursor() as cursor:
        for table in ("devices_site", "devices_device", "devices_sensor", "energy_readings",
                      "rollup_15m", "rollup_1h", "rollup_1d", "rollup_site_day"):  # fmt: skip
            cursor.execute(f"VACUUM (ANALYZE) {table}")
    seconds = time.monotonic() - started
    log(f"  rollups: {buckets:,} quarter-hours refreshed, vacuumed, {seconds:.1f}s")
    return {"buckets": buckets, "seconds": round(seconds, 1)}


# -- the pages ------------------------------------------------------------------------------------


def pages(fleet_pages: int) -> list[tuple[str, str, str]]:
    """(name, who, URL); the baseline first."""
    return [
        ("login (baseline)", "anonymous", "/login/"),
        ("dashboard", "resident", "/dashboard/"),
        ("fleet p1", "operator", "/fleet/"),
        ("fleet last", "operator", f"/fleet/?page={fleet_pages}"),
        ("analytics", "operator", "/analytics/"),
    ]


def get(client, url: str) -> int:
    response = client.get(url)
    response.content  # noqa: B018
    if response.status_code != 200:
        raise SystemExit(f"GET {url}: {response.status_code}")
    return len(response.content)


def count_queries(client, url: str) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        size = get(client, url)
    captured_queries = captured.captured_queries
    return {
        "queries": len(captured_queries),
        "sql_ms": round(sum(float(q["time"]) for q in captured_queries) * 1000, 2),
        "bytes": size,
        "sql": [f"{float(q['time']) * 1000:.1f} ms: {q['sql'][:300]}" for q in captured_queries],
    }


def measure(clients: dict, plan: list, repeat: int, warmup: int, seed: int) -> dict:
    """Warm-up renders, then `repeat` timed renders of each page, interleaved in a shuffled
    order each round so a drift of the machine's load hits every page alike."""
    for _ in range(warmup):
        for _name, who, url in plan:
            get(clients[who], url)
    times: dict[str, list[float]] = {name: [] for name, _, _ in plan}
    rng = random.Random(seed)
    for _ in range(repeat):
        order = list(plan)
        rng.shuffle(order)
        for name, who, url in order:
            started = time.perf_counter()
            get(clients[who], url)
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: summarise(values) for name, values in times.items()}


def summarise(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 2),
        "p95": round(percentile(values, 95), 2),
        "max": round(max(values), 2),
    }


def profile(client, url: str, n: int = 50) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        get(client, url)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    return out.getvalue()


def measure_size(devices_n: int, sites_n: int, args, results: dict) -> None:
    from django.test import Client

    from devices.models import Device

    now = datetime.now(UTC)
    label = f"{devices_n:,} devices / {sites_n:,} sites"
    log(f"size {label}")
    fleet = grow_fleet(devices_n, sites_n, now)
    resident_sites = fleet["sites"][:3]
    entry: dict = {"devices": devices_n, "sites": sites_n}
    entry["readings"] = load_readings(
        device_ids=fleet["new_devices"], resident_sites=resident_sites, now=now
    )
    entry["refresh"] = refresh(now)
    resident, operator = users(resident_sites)
    clients = {"anonymous": Client(), "resident": Client(), "operator": Client()}
    clients["resident"].force_login(resident)
    clients["operator"].force_login(operator)
    total = Device.objects.count()
    entry["devices_in_db"] = total
    plan = pages(fleet_pages=-(-total // 100))
    if not args.no_wait:
        entry["quiet"] = common.wait_quiet(max_wait_s=args.wait_max * 60)
        log(f"  {entry['quiet']['note']}")
    entry["load_before"] = open("/proc/loadavg").read().split()[:3]  # noqa: SIM115
    entry["counts"] = {name: count_queries(clients[who], url) for name, who, url in plan}
    started = time.monotonic()
    entry["times"] = measure(clients, plan, args.repeat, args.warmup, args.seed)
    entry["measure_s"] = round(time.monotonic() - started, 1)
    entry["load_after"] = open("/proc/loadavg").read().split()[:3]  # noqa: SIM115
    if args.profile:
        entry["profile"] = {
            name: profile(clients[who], url) for name, who, url in plan if name in args.profile
        }
    results["sizes"].append(entry)
    log(f"  measured in {entry['measure_s']}s; load {' '.join(entry['load_after'])}")


# -- report ---------------------------------------------------------------------------------------


def report(results: dict) -> str:
    lines = [
        f"bench/pages {results['started']}  ({results['repeat']} renders a page after "
        f"{results['warmup']} warm-up rounds; Django test client, in process)",
        "",
    ]
    names = list(results["sizes"][0]["counts"])
    for entry in results["sizes"]:
        base = entry["times"][names[0]]["p95"]
        lines.append(f"{entry['devices_in_db']:,} devices / {entry['sites']:,} sites — load "
                     f"{' '.join(entry['load_before'])} before, {' '.join(entry['load_after'])} "
                     f"after")  # fmt: skip
        lines.append(f"  {'page':<18}{'queries':>8}{'sql ms':>8}{'p50':>9}{'p95':>9}{'max':>9}"
                     f"{'p95/base':>10}  target")  # fmt: skip
        for name in names:
            t, c = entry["times"][name], entry["counts"][name]
            verdict = "" if name == names[0] else (
                "met" if t["p95"] <= TARGET_P95_MS else "MISSED")  # fmt: skip
            lines.append(
                f"  {name:<18}{c['queries']:>8}{c['sql_ms']:>8.1f}{t['p50']:>9.2f}"
                f"{t['p95']:>9.2f}{t['max']:>9.2f}{t['p95'] / base:>10.2f}  {verdict}"
            )
        lines.append("")
    if len(results["sizes"]) > 1:
        first, last = results["sizes"][0], results["sizes"][-1]
        lines.append("queries per render, smallest -> largest fleet:")
        for name in names:
            a, b = first["counts"][name]["queries"], last["counts"][name]["queries"]
            ratio = last["times"][name]["p95"] / first["times"][name]["p95"]
            lines.append(f"  {name:<18}{a:>4} -> {b:<4} {'constant' if a == b else 'CHANGED'}"
                         f"   p95 x{ratio:.2f}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", help="devices:sites at each measurement, smallest first "
                        "(default 1000:200,10000:2000)")  # fmt: skip
    parser.add_argument("--repeat", type=int, help="timed renders a page and size (200)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (20)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 100:20,500:100, 20 renders after 3 rounds")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--wait-max", type=float, default=10, help="minutes to wait at most")
    parser.add_argument("--profile", action="append", default=[],
                        help="cProfile 50 renders of this page (by name) at each size")  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="drop the database first")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", help=f"default {common.DEFAULT_REDIS_URL}")
    args = parser.parse_args()
    quick = {"sizes": "100:20,500:100", "repeat": 20, "warmup": 3}
    full = {"sizes": "1000:200,10000:2000", "repeat": 200, "warmup": 20}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    common.set_urls(args.database_url, args.redis_url)
    if args.fresh:
        setup_data.drop_database(common.database_url())
    setup_data.ensure_database(common.database_url(), setup_data.migrations_fingerprint())
    common.django_setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    # Production-like: DEBUG off serves the hashed names of `collectstatic`'s manifest.
    started = time.monotonic()
    call_command("collectstatic", interactive=False, verbosity=0)
    log(f"collectstatic: {time.monotonic() - started:.1f}s")
    from devices.models import Device

    sizes = parse_sizes(args.sizes)
    have = Device.objects.filter(uid__startswith=PREFIX).count()
    if have > sizes[0][0]:
        log(f"the database holds {have:,} devices, more than the first size: starting over")
        setup_data.drop_database(common.database_url())
        setup_data.ensure_database(common.database_url(), setup_data.migrations_fingerprint())
        from django.db import connection

        connection.close()
        call_command("migrate", verbosity=0, interactive=False)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {"started": stamp, "repeat": args.repeat, "warmup": args.warmup,
               "database": common.database_name(), "sizes": []}  # fmt: skip
    for devices_n, sites_n in sizes:
        measure_size(devices_n, sites_n, args, results)
    text = report(results)
    print(text)
    for entry in results["sizes"]:
        for name, stats in entry.get("profile", {}).items():
            print(f"\n--- profile: {name} at {entry['devices']:,} devices ---\n{stats}")
    common.VAR.mkdir(exist_ok=True)
    (common.VAR / f"bench-pages-{stamp}.json").write_text(json.dumps(results, indent=1))
    (common.VAR / f"bench-pages-{stamp}.txt").write_text(text + "\n")
    log(f"written var/bench-pages-{stamp}.json and .txt")


if __name__ == "__main__":
    sys.exit(main())
