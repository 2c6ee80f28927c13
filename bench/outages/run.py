"""Driver of the outage benchmark (on demand; not part of the test suite).

    python -m bench.outages.run [--n 1000,5000] [--quick] [--wait-quiet] [--workers 2]

For each N: the bare `websockets` relay (`bench.live.relay`) is started and N devices connect to
it (the handshake baseline); then the portal in its production shape (`energy_portal.asgi_server`
Uvicorn processes, one ingest writer, a Celery worker, beat) on a reset grid (no cuts, no
credits), and the load generator (`bench.outages.loadgen`, a process of its own) runs the storm:
connect, telemetry without storm, half the feeders cut within 10 s, feeder outages formed, the
cut devices reconnecting and replaying, the credits settled. The ledger is then checked against
the outages: one entry per outage that earns credit, none doubled. Last, the steps of a device
handshake are timed one by one in this process (`handshake_steps`). Prints the figures with
their targets and ratios against the baselines of the same run and writes everything to
var/bench-outages-<timestamp>.json (and .txt). See bench/outages/README.md.
"""

import argparse
import json
import os
import time
from pathlib import Path

from bench import common as shared
from bench.common import log
from bench.outages import common, setup_data
from energy_portal import metrics_dir

TARGETS = {
    "lost_to_shown_p99_ms": 100,  # at 5,000
    "feeder_outages_formed_s": 2,
    "telemetry_p99_ratio": 1.5,
    "reconnected_and_replayed_s": 10,  # at 5,000
}


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def portal_processes(port: int, workers: int, concurrency: int) -> dict[str, list[str]]:
    """The production shape (`energy_portal.run.processes`), the server without access log."""
    from energy_portal import asgi_server

    py = common.PYTHON
    celery = [py, "-m", "celery", "-A", "energy_portal"]
    quiet = ["-l", "warning"]
    return {
        "web": asgi_server.command(host="127.0.0.1", port=port, access_log=False, workers=workers),
        "writer": [py, str(common.ROOT / "manage.py"), "run_ingest_writer"],
        "worker": [*celery, "worker", *quiet, "--concurrency", str(concurrency),
                   "--without-gossip", "--without-mingle"],
        "beat": [*celery, "beat", *quiet, "--schedule", str(common.WORK / "celerybeat")],
    }  # fmt: skip


def redis_flush() -> None:
    import redis

    redis.Redis.from_url(common.redis_url()).flushdb()


def feeder_ids() -> dict[int, int]:
    from devices.models import Feeder

    return {
        int(code[4:]): pk
        for code, pk in Feeder.objects.filter(code__startswith="BO-F").values_list("code", "pk")
    }


def poll_sql(entries: list[dict]) -> dict:
    """The counting queries the load generator polls: cut feeders whose feeder outage has all
    their sites; outages with a credit entry."""
    ids = feeder_ids()
    expected: dict[int, int] = {}
    for entry in entries:
        if entry["affected"]:
            expected[ids[entry["feeder"]]] = expected.get(ids[entry["feeder"]], 0) + 1
    feeders = sorted(expected)
    return {
        "cut_feeders": len(expected),
        "sql": {
            "feeders_formed": [
                "SELECT count(*) FROM outages_outage o JOIN unnest(%s::bigint[], %s::int[]) "
                "AS e(feeder_id, n) ON o.feeder_id = e.feeder_id "
                "WHERE o.kind = 'feeder' AND o.status <> 'void' AND o.sites_affected >= e.n",
                [feeders, [expected[pk] for pk in feeders]],
            ],
            "credits": [
                "SELECT count(DISTINCT outage_id) FROM outages_creditentry "
                "WHERE outage_id IS NOT NULL",
                [],
            ],
        },
    }


def ledger_check(entries: list[dict]) -> dict:
    """Ledger entries against the outages that earn credit: equal in number, none doubled, each
    outage paid exactly what its policy gives for its duration."""
    from django.db.models import Count, Sum

    from outages.credit_rules import credit_for
    from outages.models import CreditEntry, Outage, OutageKind, OutageStatus

    sites = [e["site"] for e in entries]
    outages = list(
        Outage.objects.filter(kind=OutageKind.SITE, site_id__in=sites)
        .exclude(status=OutageStatus.VOID)
        .select_related("credit_policy")
    )
    earning = {}
    for outage in outages:
        policy = outage.credit_policy
        if (
            outage.status == OutageStatus.ENDED
            and not outage.momentary
            and policy is not None
            and outage.sites_affected >= policy.min_sites_affected
        ):
            amount = credit_for(policy, outage.duration)
            if amount > 0:
                earning[outage.pk] = amount
    paid = {
        row["outage_id"]: row
        for row in CreditEntry.objects.filter(site_id__in=sites, outage_id__isnull=False)
        .values("outage_id")
        .annotate(n=Count("id"), total=Sum("amount"))
    }
    cut_sites = sum(1 for e in entries if e["affected"])
    return {
        "cut_sites": cut_sites,
        "site_outages": len(outages),
        "earning_credit": len(earning),
        "ledger_entries": sum(row["n"] for row in paid.values()),
        "outages_paid": len(paid),
        "doubled": sum(1 for row in paid.values() if row["n"] > 1),
        "wrong_amount": sum(1 for pk, row in paid.items() if row["total"] != earning.get(pk, 0)),
        "earning_unpaid": sum(1 for pk in earning if pk not in paid),
        "ok": len(earning) == cut_sites
        and sum(row["n"] for row in paid.values()) == len(earning)
        and all(row["n"] == 1 and row["total"] == earning.get(pk) for pk, row in paid.items()),
    }


def run_loadgen(plan: dict, folder: Path, timeout: float) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    proc, out = shared.start_loadgen("bench.outages.loadgen", plan, folder)
    try:
        proc.wait(timeout)
    finally:
        shared.stop(proc)
    return json.loads(out.read_text()) if out.exists() else {"error": "no result"}


def run_relay(entries: list[dict], args, folder: Path) -> dict:
    port = args.port + 1
    relay = shared.spawn(
        [common.PYTHON, "-m", "bench.live.relay", "--port", str(port), "--uvloop",
         "--tokens", str(common.RELAY_TOKENS)],
        env=common.portal_env(),
        log_path=common.LOG_DIR / "relay.log",
    )  # fmt: skip
    try:
        shared.wait_port(port, relay)
        plan = {
            "kind": "relay",
            "host": "127.0.0.1",
            "port": port,
            "entries": entries,
            "connect_concurrency": args.connect_concurrency,
        }
        return run_loadgen(plan, folder / "relay", timeout=600)
    finally:
        shared.stop(relay)


def run_portal(entries: list[dict], args, folder: Path) -> dict:
    setup_data.reset()
    redis_flush()
    procs = {}
    # The processes keep their Prometheus metrics in files, as `make run` and compose run them
    # (each counter increment then writes its file: part of the real cost of a frame).
    metrics_path = common.WORK / "metrics"
    metrics_dir.wipe(metrics_path)
    env = {**common.portal_env(), metrics_dir.VARIABLE: str(metrics_path)}
    try:
        for name, command in portal_processes(args.port, args.workers, args.concurrency).items():
            procs[name] = shared.spawn(command, env=env, log_path=common.LOG_DIR / f"{name}.log")
        shared.wait_port(args.port, procs["web"])
        time.sleep(3)  # the worker and beat connect to the broker
        quick = args.quick
        plan = {
            "kind": "portal",
            "host": "127.0.0.1",
            "port": args.port,
            "entries": entries,
            "database_url": common.database_url(),
            "connect_concurrency": args.connect_concurrency,
            "settle_s": 3 if quick else 10,
            "warmup_s": 2 if quick else 5,
            "baseline_s": 5 if quick else 15,
            "storm_s": args.storm_s,
            "tail_s": 2 if quick else 5,
            "outage_ago_s": 3 * 3600,
            "outage_s": 90 * 60,  # 90 minutes: two started hours under the bench policy
            "replay_points": 10,
            "form_timeout_s": 120,
            "replay_timeout_s": 180,
            "settle_timeout_s": 240,
            **poll_sql(entries),
        }
        plan["connect_only"] = args.connect_only
        plan["pids"] = {name: proc.pid for name, proc in procs.items()}
        result = run_loadgen(plan, folder / "portal", timeout=1200)
        result["process_exits"] = {
            name: proc.poll() for name, proc in procs.items() if proc.poll() is not None
        }
        return result
    finally:
        for proc in procs.values():
            shared.stop(proc)


def one_n(n: int, all_entries: list[dict], args, folder: Path) -> dict:
    entries = all_entries[:n]
    result: dict = {"n": n, "load_before": load_average()}
    if not args.skip_relay:
        log(f"N={n}: relay baseline")
        result["relay"] = run_relay(entries, args, folder / f"n{n}")
    log(f"N={n}: portal storm")
    result["portal"] = run_portal(entries, args, folder / f"n{n}")
    if not args.connect_only:
        result["ledger"] = ledger_check(entries)
    result["load_after"] = load_average()
    return result


def _get(d: dict, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def report(results: dict) -> str:
    lines = [f"bench/outages, {results['started']}, code {results['code']}"]
    for r in results["runs"]:
        p = r["portal"]
        n = r["n"]
        if "ledger" not in r:
            lines.append("")
            lines.append(
                f"N = {n}, handshakes only: portal {_get(p, 'connect', 'per_s')}/s (p99 "
                f"{_get(p, 'connect', 'handshake_ms', 'p99')} ms), relay "
                f"{_get(r, 'relay', 'connect', 'per_s')}/s = portal at "
                f"{_ratio(_get(p, 'connect', 'per_s'), _get(r, 'relay', 'connect', 'per_s'))}; "
                f"load average {r['load_before']} -> {r['load_after']}"
            )
            continue
        lines.append("")
        lines.append(
            f"N = {n} ({p.get('cut_sites')} cut sites on {p.get('cut_feeders', 25)} feeders), "
            f"load average before {r['load_before']}, after {r['load_after']}"
        )
        outage = p.get("lost_to_outage_ms", {})
        power = p.get("lost_to_power_ms", {})
        shown = p.get("lost_to_shown_ms", {})
        lines.append(
            f"  lost -> resident sees the cut (first of power/outage): p50 {shown.get('p50')} "
            f"p95 {shown.get('p95')} p99 {shown.get('p99')} ms (target p99 <= 100 at 5,000; "
            f"{shown.get('count')} of {p.get('lost_sent')} heard)"
        )
        lines.append(
            f"  lost -> site outage formed (outage): p50 {outage.get('p50')} p95 "
            f"{outage.get('p95')} p99 {outage.get('p99')} ms ({outage.get('count')} heard)"
        )
        lines.append(
            f"  lost -> resident hears the report (power): p50 {power.get('p50')} p95 "
            f"{power.get('p95')} p99 {power.get('p99')} ms"
        )
        lines.append(
            f"  last report -> every feeder outage formed: {p.get('feeder_outages_formed_s')} s "
            "(target <= 2)"
        )
        calm, storm = (
            p.get("telemetry_without_storm_ms", {}),
            p.get("telemetry_during_storm_ms", {}),
        )
        lines.append(
            f"  telemetry ack p99, spared devices: {storm.get('p99')} ms in the storm vs "
            f"{calm.get('p99')} ms without = {_ratio(storm.get('p99'), calm.get('p99'))} "
            f"(target <= 1.5x; p50 {storm.get('p50')} vs {calm.get('p50')})"
        )
        lines.append(
            f"  reconnect + replay of {p.get('cut_sites')} devices: "
            f"{p.get('reconnected_and_replayed_s')} s (target <= 10 at 5,000)"
        )
        settle = p.get("settlements", {})
        lines.append(
            f"  settlements: {settle.get('entries')} entries, {settle.get('per_s')}/s, first "
            f"{settle.get('first_after_replay_s')} s and all {settle.get('all_after_replay_s')} s "
            "after the replay"
        )
        ledger = r["ledger"]
        lines.append(
            f"  ledger check: {ledger['ledger_entries']} entries for {ledger['earning_credit']} "
            f"outages earning credit ({ledger['cut_sites']} cut sites), doubled "
            f"{ledger['doubled']}, wrong amount {ledger['wrong_amount']}, unpaid "
            f"{ledger['earning_unpaid']}: {'OK' if ledger['ok'] else 'FAILED'}"
        )
        for phase in ("without_storm", "during_storm"):
            cores = p.get(f"cores_{phase}") or {}
            shares = ", ".join(f"{k} {v}" for k, v in sorted(cores.items(), key=lambda kv: -kv[1]))
            lines.append(f"  cores used {phase.replace('_', ' ')}: {shares}")
        portal_rate = _get(p, "connect", "per_s")
        relay_rate = _get(r, "relay", "connect", "per_s")
        lines.append(
            f"  handshakes/s: portal {portal_rate} (p99 {_get(p, 'connect', 'handshake_ms', 'p99')}"
            f" ms), reconnect storm {_get(p, 'reconnect', 'per_s')}; bare websockets relay "
            f"{relay_rate} (p99 {_get(r, 'relay', 'connect', 'handshake_ms', 'p99')} ms) = "
            f"portal at {_ratio(portal_rate, relay_rate)} of the relay"
        )
        if p.get("errors") or p.get("process_exits"):
            lines.append(f"  errors {p.get('errors')}, exits {p.get('process_exits')}")
    steps = results.get("handshake_steps")
    if steps:
        lines.append("")
        lines.append(
            f"handshake steps, one at a time in one process ({steps['count']} devices; ms each):"
        )
        for name, figures in steps["steps"].items():
            lines.append(f"  {name:<28} wall {figures['wall_ms']:>6}  cpu {figures['cpu_ms']:>6}")
        burst = steps.get("burst") or {}
        if burst:
            lines.append(f"  the database steps of {burst['handshakes']} handshakes at once:")
        for name, figures in burst.items():
            if isinstance(figures, dict):
                lines.append(
                    f"  {name:<36} wall {figures['wall_ms']:>6}  cpu {figures['cpu_ms']:>6}"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default=None, help="comma-separated device counts (1000,5000)")
    parser.add_argument("--quick", action="store_true", help="N=100, short phases: a smoke test")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", 8111)))
    parser.add_argument("--workers", type=int, default=2, help="Uvicorn processes")
    parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--connect-concurrency", type=int, default=100)
    parser.add_argument("--storm-s", type=float, default=10.0)
    parser.add_argument("--skip-relay", action="store_true")
    parser.add_argument(
        "--connect-only", action="store_true", help="handshakes only: devices connect, no storm"
    )
    parser.add_argument("--skip-steps", action="store_true", help="no handshake step timing")
    parser.add_argument("--wait-quiet", action="store_true")
    args = parser.parse_args()
    ns = [int(x) for x in args.n.split(",")] if args.n else ([100] if args.quick else [1000, 5000])

    shared.stop_children_on_exit()
    common.LOG_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = common.WORK / f"run-{stamp}"
    all_entries = setup_data.ensure(max(ns))
    from bench.live.run import code_state

    results: dict = {"started": stamp, "code": code_state(), "args": vars(args), "runs": []}
    if args.wait_quiet:
        results["quiet"] = shared.wait_quiet(35 * 60, 0.8)
    for n in ns:
        results["runs"].append(one_n(n, all_entries, args, folder))
    if not args.skip_steps:
        from bench.outages.handshake_steps import time_steps

        results["handshake_steps"] = time_steps(all_entries[: min(500, max(ns))])
    text = report(results)
    print(text)
    out = common.VAR / f"bench-outages-{stamp}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    out.with_suffix(".txt").write_text(text + "\n")
    log(f"results in {out}")


if __name__ == "__main__":
    main()
