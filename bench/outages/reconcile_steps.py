"""What reconciling a storm's reports costs, in one process with no other load: the storm's
`lost` reports of the cut sites (N / 2 sites on 25 feeders, instants spread over 10 s) stored,
then reconciled (a) site by site, as one task per report did (`site_outages_reconcile`), and
(b) by drains of `drain` sites each (`sites_outages_reconcile` of each drain's sites at once,
set-based; the drain task splits them by transformer). Each from a clean slate
(`setup_data.reset`); seconds, statements and the ratio, and a check that both left the same
outages.

    python -m bench.outages.reconcile_steps --n 1000 --drain 50
"""

import argparse
import random
import time
from datetime import UTC, datetime, timedelta


def _store_reports(entries: list[dict]) -> None:
    from django.db import transaction

    from devices.models import Device
    from outages.models import PowerEvent

    device_of = dict(
        Device.objects.filter(uid__in=[e["uid"] for e in entries]).values_list("uid", "id")
    )
    rng = random.Random(7)
    base = datetime.now(UTC) - timedelta(hours=3)
    cut = [e for e in entries if e["affected"]]
    with transaction.atomic():
        PowerEvent.objects.bulk_create(
            PowerEvent(
                device_id=device_of[e["uid"]],
                site_id=e["site"],
                state="lost",
                at=base + timedelta(seconds=rng.uniform(0, 10)),
            )
            for e in cut
        )
    return [e["site"] for e in cut]


def _state() -> list[tuple]:
    from bench.outages.setup_data import PREFIX
    from outages.models import Outage

    return sorted(
        Outage.objects.exclude(status="void")
        .filter(site__name__startswith=PREFIX)
        .values_list("site_id", "sites_affected")
    )


def _run(name: str, batches: list[list[int]], entries) -> dict:
    from django.db import connection

    from bench.outages import setup_data
    from outages import services

    setup_data.reset()
    _store_reports(entries)
    statements = [0, 0.0]

    def counted(execute, sql, params, many, context):
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements[0] += 1
            statements[1] += time.perf_counter() - t0

    with connection.execute_wrapper(counted):
        started = time.perf_counter()
        for batch in batches:
            services.sites_outages_reconcile(site_ids=batch)
        seconds = time.perf_counter() - started
    return {
        "name": name,
        "calls": len(batches),
        "seconds": round(seconds, 3),
        "statements": statements[0],
        "statements_s": round(statements[1], 3),
        "state": _state(),
    }


def measure(entries: list[dict], drain: int) -> dict:
    cut = [e["site"] for e in entries if e["affected"]]
    order = list(cut)
    random.Random(7).shuffle(order)
    single = _run("site by site", [[site] for site in order], entries)
    drains = _run(
        f"drains of {drain}",
        [order[i : i + drain] for i in range(0, len(order), drain)],
        entries,
    )
    same = single.pop("state") == drains.pop("state")
    return {"sites": len(cut), "single": single, "drains": drains, "same_outages": same}


def main() -> None:
    from bench.outages import setup_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--drain", type=int, default=50, help="sites a drain takes at once")
    args = parser.parse_args()
    entries = setup_data.ensure(args.n)[: args.n]
    result = measure(entries, args.drain)
    single, drains = result["single"], result["drains"]
    for row in (single, drains):
        print(
            f"{row['name']:<16} {result['sites']} sites: {row['seconds']} s, "
            f"{row['calls']} calls, {row['statements']} statements ({row['statements_s']} s)"
        )
    print(
        f"drains / site by site: {drains['seconds'] / single['seconds']:.2f}x the time, "
        f"{drains['statements'] / single['statements']:.2f}x the statements; "
        f"same outages: {result['same_outages']}"
    )
    setup_data.reset()


if __name__ == "__main__":
    main()
