"""The registry: grid topology, sites, rooms, devices and their sensors."""

import hashlib
import uuid
import zoneinfo
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from devices.currency import validate_currency

code_validator = RegexValidator(
    r"^[A-Za-z0-9_.-]+$", "Use letters, digits, dots, hyphens and underscores only."
)


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not a known IANA time zone, e.g. 'Europe/Lisbon'.")


class Substation(models.Model):
    code = models.CharField(max_length=40, unique=True, validators=[code_validator])
    name = models.CharField(max_length=120)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} — {self.name}"


class Transformer(models.Model):
    substation = models.ForeignKey(
        Substation, on_delete=models.PROTECT, related_name="transformers"
    )
    code = models.CharField(max_length=40, unique=True, validators=[code_validator])
    name = models.CharField(max_length=120)
    capacity_kva = models.DecimalField(
        max_digits=10, decimal_places=1, null=True, blank=True, validators=[MinValueValidator(0)]
    )

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} — {self.name}"


class Feeder(models.Model):
    transformer = models.ForeignKey(Transformer, on_delete=models.PROTECT, related_name="feeders")
    code = models.CharField(max_length=40, unique=True, validators=[code_validator])
    name = models.CharField(max_length=120)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} — {self.name}"


class Site(models.Model):
    name = models.CharField(max_length=120)
    address = models.CharField(max_length=250, blank=True)
    residents = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="sites", blank=True)
    timezone = models.CharField(
        max_length=64, default="Europe/Lisbon", validators=[validate_timezone]
    )
    tariff_per_kwh = models.DecimalField(
        max_digits=8,
        decimal_places=4,
        default=Decimal("0.2000"),
        validators=[MinValueValidator(0)],
        help_text="Price of one kWh in the site's currency.",
    )
    currency = models.CharField(
        max_length=3,
        default="EUR",
        validators=[validate_currency],
    )
    cpe = models.CharField(
        "CPE meter code",
        max_length=20,
        unique=True,
        null=True,
        blank=True,
        validators=[
            RegexValidator(r"^[A-Z0-9]{1,20}$", "A CPE is up to 20 capital letters/digits.")
        ],
        help_text="Meter code that load-profile (.sgl_v2) files use for this site.",
    )
    feeder = models.ForeignKey(
        Feeder, on_delete=models.PROTECT, related_name="sites", null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]
        # The fleet page's order (site name, then device uid) by index: a page of it walks the
        # sites in name order and each one's devices (`devices_device.site_id`), instead of
        # joining and sorting every device (15 ms at 10,000 devices, bench/pages).
        indexes = [models.Index(fields=["name", "id"], name="site_name_idx")]

    def __str__(self) -> str:
        return self.name


class Room(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="rooms")
    name = models.CharField(max_length=80)

    class Meta:
        ordering = ["site_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["site", "name"], name="room_name_unique_per_site")
        ]

    def __str__(self) -> str:
        return f"{self.site.name} / {self.name}"


class DeviceKind(models.TextChoices):
    PI = "pi", "Raspberry Pi"
    GATEWAY = "gateway", "Gateway"
    METER = "meter", "Smart meter"
    HVAC = "hvac", "HVAC"
    WATER_HEATER = "water_heater", "Water heater"
    EV_CHARGER = "ev_charger", "EV charger"
    BATTERY = "battery", "Battery"
    PV_INVERTER = "pv_inverter", "PV inverter"
    PLUG = "plug", "Smart plug"
    OTHER = "other", "Other appliance"


def hash_token(token: str) -> str:
    """Device tokens are long random strings, so a plain SHA-256 is enough to store them safely."""
    return hashlib.sha256(token.encode()).hexdigest()


class Device(models.Model):
    uid = models.SlugField(
        max_length=64, unique=True, help_text="Stable identifier used by the device, e.g. pi-0001."
    )
    name = models.CharField(max_length=120, blank=True)
    kind = models.CharField(max_length=20, choices=DeviceKind.choices, default=DeviceKind.PI)
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="devices")
    room = models.ForeignKey(
        Room, on_delete=models.SET_NULL, related_name="devices", null=True, blank=True
    )
    controllable = models.BooleanField(default=False)
    flexible_kw = models.DecimalField(
        "flexible load (kW)",
        max_digits=8,
        decimal_places=2,
        default=Decimal("0"),
        validators=[MinValueValidator(0)],
    )
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    online = models.BooleanField(default=False, editable=False)
    last_seen = models.DateTimeField(null=True, blank=True, editable=False)
    online_since = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When its socket opened; empty offline."
    )
    dropped_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When its last socket ended abruptly (no close frame, or silent): its last "
        "sign of life. Empty when it ended cleanly (the device or the server closed it).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["uid"]
        indexes = [models.Index(fields=["site", "online"], name="device_site_online_idx")]

    def __str__(self) -> str:
        return self.uid

    def clean(self) -> None:
        if self.room_id and self.site_id and self.room.site_id != self.site_id:
            raise ValidationError({"room": "The room must belong to the device's site."})


class SensorKind(models.TextChoices):
    POWER = "power", "Power"
    ENERGY = "energy", "Energy"
    VOLTAGE = "voltage", "Voltage"
    CURRENT = "current", "Current"
    FREQUENCY = "frequency", "Frequency"
    TEMPERATURE = "temperature", "Temperature"
    HUMIDITY = "humidity", "Humidity"
    GENERATION = "generation", "Generation"
    STATE_OF_CHARGE = "state_of_charge", "State of charge"
    OTHER = "other", "Other"


class Sensor(models.Model):
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="sensors")
    key = models.SlugField(
        max_length=64, help_text="Key the device uses in telemetry, e.g. power_w."
    )
    kind = models.CharField(max_length=20, choices=SensorKind.choices)
    unit = models.CharField(max_length=16, blank=True)

    class Meta:
        ordering = ["device_id", "key"]
        constraints = [
            models.UniqueConstraint(fields=["device", "key"], name="sensor_key_unique_per_device")
        ]

    def __str__(self) -> str:
        return self.public_id

    @property
    def public_id(self) -> str:
        return f"{self.device.uid}.{self.key}"


class CommandStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    REJECTED = "rejected", "Rejected by device"
    EXPIRED = "expired", "Expired"


class Command(models.Model):
    """An order for a device; it waits for the device to be online until it expires."""

    OPEN_STATUSES = (CommandStatus.PENDING, CommandStatus.SENT)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="commands")
    name = models.SlugField(max_length=40)
    args = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=10, choices=CommandStatus.choices, default=CommandStatus.PENDING
    )
    detail = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["device", "status"], name="command_device_status_idx")]

    def __str__(self) -> str:
        return f"{self.name} → {self.device_id} ({self.status})"
