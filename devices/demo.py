"""Demo data: users, a small grid and two homes with devices, for `make run`."""

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from devices import services
from devices.models import Device, Feeder, Room, Site, Substation, Transformer

DEMO_USERS = [
    # username, password, role
    ("admin", "demo-admin", "admin"),
    ("operator", "demo-operator", "operator"),
    ("alice", "demo-alice", "resident"),
    ("bob", "demo-bob", "resident"),
]

STANDARD_SENSORS = [
    {"key": "power_w", "kind": "power", "unit": "W"},
    {"key": "voltage_v", "kind": "voltage", "unit": "V"},
    {"key": "energy_kwh", "kind": "energy", "unit": "kWh"},
]

DEMO_SITES = [
    {
        "resident": "alice",
        "name": "Alice's flat",
        "address": "Rua das Flores 12, Porto",
        "cpe": "PT0002000068856781NV",
        "feeder": "FD-101",
        "rooms": ["Kitchen", "Living room"],
        "devices": [
            ("pi-0001", "Kitchen Pi", "pi", "Kitchen", True, "2.0"),
            ("pi-0002", "Heat pump monitor", "pi", "Living room", True, "3.5"),
        ],
    },
    {
        "resident": "bob",
        "name": "Bob's house",
        "address": "Avenida da Boavista 400, Porto",
        "cpe": "PT0002000081234567LQ",
        "feeder": "FD-102",
        "rooms": ["Garage", "Hall"],
        "devices": [
            ("pi-0003", "Garage Pi", "pi", "Garage", True, "7.4"),
            ("pi-0004", "Hall Pi", "pi", "Hall", False, "0"),
        ],
    },
]


@dataclass
class DemoResult:
    users: list[tuple[str, str, str, bool]]  # username, password, role, created now
    device_tokens: dict[str, str]


def _ensure_user(username: str, password: str, role: str) -> bool:
    User = get_user_model()
    user, created = User.objects.get_or_create(username=username)
    if created:
        user.set_password(password)
        user.is_staff = user.is_superuser = role == "admin"
        user.save()
    if role == "operator":
        user.groups.add(Group.objects.get_or_create(name=settings.OPERATORS_GROUP)[0])
    return created


@transaction.atomic
def demo_seed(*, rotate_tokens: bool = True) -> DemoResult:
    """Create what is missing of the demo data; existing rows and passwords are left alone.

    Device tokens are stored only as hashes, so each run issues fresh ones (when asked) for the
    simulated Pis that `make run` starts.
    """
    Group.objects.get_or_create(name=settings.OPERATORS_GROUP)
    users = [(u, p, r, _ensure_user(u, p, r)) for u, p, r in DEMO_USERS]

    substation, _ = Substation.objects.get_or_create(code="SUB-1", defaults={"name": "Ramalde"})
    transformer, _ = Transformer.objects.get_or_create(
        code="TR-10",
        defaults={"name": "Ramalde T1", "substation": substation, "capacity_kva": Decimal("630")},
    )
    for code, name in [("FD-101", "Ramalde north"), ("FD-102", "Ramalde south")]:
        Feeder.objects.get_or_create(code=code, defaults={"name": name, "transformer": transformer})

    tokens: dict[str, str] = {}
    for spec in DEMO_SITES:
        site, _ = Site.objects.get_or_create(
            name=spec["name"],
            defaults={
                "address": spec["address"],
                "cpe": spec["cpe"],
                "feeder": Feeder.objects.get(code=spec["feeder"]),
                "timezone": "Europe/Lisbon",
                "tariff_per_kwh": Decimal("0.1850"),
                "currency": "EUR",
            },
        )
        site.residents.add(get_user_model().objects.get(username=spec["resident"]))
        rooms = {
            name: Room.objects.get_or_create(site=site, name=name)[0] for name in spec["rooms"]
        }
        for uid, name, kind, room, controllable, flexible_kw in spec["devices"]:
            device = Device.objects.filter(uid=uid).first()
            if device is None:
                device, tokens[uid] = services.device_create(
                    uid=uid,
                    site=site,
                    kind=kind,
                    name=name,
                    room=rooms[room],
                    controllable=controllable,
                    flexible_kw=Decimal(flexible_kw),
                    sensors=STANDARD_SENSORS,
                )
            elif rotate_tokens:
                tokens[uid] = services.device_issue_token(device=device)
    return DemoResult(users=users, device_tokens=tokens)
