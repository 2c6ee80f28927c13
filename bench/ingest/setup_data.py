"""The benchmark's database and data set.

    python -m bench.ingest.setup_data [--devices 200]

Creates the database if it is missing and migrates it (the database is dropped and made again when
the project's migration files changed since it was made: a rewritten work-in-progress migration
would otherwise leave it out of step), then makes sure the data set exists:

- `--devices` devices `bench-ingest-NNNN`, one per site, with the 5 sensors of
  `common.SENSOR_KEYS` each (200 x 5 = 1,000 sensors), made by `devices.services.device_create`;
- `--cpe-sites` sites in all (the devices' sites first) with a CPE `PTBENCH<13 digits>` and their
  meter sensor (`telemetry.ftp_ingest.site_meter_sensor`), for the `.sgl_v2` file;
- a user `bench-ingest-tool` with the `telemetry.ingest_readings` permission and a DRF token;
- the FTP source `bench-ingest` (disabled: nothing polls it; the benchmark hands files over).

What the driver and the load generator need (sensor ids and public ids, the token, CPEs) is kept
in var/bench-ingest/data.json. A second run reuses what is there.
"""

import argparse
import json
import sys
import time

from bench import common as shared
from bench.ingest import common


def cpe_of(index: int) -> str:
    return f"{common.CPE_PREFIX}{index:013d}"


def _create(devices: int, cpe_sites: int) -> dict:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.db import transaction

    from devices.api_tokens import api_token_issue
    from devices.models import Site
    from devices.services import device_create
    from telemetry.ftp_ingest import site_meter_sensor
    from telemetry.models import FtpSource

    sensors_spec = [{"key": k, "kind": kind, "unit": unit} for k, kind, unit in common.SENSOR_KEYS]
    started = time.monotonic()
    with transaction.atomic():
        Site.objects.filter(name__startswith=common.PREFIX).delete()  # devices, sensors cascade
        Site.objects.bulk_create(
            [
                Site(name=f"{common.PREFIX}site-{i:04d}", cpe=cpe_of(i))
                for i in range(max(devices, cpe_sites))
            ]
        )
        sites = list(Site.objects.filter(name__startswith=common.PREFIX).order_by("name"))
        sensors = []
        for i in range(devices):
            device, _token = device_create(
                uid=f"{common.PREFIX}{i:04d}", site=sites[i], sensors=sensors_spec
            )
            for sensor in device.sensors.order_by("id"):
                sensors.append({"id": sensor.id, "public_id": f"{device.uid}.{sensor.key}"})
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{devices} devices", file=sys.stderr)
        for i, site in enumerate(sites[:cpe_sites]):
            site_meter_sensor(site=site)
            if (i + 1) % 250 == 0:
                print(f"  {i + 1}/{cpe_sites} meters", file=sys.stderr)
        User = get_user_model()
        user, _ = User.objects.get_or_create(username=f"{common.PREFIX}tool")
        user.user_permissions.add(Permission.objects.get(codename="ingest_readings"))
        token = api_token_issue(user=user)
        source, _ = FtpSource.objects.update_or_create(
            name=common.PREFIX.rstrip("-"),
            defaults={"host": "127.0.0.1", "folder": "/", "enabled": False},
        )
    print(f"  data set made in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return {
        "devices": devices,
        "cpe_sites": cpe_sites,
        "sensors": sensors,
        "cpes": [site.cpe for site in sites[:cpe_sites]],
        "api_token": token,
        "ftp_source_id": source.id,
    }


def _valid(data: dict, devices: int, cpe_sites: int) -> bool:
    from knox.crypto import hash_token
    from knox.models import AuthToken

    from django.utils import timezone

    from devices.models import Sensor

    if data.get("devices") != devices or data.get("cpe_sites") != cpe_sites:
        return False
    ids = [s["id"] for s in data["sensors"]]
    if Sensor.objects.filter(id__in=ids).count() != len(ids):
        return False
    # Only the token's digest is stored; an expired token means a fresh data set.
    return (
        AuthToken.objects.filter(digest=hash_token(data.get("api_token") or ""))
        .exclude(expiry__lt=timezone.now())
        .exists()
    )


def ensure(devices: int = 200, cpe_sites: int = 1000) -> dict:
    new = shared.ensure_database(
        common.database_url(), fingerprint_file=common.WORK / "migrations-fingerprint"
    )
    if new:
        common.DATA_FILE.unlink(missing_ok=True)
    shared.django_setup(common.portal_env())
    from django.core.management import call_command

    started = time.monotonic()
    call_command("migrate", verbosity=0, interactive=False)
    if new:
        print(f"  migrated in {time.monotonic() - started:.1f}s", file=sys.stderr)
    data = json.loads(common.DATA_FILE.read_text()) if common.DATA_FILE.exists() else {}
    if not _valid(data, devices, cpe_sites):
        print(
            f"creating the data set: {devices} devices x {len(common.SENSOR_KEYS)} sensors, "
            f"{cpe_sites} sites with a CPE",
            file=sys.stderr,
        )
        data = _create(devices, cpe_sites)
        common.WORK.mkdir(parents=True, exist_ok=True)
        common.DATA_FILE.write_text(json.dumps(data))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--cpe-sites", type=int, default=1000)
    args = parser.parse_args()
    data = ensure(args.devices, args.cpe_sites)
    print(f"{len(data['sensors'])} sensors ready in {common.DATA_FILE}", file=sys.stderr)


if __name__ == "__main__":
    main()
