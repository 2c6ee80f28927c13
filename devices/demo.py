"""Demo data: users, a small grid (3 feeders, 2 transformers) and 12 homes with devices, for
`make run`."""

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
    ("carol", "demo-carol", "resident"),
    ("dave", "demo-dave", "resident"),
]

STANDARD_SENSORS = [
    {"key": "power_w", "kind": "power", "unit": "W"},
    {"key": "voltage_v", "kind": "voltage", "unit": "V"},
    {"key": "energy_kwh", "kind": "energy", "unit": "kWh"},
]

# The sensors of each kind of demo device. Pis measure a circuit; the appliances report what
# their own controllers know (a heat pump its outdoor probe too, an inverter what it generates).
DEMO_SENSORS = {
    "pi": STANDARD_SENSORS,
    "hvac": [
        {"key": "power_w", "kind": "power", "unit": "W"},
        {"key": "energy_kwh", "kind": "energy", "unit": "kWh"},
        {"key": "outdoor_temp_c", "kind": "temperature", "unit": "°C"},
    ],
    "ev_charger": [
        {"key": "power_w", "kind": "power", "unit": "W"},
        {"key": "energy_kwh", "kind": "energy", "unit": "kWh"},
    ],
    "pv_inverter": [
        {"key": "pv_w", "kind": "generation", "unit": "W"},
        {"key": "pv_energy_kwh", "kind": "generation", "unit": "kWh"},
    ],
}

# (code, name, transformer code)
DEMO_FEEDERS = [
    ("FD-101", "Ramalde north", "TR-10"),
    ("FD-102", "Ramalde south", "TR-10"),
    ("FD-103", "Francos", "TR-11"),
]

# Each device: uid, name, kind, room, controllable, flexible kW, and the load profile
# (pi_agent/demo_profiles.py) its synthetic history follows (telemetry/demo_history.py) and
# `make run`'s simulated fleet continues live, appliances included (pi_agent/simulate.py).
DEMO_SITES = [
    {
        "resident": "alice",
        "name": "Alice's flat",
        "address": "Rua das Flores 12, Porto",
        "cpe": "PT0002000068856781NV",
        "feeder": "FD-101",
        "rooms": ["Kitchen", "Living room"],
        "devices": [
            ("pi-0001", "Kitchen Pi", "pi", "Kitchen", True, "2.0", "household"),
            ("pi-0002", "Heat pump monitor", "pi", "Living room", True, "3.5", "heat_pump"),
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
            ("pi-0003", "Garage Pi", "pi", "Garage", True, "7.4", "ev"),
            ("pi-0004", "Hall Pi", "pi", "Hall", False, "0", "household"),
        ],
    },
    {
        "resident": "carol",
        "name": "Carol's house",
        "address": "Rua de Ramalde 88, Porto",
        "cpe": "PT0002000070011223AB",
        "feeder": "FD-101",
        "rooms": ["Utility room"],
        "devices": [
            ("pi-0005", "Main board Pi", "pi", "Utility room", True, "1.5", "household"),
            ("hp-0005", "Heat pump", "hvac", "Utility room", True, "3.0", "heat_pump"),
        ],
    },
    {
        "resident": None,
        "name": "Rua de Ramalde 90, 1st floor",
        "address": "Rua de Ramalde 90 1.º, Porto",
        "cpe": "PT0002000070011224CD",
        "feeder": "FD-101",
        "rooms": [],
        "devices": [("pi-0006", "Meter cupboard Pi", "pi", None, False, "0", "household")],
    },
    {
        "resident": None,
        "name": "Rua de Ramalde 90, 2nd floor",
        "address": "Rua de Ramalde 90 2.º, Porto",
        "cpe": "PT0002000070011225EF",
        "feeder": "FD-101",
        "rooms": [],
        "devices": [("pi-0007", "Meter cupboard Pi", "pi", None, True, "1.0", "household")],
    },
    {
        "resident": "dave",
        "name": "Dave's house",
        "address": "Rua do Lidador 15, Porto",
        "cpe": "PT0002000070022331GH",
        "feeder": "FD-102",
        "rooms": ["Hall", "Roof"],
        # The grid Pi measures the connection: import minus what the panels make.
        "devices": [
            ("pi-0008", "Grid connection Pi", "pi", "Hall", True, "2.0", "household_pv"),
            ("pv-0008", "Rooftop PV inverter", "pv_inverter", "Roof", False, "0", "pv"),
        ],
    },
    {
        "resident": None,
        "name": "Rua do Lidador 21",
        "address": "Rua do Lidador 21, Porto",
        "cpe": "PT0002000070022332IJ",
        "feeder": "FD-102",
        "rooms": ["Garage"],
        "devices": [
            ("pi-0009", "Main board Pi", "pi", "Garage", False, "0", "household"),
            ("ev-0009", "EV charger", "ev_charger", "Garage", True, "7.2", "ev"),
        ],
    },
    {
        "resident": None,
        "name": "Rua do Lidador 27",
        "address": "Rua do Lidador 27, Porto",
        "cpe": "PT0002000070022333KL",
        "feeder": "FD-102",
        "rooms": [],
        "devices": [("pi-0010", "Main board Pi", "pi", None, True, "1.0", "household")],
    },
    {
        "resident": None,
        "name": "Rua de Francos 140",
        "address": "Rua de Francos 140, Porto",
        "cpe": "PT0002000070033441MN",
        "feeder": "FD-103",
        "rooms": ["Kitchen"],
        "devices": [
            ("pi-0011", "Main board Pi", "pi", "Kitchen", False, "0", "household"),
            ("hp-0011", "Heat pump", "hvac", "Kitchen", True, "2.5", "heat_pump"),
        ],
    },
    {
        "resident": None,
        "name": "Rua de Francos 152",
        "address": "Rua de Francos 152, Porto",
        "cpe": "PT0002000070033442OP",
        "feeder": "FD-103",
        "rooms": [],
        "devices": [("pi-0012", "Main board Pi", "pi", None, True, "1.0", "household")],
    },
    {
        "resident": None,
        "name": "Bairro de Francos, block 3",
        "address": "Bairro de Francos, bloco 3, Porto",
        "cpe": "PT0002000070033443QR",
        "feeder": "FD-103",
        "rooms": [],
        "devices": [("pi-0013", "Stairwell Pi", "pi", None, False, "0", "household")],
    },
    {
        "resident": None,
        "name": "Padaria Francos",
        "address": "Rua de Francos 201, Porto",
        "cpe": "PT0002000070033444ST",
        "feeder": "FD-103",
        "rooms": ["Bakery"],
        "devices": [("pi-0014", "Bakery Pi", "pi", "Bakery", True, "4.0", "shop")],
    },
]


@dataclass
class DemoResult:
    users: list[tuple[str, str, str, bool]]  # username, password, role, created now
    # uid -> what the simulated fleet needs of each device: its fresh token and its profile
    # (the `--tokens` file of pi_agent/simulate.py)
    simulated: dict[str, dict]


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
    simulated devices that `make run` starts.
    """
    Group.objects.get_or_create(name=settings.OPERATORS_GROUP)
    users = [(u, p, r, _ensure_user(u, p, r)) for u, p, r in DEMO_USERS]

    substation, _ = Substation.objects.get_or_create(code="SUB-1", defaults={"name": "Ramalde"})
    transformers = {
        code: Transformer.objects.get_or_create(
            code=code,
            defaults={"name": name, "substation": substation, "capacity_kva": Decimal(kva)},
        )[0]
        for code, name, kva in [("TR-10", "Ramalde T1", "630"), ("TR-11", "Francos T1", "400")]
    }
    for code, name, transformer in DEMO_FEEDERS:
        Feeder.objects.get_or_create(
            code=code, defaults={"name": name, "transformer": transformers[transformer]}
        )

    simulated: dict[str, dict] = {}
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
        if spec["resident"]:
            site.residents.add(get_user_model().objects.get(username=spec["resident"]))
        rooms = {
            name: Room.objects.get_or_create(site=site, name=name)[0] for name in spec["rooms"]
        }
        for uid, name, kind, room, controllable, flexible_kw, profile in spec["devices"]:
            device = Device.objects.filter(uid=uid).first()
            if device is None:
                device, token = services.device_create(
                    uid=uid,
                    site=site,
                    kind=kind,
                    name=name,
                    room=rooms.get(room),
                    controllable=controllable,
                    flexible_kw=Decimal(flexible_kw),
                    sensors=DEMO_SENSORS[kind],
                )
            elif rotate_tokens:
                token = services.device_issue_token(device=device)
            else:
                continue
            simulated[uid] = {
                "token": token,
                "profile": profile,
                "sensors": [sensor["key"] for sensor in DEMO_SENSORS[kind]],
                "flexible_w": float(flexible_kw) * 1000 if controllable else 0.0,
                "timezone": site.timezone,
            }
    return DemoResult(users=users, simulated=simulated)
