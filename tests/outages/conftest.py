"""Fixtures of the outages tests: the shipped policies, power reports at minutes past a fixed
instant, and Celery running tasks in the test's own process."""

from datetime import UTC, datetime, timedelta

import pytest

from devices import services as device_services
from energy_portal.celery import app as celery_app
from energy_portal.redis_client import sync_client
from outages import services
from outages.models import CreditPolicy
from tests.conftest import SENSORS

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def ofgem(db):
    """The shipped Ofgem policy (migration 0003), made the default."""
    policy = CreditPolicy.objects.get(name="Ofgem normal weather")
    policy.is_default = True
    policy.save(update_fields=["is_default"])
    return policy


def report_cut(device, *, lost: datetime, restored: datetime | None = None) -> None:
    """Report a cut of `device`'s mains (and its end) and derive the site's outages, as the
    reconcile task does."""
    for state, instant in (("lost", lost), ("restored", restored)):
        if instant is not None:
            services.power_event_record(
                device_id=device.id,
                site_id=device.site_id,
                device_uid=device.uid,
                state=state,
                at=instant,
            )
    services.site_outages_reconcile(site_id=device.site_id)


def reconcile(home):
    """Reconcile the `home` fixture's site; gives back what the reconcile did."""
    return services.site_outages_reconcile(site_id=home["site"].id)


@pytest.fixture
def home(alice_home):
    """Alice's site with two Pis: `pi-a1` and `pi-a2`."""
    second, _ = device_services.device_create(
        uid="pi-a2", site=alice_home["site"], room=alice_home["room"], sensors=SENSORS
    )
    return {"site": alice_home["site"], "a": alice_home["device"], "b": second}


@pytest.fixture
def report():
    """Record a power report of `device` at `minutes` past T0, as the socket consumer does."""

    def record(device, state: str, minutes: float):
        event, _ = services.power_event_record(
            device_id=device.id,
            site_id=device.site_id,
            device_uid=device.uid,
            state=state,
            at=at(minutes),
        )
        return event

    return record


DRAIN_KEYS = [
    services.RECONCILE_DIRTY_KEY,
    services.RECONCILE_QUEUED_KEY,
    services.SUSPECTED_DIRTY_KEY,
    services.SUSPECTED_QUEUED_KEY,
]


@pytest.fixture(autouse=True)
def reconcile_queue_empty():
    """No site or feeder marked for a drain, and no drain flagged queued, by an earlier test."""
    client = sync_client()
    client.delete(*DRAIN_KEYS)
    yield
    client.delete(*DRAIN_KEYS)


@pytest.fixture
def eager_celery():
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous
