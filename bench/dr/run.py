"""Driver of the demand-response benchmark (on demand; not part of the test suite).

    python -m bench.dr.run [--sites 10000] [--n 1000,5000] [--quick] [--skip-dispatch]
        [--skip-settle] [--no-before] [--profile] [--device-procs 4]

1. Data (`bench.dr.setup_data`): `--sites` sites with two weeks of 15-minute meter data; the
   first max(N) get a controllable device.
2. Settlement: an event over every site (all opted in) is settled by `services.event_settle`
   (timed, then again: the re-settlement that pays nothing more), against the ceiling, one
   set-based SQL statement computing the same baselines from the same rollups, timed in the
   same run; the two must agree site by site.
3. Dispatch, for each N: the portal as in production (Uvicorn, 2 worker processes; a Celery
   worker, 2 processes, and beat) on BENCH_PORT; N device sockets (`bench.dr.devices`, its own
   process); an event created through `services.event_create` for the N sites (auto-accept, no
   randomization) starting 5 s later and lasting 20 s. Measured: from the event's start (and
   end) to each device's receipt of `curtail` (and `restore`). With the worker as it was before
   batching (`bench.dr.whatif_worker`) too, unless --no-before.

Prints a table and writes var/bench-dr-<timestamp>.json. See bench/dr/README.md.
"""

import argparse
import json
import os
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from bench import common as shared
from bench.common import log
from bench.dr import common, setup_data


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def quantiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    values = sorted(values)

    def q(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 1)

    return {"n": len(values), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)}


# -- settlement -----------------------------------------------------------------------------------


def _settlement_event(sites: list[int]):
    from django.db import transaction

    from demand_response.models import (
        AnsweredBy,
        Event,
        EventStatus,
        EventStatusChange,
        Invitation,
        InvitationStatus,
        Program,
    )

    with transaction.atomic():
        program, _ = Program.objects.get_or_create(
            name="bench-dr settlement",
            defaults={
                "reward_per_kwh": Decimal("0.2375"),
                "currency": "EUR",
                "notification_lead_time": timedelta(0),
            },
        )
        event = Event.objects.create(
            program=program,
            start=common.EVENT_START,
            end=common.EVENT_END,
            signal_type="level",
            signal_value=2,
            status=EventStatus.COMPLETED,
        )
        EventStatusChange.objects.bulk_create(
            [
                EventStatusChange(event=event, status=s, at=at)
                for s, at in (
                    (EventStatus.SCHEDULED, common.EVENT_START - timedelta(days=1)),
                    (EventStatus.ACTIVE, common.EVENT_START),
                    (EventStatus.COMPLETED, common.EVENT_END),
                )
            ]
        )
        Invitation.objects.bulk_create(
            [
                Invitation(
                    event=event,
                    site_id=site,
                    status=InvitationStatus.OPTED_IN,
                    answered_by=AnsweredBy.AUTO,
                    answered_at=common.EVENT_START - timedelta(days=1),
                )
                for site in sites
            ],
            batch_size=2000,
        )
    return event


# The ceiling: the same baselines in one statement, knowing what the data set is (one meter
# per site, whole quarter-hours, no outage or other event, one zone): the event's local hours
# on the 10 most recent complete weekdays, the adjustment's on the same days and the event day.
CEILING_SQL = """
WITH q AS (
    SELECT s.device_id, r.bucket AT TIME ZONE %(tz)s AS l, r.sum
    FROM rollup_15m r JOIN devices_sensor s ON s.id = r.sensor_id
    WHERE r.sensor_id = ANY(%(sensors)s) AND r.bucket >= %(lo)s AND r.bucket < %(hi)s
),
d AS (
    SELECT device_id, l::date AS day,
           sum(sum) FILTER (WHERE l::time >= %(w_lo)s AND l::time < %(w_hi)s) AS w,
           count(*) FILTER (WHERE l::time >= %(w_lo)s AND l::time < %(w_hi)s) AS wn,
           sum(sum) FILTER (WHERE l::time >= %(a_lo)s AND l::time < %(a_hi)s) AS a,
           count(*) FILTER (WHERE l::time >= %(a_lo)s AND l::time < %(a_hi)s) AS an
    FROM q GROUP BY 1, 2
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY device_id ORDER BY day DESC) AS rank FROM d
    WHERE day < %(day)s AND extract(isodow FROM day) < 6 AND wn = %(wq)s AND an = %(aq)s
),
base AS (
    SELECT device_id, avg(w::text::numeric / %(w_h)s) AS kw, avg(a::text::numeric / 3) AS a_kw
    FROM ranked WHERE rank <= 10 GROUP BY 1 HAVING count(*) = 10
)
SELECT m.site_id,
       b.kw * %(w_h)s * least(greatest(t.a::text::numeric / 3 / b.a_kw, 0.8), 1.2) AS baseline,
       t.w AS actual
FROM base b JOIN d t ON t.device_id = b.device_id AND t.day = %(day)s
JOIN devices_device m ON m.id = b.device_id
"""


def _ceiling(sites: list[int]) -> tuple[float, dict[int, Decimal]]:
    from django.db import connection

    from devices.models import Sensor

    sensors = list(
        Sensor.objects.filter(device__site_id__in=sites, key="energy_kwh").values_list(
            "pk", flat=True
        )
    )
    local_start = common.EVENT_START.astimezone(__import__("zoneinfo").ZoneInfo(common.ZONE))
    local_end = common.EVENT_END.astimezone(local_start.tzinfo)
    params = {
        "tz": common.ZONE,
        "sensors": sensors,
        "lo": common.FIRST_DAY - timedelta(days=1),
        "hi": common.EVENT_END,
        "w_lo": local_start.time(),
        "w_hi": local_end.time(),
        "a_lo": (local_start - timedelta(hours=4)).time(),
        "a_hi": (local_start - timedelta(hours=1)).time(),
        "day": local_start.date(),
        "wq": int((common.EVENT_END - common.EVENT_START) / timedelta(minutes=15)),
        "aq": 12,
        "w_h": Decimal((common.EVENT_END - common.EVENT_START) / timedelta(hours=1)),
    }
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(CEILING_SQL, params)
        rows = cursor.fetchall()
    seconds = time.perf_counter() - started
    return seconds, {site: baseline for site, baseline, _ in rows}


def settle_part(n_sites: int) -> dict:
    from django.db import connection

    from demand_response import services
    from demand_response.models import SettlementResult
    from devices.models import Site
    from outages.models import CreditEntry

    sites = list(
        Site.objects.filter(name__startswith=common.PREFIX)
        .order_by("name")
        .values_list("pk", flat=True)[:n_sites]
    )
    event = _settlement_event(sites)
    out: dict = {"sites": len(sites), "loadavg_before": loadavg()}
    log(f"settling event {event.pk} for {len(sites):,} sites (load {out['loadavg_before']})")
    connection.close()  # each timing starts from a fresh connection, as a task's would
    started = time.perf_counter()
    results = services.event_settle(event_id=event.pk)
    out["settle_s"] = round(time.perf_counter() - started, 2)
    entries = CreditEntry.objects.filter(dr_event_id=event.pk).count()
    started = time.perf_counter()
    services.event_settle(event_id=event.pk)
    out["resettle_s"] = round(time.perf_counter() - started, 2)
    out["entries_after_first"] = entries
    out["entries_after_second"] = CreditEntry.objects.filter(dr_event_id=event.pk).count()
    out["status"] = dict(__import__("collections").Counter(r.status for r in results).most_common())
    log(f"  settled in {out['settle_s']}s (again: {out['resettle_s']}s)")
    ceiling_s, ceiling = _ceiling(sites)
    out["ceiling_sql_s"] = round(ceiling_s, 2)
    out["ratio_settle_to_ceiling"] = round(out["settle_s"] / ceiling_s, 1)
    stored = dict(
        SettlementResult.objects.filter(event=event).values_list("site_id", "baseline_kwh")
    )
    tenth_wh = Decimal("0.0001")
    differ = [
        s
        for s in sites
        if ceiling.get(s) is None
        or stored.get(s) is None
        or abs(ceiling[s].quantize(tenth_wh) - stored[s]) > tenth_wh
    ]
    out["baselines_differing_from_ceiling"] = len(differ)
    out["loadavg_after"] = loadavg()
    log(f"  ceiling SQL {out['ceiling_sql_s']}s; {len(differ)} baselines differ")
    return out


# -- dispatch -------------------------------------------------------------------------------------


def _servers(before: bool) -> list:
    env = common.portal_env()
    common.LOG_DIR.mkdir(parents=True, exist_ok=True)
    from energy_portal import asgi_server

    web = shared.spawn(  # the production server command (websockets-sansio, uvloop, httptools)
        asgi_server.command(host="127.0.0.1", port=common.port(), access_log=False, workers=2),
        env=env,
        log_path=common.LOG_DIR / "uvicorn.log",
    )
    worker_args = ["--concurrency", "2", "-l", "warning", "-n", f"bench-dr-{os.getpid()}@%h"]
    if before:
        worker = [common.PYTHON, "-m", "bench.dr.whatif_worker", *worker_args]
    else:
        worker = [common.PYTHON, "-m", "celery", "-A", "energy_portal", "worker", *worker_args]
    procs = [
        web,
        shared.spawn(worker, env=env, log_path=common.LOG_DIR / "worker.log"),
        shared.spawn(
            [
                common.PYTHON,
                "-m",
                "celery",
                "-A",
                "energy_portal",
                "beat",
                "-l",
                "warning",
                "-s",
                str(common.WORK / "beat-schedule"),
            ],
            env=env,
            log_path=common.LOG_DIR / "beat.log",
        ),
    ]
    shared.wait_port(common.port(), web)
    time.sleep(3)  # the worker ready for the event's tasks
    return procs


def where_time_goes(event_id: int, start, end) -> dict:
    """From the database: per kind, ms from the event's start (end) to the worker's transition
    (`EventStatusChange.at`), to the commands' creation (`Command.created_at`, set as the
    worker builds the insert), to the dispatch rows' (`DispatchedCommand.created_at`, just
    before the commit), and to `sent_at` (the socket's batched mark, <= 0.1 s after the
    write)."""
    from demand_response.models import DispatchedCommand, EventStatus, EventStatusChange

    out = {}
    for kind, origin, status in (("curtail", start, EventStatus.ACTIVE),
                                 ("restore", end, EventStatus.COMPLETED)):  # fmt: skip
        moved = EventStatusChange.objects.filter(event_id=event_id, status=status).first()
        rows = DispatchedCommand.objects.filter(event_id=event_id, kind=kind).values_list(
            "command__created_at", "created_at", "command__sent_at"
        )
        created, dispatched, sent = zip(*rows, strict=True) if rows else ((), (), ())
        out[kind] = {
            "transition_ms": round((moved.at - origin).total_seconds() * 1000, 1)
            if moved
            else None,
            "created": quantiles([(t - origin).total_seconds() for t in created]),
            "dispatched": quantiles([(t - origin).total_seconds() for t in dispatched]),
            "sent": quantiles([(t - origin).total_seconds() for t in sent if t is not None]),
        }
    return out


def _forget_earlier_runs() -> None:
    """What an earlier run (or one stopped midway) left would reach this run's sockets: its
    events still to move (a restore at their end) and its open commands (sent to a device's
    next socket, restores live 10 minutes). Cancelled and expired, without telling anyone."""
    from django.utils import timezone

    from demand_response.models import Event, EventStatus
    from devices.models import Command, CommandStatus

    Event.objects.filter(
        program__name__startswith="bench-dr", status__in=[EventStatus.SCHEDULED, EventStatus.ACTIVE]
    ).update(status=EventStatus.CANCELLED)
    Command.objects.filter(
        device__uid__startswith=common.PREFIX, status__in=Command.OPEN_STATUSES
    ).update(status=CommandStatus.EXPIRED, completed_at=timezone.now())


def _profile(procs: dict, work, seconds: float) -> list:
    """py-spy record (collapsed stacks, `--format raw`) of each of `procs` (name: process, its
    children included) for `seconds`."""
    import subprocess
    from pathlib import Path

    pyspy = str(Path(common.PYTHON).with_name("py-spy"))
    spies = []
    for name, proc in procs.items():
        out = work / f"profile-{name}.txt"
        command = [pyspy, "record", "--pid", str(proc.pid), "--duration", str(int(seconds)),
                   "--rate", "200", "--format", "raw", "--subprocesses", "--nonblocking",
                   "-o", str(out)]  # fmt: skip
        spy = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        spies.append((name, out, spy))
    return spies


def _profile_summary(raw, top: int = 25) -> list[str]:
    """The functions a profile's samples pass through most (inclusive), and where they are
    spent (the innermost frame), as lines."""
    from collections import Counter

    inclusive: Counter = Counter()
    innermost: Counter = Counter()
    total = 0
    for stack, count in shared.collapsed_stacks(raw):
        frames = stack.split(";")
        total += count
        innermost[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"    {total} samples; inclusive:"]
    lines += [f"    {c / total:6.1%} {f[:150]}" for f, c in inclusive.most_common(top)]
    lines += ["    innermost:"]
    lines += [f"    {c / total:6.1%} {f[:150]}" for f, c in innermost.most_common(top)]
    return lines


def dispatch_part(
    n: int, entries: list[dict], *, before: bool, profile: bool = False, device_procs: int = 1
) -> dict:
    import redis

    from demand_response import services
    from demand_response.models import AutoResponseMode, Program, SiteAutoResponse

    label = "before (per device)" if before else "batched"
    redis.Redis.from_url(common.redis_url()).flushdb()
    _forget_earlier_runs()
    entries = entries[:n]
    sites = [e["site"] for e in entries]
    program, _ = Program.objects.get_or_create(
        name=f"bench-dr dispatch {n}",
        defaults={
            "reward_per_kwh": Decimal("0.2"),
            "currency": "EUR",
            "notification_lead_time": timedelta(0),
        },
    )
    program.eligible_sites.set(sites)
    SiteAutoResponse.objects.filter(site_id__in=sites).delete()
    SiteAutoResponse.objects.bulk_create(
        [SiteAutoResponse(site_id=s, mode=AutoResponseMode.ACCEPT_ALL) for s in sites]
    )
    procs = _servers(before)
    work = common.WORK / f"dispatch-{n}-{'before' if before else 'after'}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "stop").unlink(missing_ok=True)
    # The simulated Pis in `device_procs` processes (a share each): in one, the last of 5,000
    # waited behind the other 4,999's handling (websockets, deflate, the answer), which no
    # real fleet does.
    loadgens, out_paths, readies = [], [], []
    for part in range(device_procs):
        folder = work / f"devices-{part}"
        folder.mkdir(exist_ok=True)
        for name in ("ready", "out.json"):
            (folder / name).unlink(missing_ok=True)
        plan = {
            "url": f"ws://127.0.0.1:{common.port()}/ws/devices/",
            "devices": [
                {"uid": e["uid"], "token": e["token"]} for e in entries[part::device_procs]
            ],
            "ready": str(folder / "ready"),
            "stop": str(work / "stop"),
            "timeout_s": 120,
        }
        loadgen, out_path = shared.start_loadgen("bench.dr.devices", plan, folder)
        loadgens.append(loadgen)
        out_paths.append(out_path)
        readies.append(folder / "ready")
    try:
        while not all(ready.exists() for ready in readies):
            if any(loadgen.poll() is not None for loadgen in loadgens):
                raise SystemExit("the device sockets could not all open")
            time.sleep(0.5)
        time.sleep(2)
        load = loadavg()
        from django.utils import timezone

        start = timezone.now() + timedelta(seconds=5)
        end = start + timedelta(seconds=20)
        event = services.event_create(
            program_id=program.pk, start=start, end=end, signal_type="level",
            signal_value=Decimal(2), target_sites=sites,
        )  # fmt: skip
        log(f"[{label} N={n}] event {event.pk} {start:%H:%M:%S}-{end:%H:%M:%S} (load {load})")
        profiles = []
        if profile:  # the start's second or three, in the servers and the devices' processes
            time.sleep(max(0.0, (start - timezone.now()).total_seconds() - 0.5))
            profiles = _profile({"servers": procs[0], "devices": loadgens[0]}, work, 4)
        for loadgen in loadgens:
            loadgen.wait(timeout=200)
        for name, path, spy in profiles:
            spy.wait(timeout=30)
            log(f"  profile of the {name} around the start ({path}):")
            for line in _profile_summary(path):
                log(line)
    finally:
        (work / "stop").touch()
        for loadgen in loadgens:
            shared.stop(loadgen)
        for proc in reversed(procs):
            shared.stop(proc)
    got = {}
    for out_path in out_paths:
        got.update(json.loads(out_path.read_text()))
    t_start, t_end = start.timestamp(), end.timestamp()
    curtail = [g["curtail"] - t_start for g in got.values() if "curtail" in g]
    restore = [g["restore"] - t_end for g in got.values() if "restore" in g]
    result = {
        "n": n,
        "mode": label,
        "device_procs": device_procs,
        "loadavg_before": load,
        "curtail": quantiles(curtail),
        "restore": quantiles(restore),
        "curtail_within_1s": sum(1 for x in curtail if x <= 1.0),
        "restore_within_1s": sum(1 for x in restore if x <= 1.0),
        "where": where_time_goes(event.pk, start, end),
    }
    log(f"  curtail {result['curtail']}  restore {result['restore']}")
    for kind, where in result["where"].items():
        log(f"  {kind}: transition {where['transition_ms']} ms, created {where['created']}, "
            f"dispatched {where['dispatched']}, sent {where['sent']}")  # fmt: skip
    return result


# -- report ---------------------------------------------------------------------------------------


def report(results: dict) -> str:
    lines = []
    if s := results.get("settlement"):
        lines += [
            f"Settlement, {s['sites']:,} sites x 10 baseline weekdays of 15-min data "
            f"(load {s['loadavg_before']}):",
            f"  event_settle        {s['settle_s']:>7.2f} s   (target <= 30 s)",
            f"  settle again        {s['resettle_s']:>7.2f} s   "
            f"(ledger entries {s['entries_after_first']} -> {s['entries_after_second']})",
            f"  ceiling (1 SQL)     {s['ceiling_sql_s']:>7.2f} s   "
            f"ratio settle/ceiling {s['ratio_settle_to_ceiling']}x",
            f"  baselines differing from the ceiling: {s['baselines_differing_from_ceiling']}",
        ]
    if d := results.get("dispatch"):
        lines.append("Dispatch: event start (end) -> device receives curtail (restore), ms")
        lines.append(f"  {'mode':<20} {'N':>5} {'p50':>8} {'p99':>8} {'max':>8} | "
                     f"{'p50':>8} {'p99':>8} {'max':>8}  <=1s (c/r)   load")  # fmt: skip
        for r in d:
            c, x = r["curtail"], r["restore"]
            curtail = " ".join(f"{c.get(k, '-'):>8}" for k in ("p50_ms", "p99_ms", "max_ms"))
            restore = " ".join(f"{x.get(k, '-'):>8}" for k in ("p50_ms", "p99_ms", "max_ms"))
            lines.append(
                f"  {r['mode']:<20} {r['n']:>5} {curtail} | {restore}  "
                f"{r['curtail_within_1s']}/{r.get('restore_within_1s', '-')}/{r['n']}  "
                f"{r['loadavg_before']}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--n", default="1000,5000")
    parser.add_argument("--quick", action="store_true", help="500 sites, N 100 and 300")
    parser.add_argument("--skip-settle", action="store_true")
    parser.add_argument("--skip-dispatch", action="store_true")
    parser.add_argument("--no-before", action="store_true")
    parser.add_argument(
        "--device-procs", type=int, default=4, help="processes the simulated Pis share"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the servers and the devices' process around each event's start",
    )
    args = parser.parse_args()
    ns = [100, 300] if args.quick else [int(x) for x in args.n.split(",")]
    sites = 500 if args.quick else args.sites
    shared.stop_children_on_exit()
    entries = setup_data.ensure(sites, max(ns))
    results: dict = {"args": vars(args), "started": time.time(), "loadavg": loadavg()}
    if not args.skip_settle:
        results["settlement"] = settle_part(sites)
    if not args.skip_dispatch:
        results["dispatch"] = []
        for n in ns:
            for before in ([] if args.no_before else [True]) + [False]:
                results["dispatch"].append(
                    dispatch_part(
                        n,
                        entries,
                        before=before,
                        profile=args.profile,
                        device_procs=args.device_procs,
                    )
                )
    text = report(results)
    print(text)
    path = common.VAR / f"bench-dr-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    log(f"results in {path.relative_to(common.ROOT)}")


if __name__ == "__main__":
    main()
