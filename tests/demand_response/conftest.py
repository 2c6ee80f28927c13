"""Fixtures of the demand-response tests: a program open to the sites of feeder FD-1 (Alice's
and Bob's homes), a site outside it, and events scheduled from a fixed instant."""

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from django.db import connection

from demand_response import services
from demand_response.models import Program
from devices.models import Site
from energy_portal.celery import app as celery_app
from energy_portal.redis_client import sync_client
from tests.devices.test_consumers import socket_keys_delete

# A Wednesday; events in the tests start an hour after it unless they say otherwise.
NOW = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)


@pytest.fixture
def program(feeder):
    program = Program.objects.create(
        name="Winter peaks",
        reward_per_kwh=Decimal("0.2375"),
        currency="EUR",
        notification_lead_time=timedelta(minutes=30),
    )
    program.eligible_feeders.add(feeder)
    return program


@pytest.fixture
def outsider(db):
    """A site on no feeder and in no program."""
    return Site.objects.create(name="Elsewhere", timezone="Europe/Lisbon")


@pytest.fixture
def schedule(program):
    """Schedule an event of `program` (level 2, 11:00-13:00 UTC on NOW's day unless told)."""

    def make(**given):
        fields = {
            "program_id": program.pk,
            "start": NOW + timedelta(hours=1),
            "end": NOW + timedelta(hours=3),
            "signal_type": "level",
            "signal_value": Decimal(2),
            "now": NOW,
        } | given
        if "target_sites" not in fields and "target_feeders" not in fields:
            fields["target_feeders"] = list(program.eligible_feeders.values_list("pk", flat=True))
        return services.event_create(**fields)

    return make


def at_once(*calls: Callable[[], object]) -> list[object]:
    """Run each call in a thread of its own, released together; their results (an exception
    is returned, not raised). Each thread has its own database connection."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        try:
            barrier.wait()
            results[index] = call()
        except Exception as exc:  # handed to the test's thread
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.fixture(autouse=True)
def no_transitions_queued_before():
    """Each instant's task is queued once (a Redis key per instant): none left by another test
    or run, whose events may have had the same ids and instants."""
    client = sync_client()
    if stale := list(client.scan_iter(match="ep:dr:*-queued:*")):
        client.delete(*stale)


@pytest.fixture
def clean_redis():
    """The socket and channel-layer keys, and the broker's queue, empty before and after."""

    def clean():
        sync_client().delete("celery")
        socket_keys_delete()

    clean()
    yield
    clean()


@pytest.fixture
def eager_celery():
    """Tasks run where they are queued (their eta is not waited for): the start's curtail is
    sent as soon as the event turns active."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous
