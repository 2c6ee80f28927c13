"""Reads for the telemetry side."""

from devices.models import Device, Sensor
from telemetry.models import FtpSource, PollSource
from telemetry.validation import SensorRef


def sensor_refs_by_public_id(*, public_ids: set[str], device: Device | None = None) -> dict:
    """Sensors named `<uid>.<key>`, limited to one device's when a device token is writing."""
    wanted: dict[str, set[str]] = {}
    for public_id in public_ids:
        uid, _, key = public_id.rpartition(".")
        if uid and key:
            wanted.setdefault(uid, set()).add(key)
    if device is not None:
        wanted = {device.uid: wanted[device.uid]} if device.uid in wanted else {}
    if not wanted:
        return {}
    rows = Sensor.objects.filter(
        device__uid__in=list(wanted), key__in={k for keys in wanted.values() for k in keys}
    ).values_list("id", "key", "device_id", "device__uid", "device__site_id")
    return {
        f"{uid}.{key}": SensorRef(
            sensor_id=sensor_id, key=key, device_id=device_id, device_uid=uid, site_id=site_id
        )
        for sensor_id, key, device_id, uid, site_id in rows
        if key in wanted.get(uid, ())
    }


def ingestion_sources() -> dict:
    """FTP sources and HTTP pollers with their health, for `GET /api/v1/sources/`."""
    ftp = list(FtpSource.objects.order_by("name"))
    polls = list(
        PollSource.objects.select_related("site")
        .prefetch_related("appliances__device")
        .order_by("site_id", "name")
    )
    return {"ftp": ftp, "http": polls}
