"""Every write to the registry."""

import secrets
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from devices.models import Device, Room, Sensor, Site, hash_token

TOKEN_BYTES = 32


@transaction.atomic
def device_create(
    *,
    uid: str,
    site: Site,
    kind: str = "pi",
    name: str = "",
    room: Room | None = None,
    controllable: bool = False,
    flexible_kw: Decimal = Decimal("0"),
    sensors: list[dict] | None = None,
) -> tuple[Device, str]:
    """Create a device (and optionally its sensors); return it with its token, shown only now."""
    device = Device(
        uid=uid,
        site=site,
        kind=kind,
        name=name,
        room=room,
        controllable=controllable,
        flexible_kw=flexible_kw,
    )
    device.full_clean(exclude=["token_hash"])
    token = device_issue_token(device=device)
    for spec in sensors or []:
        sensor_create(device=device, **spec)
    return device, token


def device_issue_token(*, device: Device) -> str:
    """Give the device a new token and save it; any old token stops working at once.

    Only a hash is stored, so the returned token must be shown to the caller now or never.
    A device not saved yet is saved with its first token.
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    device.token_hash = hash_token(token)
    device.token_rotated_at = timezone.now()
    if device.pk is None:
        device.save()
    else:
        device.save(update_fields=["token_hash", "token_rotated_at"])
    return token


def device_update(*, device: Device, **fields) -> Device:
    for name, value in fields.items():
        setattr(device, name, value)
    device.full_clean()
    device.save(update_fields=list(fields))
    return device


def sensor_create(*, device: Device, key: str, kind: str, unit: str = "") -> Sensor:
    sensor = Sensor(device=device, key=key, kind=kind, unit=unit)
    sensor.full_clean()
    sensor.save()
    return sensor
