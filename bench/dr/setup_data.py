"""The demand-response benchmark's data set.

    python -m bench.dr.setup_data [--sites 10000] [--devices 5000]

Creates the database if missing (dropped and made again when the migrations changed) and
migrates it, then makes sure there are `--sites` sites `bench-dr-NNNNN` (Europe/Lisbon, EUR),
each with a utility meter (`energy_kwh`, kWh per quarter-hour) whose readings run every 15
minutes from FIRST_DAY to the settlement event's end (two weeks: the 10 baseline weekdays, the
weekends, the event day), loaded by binary COPY (bench/query's loader) and rolled up set-based
(bench/query's bulk rollups, the rows the refresh job makes). The first `--devices` sites also
get a controllable Pi (the sockets the dispatch part opens); their tokens are kept in
var/bench-dr/data.json. Sites, devices and sensors are bulk-created (a registry of 10,000 sites
through `device_create` one by one would take longer than the benchmark).
"""

import argparse
import json
import secrets
import time
from datetime import timedelta

from bench import common as shared
from bench.common import log
from bench.dr import common


def _create_sites(first: int, stop: int) -> None:
    from django.db import transaction

    from devices.models import Device, DeviceKind, Sensor, Site, hash_token

    names = [f"{common.PREFIX}{i:05d}" for i in range(first, stop)]
    with transaction.atomic():
        Site.objects.bulk_create(
            [Site(name=n, timezone=common.ZONE, currency="EUR") for n in names], batch_size=2000
        )
        sites = dict(Site.objects.filter(name__in=names).values_list("name", "pk"))
        meters = Device.objects.bulk_create(
            [
                Device(
                    uid=f"meter-{sites[n]}",
                    site_id=sites[n],
                    kind=DeviceKind.METER,
                    token_hash=hash_token(secrets.token_urlsafe(24)),
                )
                for n in names
            ],
            batch_size=2000,
        )
        Sensor.objects.bulk_create(
            [Sensor(device=m, key="energy_kwh", kind="energy", unit="kWh") for m in meters],
            batch_size=2000,
        )
    log(f"  sites {first}..{stop - 1} made")


def _create_devices(count: int) -> list[dict]:
    from devices.models import Device, DeviceKind, Site, hash_token

    Device.objects.filter(uid__startswith=common.PREFIX).delete()
    sites = list(
        Site.objects.filter(name__startswith=common.PREFIX)
        .order_by("name")
        .values_list("pk", flat=True)[:count]
    )
    entries = [
        {"uid": f"{common.PREFIX}pi-{n:05d}", "site": site, "token": secrets.token_urlsafe(24)}
        for n, site in enumerate(sites)
    ]
    Device.objects.bulk_create(
        [
            Device(
                uid=e["uid"],
                site_id=e["site"],
                kind=DeviceKind.PI,
                controllable=True,
                token_hash=hash_token(e["token"]),
            )
            for e in entries
        ],
        batch_size=2000,
    )
    return entries


def _load_quarters() -> None:
    """Every meter's quarter-hours from FIRST_DAY to the event's end, written straight into
    `rollup_15m` by one set-based statement: the rows the rollup refresh makes from one reading
    per quarter-hour (sum = min = max = last = the reading, count 1). Settlement reads only the
    rollups, and 13M readings loaded and rolled up would take ten minutes of a shared machine.
    Values as bench/query's meters: 0.05-0.55 kWh, deterministic."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE energy_readings, rollup_15m, rollup_1h, rollup_1d, rollup_dirty")
        cursor.execute(
            """
            INSERT INTO rollup_15m (sensor_id, bucket, sum, count, min, max, last)
            SELECT s.id, %(t0)s + step * interval '15 minutes', v, 1, v, v, v
            FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM devices_sensor s
                  WHERE s.key = 'energy_kwh' AND s.device_id IN (
                      SELECT d.id FROM devices_device d JOIN devices_site t ON t.id = d.site_id
                      WHERE t.name LIKE %(prefix)s)) s
            CROSS JOIN generate_series(0, %(steps)s - 1) step
            CROSS JOIN LATERAL (SELECT 0.05 + ((s.n * 37 + step * 11) %% 500) / 1000.0 AS v) x
            """,
            {
                "t0": common.FIRST_DAY,
                "steps": int((common.EVENT_END - common.FIRST_DAY) / timedelta(minutes=15)),
                "prefix": common.PREFIX + "%",
            },
        )
        cursor.execute("VACUUM (ANALYZE) rollup_15m")


def ensure(sites: int, devices: int) -> list[dict]:
    """The data set as asked (made or completed); the controllable devices' entries."""
    shared.ensure_database(common.database_url(), fingerprint_file=common.WORK / "migrations")
    shared.django_setup(common.portal_env())
    from django.core.management import call_command

    from devices.models import Device, Site

    call_command("migrate", verbosity=0, interactive=False)
    have = Site.objects.filter(name__startswith=common.PREFIX).count()
    state = json.loads(common.DATA_FILE.read_text()) if common.DATA_FILE.exists() else {}
    started = time.monotonic()
    if have < sites:
        log(f"making sites {have}..{sites - 1}")
        for first in range(have, sites, 2000):
            _create_sites(first, min(first + 2000, sites))
    if have < sites or state.get("readings_for") != sites:
        _load_quarters()
        state["readings_for"] = sites
    pis = Device.objects.filter(uid__startswith=common.PREFIX, controllable=True).count()
    if pis != devices or len(state.get("devices", [])) != devices:
        state["devices"] = _create_devices(devices)
    common.WORK.mkdir(parents=True, exist_ok=True)
    common.DATA_FILE.write_text(json.dumps(state))
    log(f"data set ready ({time.monotonic() - started:.0f}s)")
    return state["devices"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=5_000)
    args = parser.parse_args()
    ensure(args.sites, args.devices)


if __name__ == "__main__":
    main()
