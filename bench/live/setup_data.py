"""The benchmark's data set: residents, each with one site and one device, and a session each.

    python -m bench.live.setup_data --count 4000

Creates the database if it is missing and migrates it, then makes sure `count` residents exist
(`bench-live-00000`, ...), each a resident of one site with one device (`power_w` sensor) made by
`devices.services.device_create`, plus a logged-in Django session per resident, so a load generator
can open the device socket (`Authorization: Bearer <token>`) and the resident's dashboard socket
(`Cookie: sessionid=<key>`). Tokens are shown only once, so they are kept in
`var/bench-live/data.json`; a second run reuses what is there and only adds what is missing.
"""

import argparse
import json
import sys
import time

from bench import common as shared
from bench.live import common

PREFIX = "bench-live-"
SENSORS = [{"key": "power_w", "kind": "power", "unit": "W"}]


def _valid(entries: list[dict]) -> bool:
    """Are the kept tokens and sessions still good in this database?"""
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    from devices.models import Device, hash_token

    if not entries:
        return True
    stored = dict(
        Device.objects.filter(uid__startswith=PREFIX).values_list("uid", "token_hash").iterator()
    )
    for entry in entries:
        if stored.get(entry["uid"]) != hash_token(entry["token"]):
            return False
    keys = [e["session"] for e in entries]
    live = 0
    for i in range(0, len(keys), 1000):
        live += Session.objects.filter(
            session_key__in=keys[i : i + 1000],
            expire_date__gt=timezone.now() + timezone.timedelta(days=1),
        ).count()
    return live == len(keys)


def _wipe() -> None:
    from django.contrib.auth import get_user_model

    from devices.models import Site

    Site.objects.filter(name__startswith=PREFIX).delete()  # devices and sensors cascade
    get_user_model().objects.filter(username__startswith=PREFIX).delete()


def _create(start: int, stop: int) -> list[dict]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from devices.models import Site
    from devices.services import device_create

    names = [f"{PREFIX}{i:05d}" for i in range(start, stop)]
    entries = []
    with transaction.atomic():
        # Leftovers of an interrupted run would collide on the unique names.
        Site.objects.filter(name__in=names).delete()
        get_user_model().objects.filter(username__in=names).delete()
        Site.objects.bulk_create([Site(name=name) for name in names])
        sites = {s.name: s for s in Site.objects.filter(name__in=names)}
        # Residents cannot log in with a password; they only hold a session.
        residents = shared.residents_with_sessions(sites)
        for index, name in enumerate(names):
            _device, token = device_create(uid=name, site=sites[name], sensors=SENSORS)
            entries.append(
                {"index": start + index, "uid": name, "token": token, "site": sites[name].pk}
                | residents[name]
            )
            if (index + 1) % 500 == 0:
                print(f"  {index + 1}/{len(names)} devices", file=sys.stderr)
    return entries


def ensure(count: int) -> list[dict]:
    shared.ensure_database(common.database_url())
    shared.django_setup(common.portal_env())
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    entries = json.loads(common.DATA_FILE.read_text()) if common.DATA_FILE.exists() else []
    if not _valid(entries):
        print("kept data set no longer matches the database; rebuilding it", file=sys.stderr)
        _wipe()
        entries = []
    if len(entries) < count:
        started = time.monotonic()
        print(f"creating residents {len(entries)}..{count - 1}", file=sys.stderr)
        entries += _create(len(entries), count)
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
    print(f"{len(entries)} residents ready in {common.DATA_FILE}", file=sys.stderr)


if __name__ == "__main__":
    main()
