"""Fixtures of the outages tests: the shipped policies, power reports at minutes past a fixed
instant, and Celery running tasks in the test's own process."""

from datetime import UTC, datetime, timedelta

import pytest

from energy_portal.celery import app as celery_app
from outages import services
from outages.models import CreditPolicy

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


@pytest.fixture
def eager_celery():
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous
