"""The benchmark's data set: a grid of FEEDERS feeders under FEEDERS / FEEDERS_PER_TRANSFORMER
transformers, N sites spread evenly over the feeders, each with one device and one resident
holding a session, and a default credit policy that pays a storm's cuts.

    python -m bench.outages.setup_data --count 5000

Creates the database if it is missing and migrates it, then makes sure `count` sites exist
(`bench-outages-00000`, ...; site i hangs from feeder i % FEEDERS). Device tokens are shown only
once, so they are kept with the session keys in `var/bench-outages/data.json`; a second run
reuses what is there and only adds what is missing. `reset()` forgets every power report,
outage and credit of the benchmark's sites, so each run starts from a grid with no cuts.
"""

import argparse
import json
import sys
import time
from datetime import timedelta
from decimal import Decimal

from bench import common as shared
from bench.outages import common

PREFIX = "bench-outages-"
SENSORS = [{"key": "power_w", "kind": "power", "unit": "W"}]
POLICY = {
    "name": "Bench outages",
    "currency": "USD",
    "threshold": timedelta(hours=1),
    "base_amount": Decimal("0.00"),
    "tiers": [{"after": "PT0S", "period": "PT1H", "amount": "5.00"}],
    "count_started_periods": True,
    "cap": None,
    # Pays a cut only as part of a grid outage: settlement then waits on the grouping.
    "min_sites_affected": 2,
}


def _grid():
    from devices.models import Feeder, Substation, Transformer

    substation, _ = Substation.objects.get_or_create(code="BO-S", defaults={"name": "Bench"})
    feeders = []
    for index in range(common.FEEDERS):
        number = index // common.FEEDERS_PER_TRANSFORMER
        transformer, _ = Transformer.objects.get_or_create(
            code=f"BO-T{number}", defaults={"name": f"T{number}", "substation": substation}
        )
        feeder, _ = Feeder.objects.get_or_create(
            code=f"BO-F{index:02d}", defaults={"name": f"F{index}", "transformer": transformer}
        )
        feeders.append(feeder)
    return feeders


def _policy() -> None:
    from outages.models import CreditPolicy

    CreditPolicy.objects.exclude(name=POLICY["name"]).update(is_default=False)
    CreditPolicy.objects.update_or_create(
        name=POLICY["name"], defaults={**POLICY, "is_default": True}
    )


def _valid(entries: list[dict]) -> bool:
    from devices.models import Device, hash_token

    stored = dict(
        Device.objects.filter(uid__startswith=PREFIX).values_list("uid", "token_hash").iterator()
    )
    return all(stored.get(e["uid"]) == hash_token(e["token"]) for e in entries)


def _wipe() -> None:
    from django.contrib.auth import get_user_model

    from devices.models import Site

    reset()  # outages and the ledger hold on to the sites (protected keys)
    Site.objects.filter(name__startswith=PREFIX).delete()
    get_user_model().objects.filter(username__startswith=PREFIX).delete()


def _create(start: int, stop: int, feeders) -> list[dict]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from devices.models import Site
    from devices.services import device_create

    names = [f"{PREFIX}{i:05d}" for i in range(start, stop)]
    entries = []
    with transaction.atomic():
        Site.objects.filter(name__in=names).delete()
        get_user_model().objects.filter(username__in=names).delete()
        Site.objects.bulk_create(
            [
                Site(name=name, feeder=feeders[(start + i) % common.FEEDERS])
                for i, name in enumerate(names)
            ]
        )
        sites = {s.name: s for s in Site.objects.filter(name__in=names)}
        residents = shared.residents_with_sessions(sites)
        for index, name in enumerate(names):
            _device, token = device_create(uid=name, site=sites[name], sensors=SENSORS)
            feeder = (start + index) % common.FEEDERS
            entries.append(
                {
                    "index": start + index,
                    "uid": name,
                    "token": token,
                    "site": sites[name].pk,
                    "feeder": feeder,
                    "affected": common.affected(feeder),
                    "session": residents[name]["session"],
                }
            )
            if (index + 1) % 1000 == 0:
                print(f"  {index + 1}/{len(names)} sites", file=sys.stderr)
    return entries


def reset() -> None:
    """No power report, outage, suspected outage, socket drop, credit or open command left on
    the benchmark's sites (and no credit at all: the database is the benchmark's own). A
    suspected outage left by an earlier run (sockets that dropped when it stopped) would have
    every drain of this one sync its feeder's suspected outages for a day."""
    from django.db import connection

    from devices.models import Command, Device, Site
    from outages.models import CreditEntry, Outage, PowerEvent, SiteReconcile, SuspectedOutage

    sites = Site.objects.filter(name__startswith=PREFIX)
    with connection.cursor() as cursor:
        # The ledger refuses DELETE (append-only, by trigger); TRUNCATE empties it: the
        # benchmark's database holds no ledger but its own.
        cursor.execute(f"TRUNCATE {CreditEntry._meta.db_table}")
    Outage.objects.filter(site__in=sites).update(grid_outage=None)
    Outage.objects.filter(site__in=sites).delete()
    Outage.objects.filter(feeder__code__startswith="BO-").update(grid_outage=None)
    Outage.objects.filter(feeder__code__startswith="BO-").delete()
    Outage.objects.filter(transformer__code__startswith="BO-").delete()
    PowerEvent.objects.filter(site__in=sites).delete()
    SiteReconcile.objects.filter(site__in=sites).delete()
    Command.objects.filter(device__site__in=sites).delete()
    SuspectedOutage.objects.filter(feeder__code__startswith="BO-").delete()
    Device.objects.filter(site__in=sites).exclude(dropped_at=None).update(dropped_at=None)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE outages_outage")


def ensure(count: int) -> list[dict]:
    shared.ensure_database(common.database_url(), fingerprint_file=common.WORK / "migrations")
    shared.django_setup(common.portal_env())
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    feeders = _grid()
    _policy()
    entries = json.loads(common.DATA_FILE.read_text()) if common.DATA_FILE.exists() else []
    if not _valid(entries):
        print("kept data set no longer matches the database; rebuilding it", file=sys.stderr)
        _wipe()
        entries = []
    if len(entries) < count:
        started = time.monotonic()
        print(f"creating sites {len(entries)}..{count - 1}", file=sys.stderr)
        entries += _create(len(entries), count, feeders)
        common.WORK.mkdir(parents=True, exist_ok=True)
        common.DATA_FILE.write_text(json.dumps(entries))
        print(f"  done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    common.RELAY_TOKENS.write_text(json.dumps({e["token"]: e["site"] for e in entries}))
    return entries[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    entries = ensure(args.count)
    print(f"{len(entries)} sites ready in {common.DATA_FILE}", file=sys.stderr)


if __name__ == "__main__":
    main()
