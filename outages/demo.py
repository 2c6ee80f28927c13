"""Outage data for the demo (`make run`): a credit policy that pays within minutes, a short
history of past cuts at the demo sites, their readings' past with those cuts in it, and cuts on
command (`manage.py demo_outage`)."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from devices import services as device_services
from devices.demo import DEMO_SITES
from devices.models import Command, Device, DeviceKind, Feeder, Site
from outages import selectors, services
from outages.models import CreditPolicy, PowerEvent
from telemetry.demo_history import HISTORY_DAYS, HistoryResult, Progress, demo_history_fill

# Ofgem's shape (an amount at the threshold, then an amount per further whole period), in the
# demo sites' currency, with minutes for hours so a demo cut earns something while one watches.
# The threshold matches the default momentary threshold (3 min): a shorter cut is never paid.
DEMO_POLICY = {
    "name": "Demo (3-minute threshold)",
    "currency": "EUR",
    "threshold": timedelta(minutes=3),
    "base_amount": Decimal("0.95"),
    "tiers": [{"after": "PT3M", "period": "PT2M", "amount": "0.45"}],
    "count_started_periods": False,
    "cap": None,
    "min_sites_affected": 1,
}

# Past cuts: (days ago, UTC start hour and minute, length, demo site names). Cuts of several
# sites of one feeder at once make feeder outages (FD-101, FD-102, FD-103 in devices/demo.py).
_FD101, _FD102, _FD103 = (
    tuple(spec["name"] for spec in DEMO_SITES if spec["feeder"] == code)
    for code in ("FD-101", "FD-102", "FD-103")
)
DEMO_HISTORY = [
    (2, (18, 40), timedelta(minutes=47), (*_FD101, "Bob's house")),
    (6, (7, 12), timedelta(seconds=90), ("Alice's flat",)),
    (11, (21, 5), timedelta(hours=2, minutes=15), _FD102),
    (19, (13, 30), timedelta(minutes=11), ("Alice's flat", "Bob's house")),
    (27, (4, 50), timedelta(hours=1, minutes=5), _FD103),
    (33, (16, 20), timedelta(minutes=25), ("Carol's house",)),
]


@transaction.atomic
def demo_credit_policy_ensure() -> tuple[CreditPolicy, bool]:
    """Create the demo policy if missing and make it the default when no policy is; returns it
    and whether it is the default. An operator's own default is left alone."""
    policy = CreditPolicy.objects.filter(name=DEMO_POLICY["name"]).first()
    if policy is None:
        policy = CreditPolicy(**DEMO_POLICY)
        policy.full_clean()
        policy.save()
    if not policy.is_default and not CreditPolicy.objects.filter(is_default=True).exists():
        policy.is_default = True
        policy.save(update_fields=["is_default"])
    return policy, policy.is_default


def demo_history_seed(*, now: datetime | None = None) -> list[str]:
    """Give the demo sites a few past cuts (power events of all their devices, then a reconcile,
    so outages and ledger entries exist); returns the names of the sites seeded.

    A site that already has power events more than an hour old has a history and is skipped, so
    seeding again (every `make run`) adds nothing.
    """
    now = now or timezone.now()
    seeded = []
    names = {name for *_, sites in DEMO_HISTORY for name in sites}
    for site in Site.objects.filter(name__in=names).order_by("name"):
        if PowerEvent.objects.filter(site=site, at__lt=now - timedelta(hours=1)).exists():
            continue
        devices = list(Device.objects.filter(site=site).order_by("uid"))
        for days, (hour, minute), length, sites in DEMO_HISTORY:
            if site.name not in sites:
                continue
            start = (now - timedelta(days=days)).replace(
                hour=hour, minute=minute, second=0, microsecond=0
            )
            # Each Pi sees the change a moment after the one before, as real devices would.
            for offset, device in enumerate(devices):
                skew = timedelta(milliseconds=350 * offset)
                for state, at in (("lost", start + skew), ("restored", start + length + skew)):
                    services.power_event_record(
                        device_id=device.pk,
                        site_id=site.pk,
                        device_uid=device.uid,
                        state=state,
                        at=at,
                    )
        if devices:
            services.site_outages_reconcile(site_id=site.pk)
            seeded.append(site.name)
    return seeded


def demo_readings_seed(
    *, now: datetime | None = None, progress: Progress | None = None, days: int = HISTORY_DAYS
) -> HistoryResult:
    """Fill the demo devices' readings up to now (telemetry/demo_history.py), dark during the
    demo sites' recorded outages, so the readings and the outages tell one story."""
    now = now or timezone.now()
    names = {spec["name"] for spec in DEMO_SITES}
    site_ids = Site.objects.filter(name__in=names).values_list("pk", flat=True)
    dark = selectors.site_outage_spans(
        site_ids=site_ids, start=now - timedelta(days=days + 1), end=now
    )
    return demo_history_fill(now=now, dark=dark, progress=progress, days=days)


@dataclass
class DemoCut:
    device_uid: str
    site_name: str
    command: Command


class DemoOutageError(Exception):
    """The cut cannot be made; the message says why and what to do."""


def demo_outage_issue(*, feeder_code: str, minutes: float, user=None) -> list[DemoCut]:
    """Tell every Pi of every site on the feeder to cut its simulated mains for `minutes` (the
    `simulate_mains` command, expiring when the cut would be over). Appliances run no simulator
    (devices/demo.py): they are left out."""
    feeder = Feeder.objects.filter(code=feeder_code).first()
    if feeder is None:
        known = ", ".join(Feeder.objects.values_list("code", flat=True)) or "none yet"
        raise DemoOutageError(f"No feeder {feeder_code!r}; known feeders: {known}.")
    devices = list(
        Device.objects.filter(site__feeder=feeder, kind=DeviceKind.PI)
        .select_related("site")
        .order_by("uid")
    )
    if not devices:
        raise DemoOutageError(f"Feeder {feeder_code} has no Pis: give its sites Pis first.")
    args = {"state": "lost", "minutes": minutes}
    ttl = timedelta(minutes=minutes)
    with transaction.atomic():
        try:
            return [
                DemoCut(
                    device.uid,
                    device.site.name,
                    device_services.command_issue(
                        device=device, name="simulate_mains", args=args, ttl=ttl, user=user
                    ),
                )
                for device in devices
            ]
        except ValidationError as exc:
            raise DemoOutageError("; ".join(exc.messages)) from None
