"""The benchmark's database and fleet.

    python -m bench.query.setup_data [--sites 500]

Creates the database if it is missing and migrates it (dropped and made again when the project's
migration files changed since it was made, as bench/ingest does), then makes sure the fleet exists:

- one substation, 2 transformers, 6 feeders (3 each);
- `--sites` sites `bq-site-NNNN` (Europe/Lisbon, EUR, tariffs 0.1500-0.2400 /kWh), spread over the
  feeders round-robin, each with one room;
- per site 2 sensors (1,000 for 500 sites), so every rule of the site-energy code is exercised:
  even sites: the utility meter `meter-<site id>` (kind meter, `energy_kwh` kWh per interval,
  made by `telemetry.ftp_ingest.site_meter_sensor`, as .sgl_v2 ingest does) + a Pi `bq-pi-NNNN` with
  `power_w` (W); odd sites: a Pi with `power_w` (W) and `energy_kwh` (a cumulative counter, kWh);
- an operator (staff) user `bq-operator` for the HTTP round trips.

Devices are made with `devices.services.device_create`. What the loader and the driver need
(sensor ids, their index and role, sites, feeders) is kept in var/bench-query/data.json.
"""

import argparse
import hashlib
import json
import sys
import time
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

from bench.query import common

FEEDERS = [(f"BQ-FD-{i}", f"BQ-TR-{1 + (i - 1) // 3}") for i in range(1, 7)]


def migrations_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(common.ROOT.glob("*/migrations/*.py")):
        if ".venv" in path.parts:
            continue
        digest.update(str(path.relative_to(common.ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_database(url: str, fingerprint: str) -> bool:
    """Create the database if missing, or drop and re-create it when the migrations changed.
    Returns whether it is new (empty)."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    marker = common.db_dir(name) / "migrations-fingerprint"
    with psycopg.connect(admin, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        stale = found and (not marker.exists() or marker.read_text().strip() != fingerprint)
        if stale:
            common.log(f"migration files changed: dropping database {name}")
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        if not found or stale:
            common.log(f"creating database {name}")
            conn.execute(f'CREATE DATABASE "{name}"')
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(fingerprint)
            if common.data_file(name).exists():
                common.data_file(name).unlink()
            return True
    return False


def _create(sites_n: int) -> dict:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from devices.models import DeviceKind, Feeder, Room, Site, Substation, Transformer
    from devices.services import device_create
    from telemetry.ftp_ingest import site_meter_sensor

    started = time.monotonic()
    with transaction.atomic():
        Site.objects.filter(name__startswith=common.PREFIX).delete()  # cascades to devices
        sub, _ = Substation.objects.get_or_create(code="BQ-SUB", defaults={"name": "Bench sub"})
        feeders = []
        for code, tr_code in FEEDERS:
            tr, _ = Transformer.objects.get_or_create(
                code=tr_code, defaults={"name": tr_code, "substation": sub}
            )
            feeder, _ = Feeder.objects.get_or_create(
                code=code, defaults={"name": code, "transformer": tr}
            )
            feeders.append(feeder)
        Site.objects.bulk_create(
            [
                Site(
                    name=f"{common.PREFIX}site-{i:04d}",
                    timezone="Europe/Lisbon",
                    currency="EUR",
                    tariff_per_kwh=Decimal("0.1500") + Decimal("0.0100") * (i % 10),
                    feeder=feeders[i % len(feeders)],
                )
                for i in range(sites_n)
            ]
        )
        sites = list(Site.objects.filter(name__startswith=common.PREFIX).order_by("name"))
        Room.objects.bulk_create([Room(site=s, name="Living room") for s in sites])
        rooms = {r.site_id: r for r in Room.objects.filter(site__in=sites)}
        sensors = []  # in load order: index = position
        for i, site in enumerate(sites):
            if i % 2 == 0:
                meter = site_meter_sensor(site=site)
                sensors.append({"id": meter.id, "role": "meter", "site": i,
                                "public_id": f"{meter.device.uid}.{meter.key}"})  # fmt: skip
                spec = [{"key": "power_w", "kind": "power", "unit": "W"}]
            else:
                spec = [
                    {"key": "power_w", "kind": "power", "unit": "W"},
                    {"key": "energy_kwh", "kind": "energy", "unit": "kWh"},
                ]
            device, _token = device_create(
                uid=f"{common.PREFIX}pi-{i:04d}", site=site, kind=DeviceKind.PI,
                room=rooms[site.id], sensors=spec,
            )  # fmt: skip
            for sensor in device.sensors.order_by("key"):
                role = "power" if sensor.key == "power_w" else "counter"
                sensors.append({"id": sensor.id, "role": role, "site": i,
                                "public_id": f"{device.uid}.{sensor.key}"})  # fmt: skip
            if (i + 1) % 100 == 0:
                common.log(f"  {i + 1}/{sites_n} sites")
        User = get_user_model()
        user, _ = User.objects.get_or_create(
            username=f"{common.PREFIX}operator", defaults={"is_staff": True}
        )
    common.log(f"  fleet made in {time.monotonic() - started:.1f}s")
    return {
        "sites_n": sites_n,
        "sites": [{"id": s.id, "feeder": s.feeder_id} for s in sites],
        "feeders": [f.id for f in feeders],
        "sensors": sensors,
        "operator": user.username,
    }


def _valid(data: dict, sites_n: int) -> bool:
    from devices.models import Sensor

    if data.get("sites_n") != sites_n:
        return False
    ids = [s["id"] for s in data["sensors"]]
    return Sensor.objects.filter(id__in=ids).count() == len(ids)


def ensure(sites_n: int = 500) -> dict:
    """Database, migrations and fleet; Django is set up in this process afterwards."""
    new = ensure_database(common.database_url(), migrations_fingerprint())
    common.django_setup()
    from django.core.management import call_command

    started = time.monotonic()
    call_command("migrate", verbosity=0, interactive=False)
    if new:
        common.log(f"  migrated in {time.monotonic() - started:.1f}s")
    path = common.data_file()
    data = json.loads(path.read_text()) if path.exists() else {}
    if not _valid(data, sites_n):
        common.log(f"creating the fleet: {sites_n} sites, {2 * sites_n} sensors")
        data = _create(sites_n)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=500)
    args = parser.parse_args()
    data = ensure(args.sites)
    print(f"{len(data['sensors'])} sensors on {len(data['sites'])} sites", file=sys.stderr)


if __name__ == "__main__":
    main()


def drop_database(url: str, *, name: str | None = None) -> None:
    """Drop the benchmark's database (and forget its state), or another database `name` of
    the same server (a snapshot)."""
    import psycopg

    parts = urlsplit(url)
    main = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name or main}" WITH (FORCE)')
    for path in (common.db_dir(name or main) / "migrations-fingerprint",
                 common.data_file(name or main)):  # fmt: skip
        if path.exists():
            path.unlink()
