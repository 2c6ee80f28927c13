"""Database calls of many device sockets made together (`devices.batched`) and the batch
services behind them: token checks, online and offline marks, power reports."""

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
from channels.db import database_sync_to_async

from devices import batched, selectors, services, socket_registry
from devices.models import Device
from energy_portal.redis_client import sync_client
from outages import services as outage_services
from outages.models import PowerEvent

AT = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_marks_left_over():
    """Sites marked for a drain (and the socket registry) live in Redis, outside the database's
    rollback."""
    keys = [
        outage_services.RECONCILE_DIRTY_KEY,
        outage_services.RECONCILE_QUEUED_KEY,
        outage_services.SUSPECTED_DIRTY_KEY,
        outage_services.SUSPECTED_QUEUED_KEY,
        socket_registry.SOCKETS_KEY,
    ]
    sync_client().delete(*keys)
    yield
    sync_client().delete(*keys)


# --- the batch services -------------------------------------------------------------------------


def test_token_checks_of_many_sockets_take_one_query_and_answer_in_order(
    alice_home, bob_home, django_assert_num_queries
):
    tokens = [alice_home["token"], "not a token", bob_home["token"], alice_home["token"]]

    with django_assert_num_queries(1):
        found = selectors.devices_for_sockets(tokens=tokens)

    assert [None if f is None else f[0].uid for f in found] == ["pi-a1", None, "pi-b1", "pi-a1"]
    # a token named twice: two sockets, each with a device object of its own
    assert found[0][0] is not found[3][0]
    assert found[0][1].keys() == found[3][1].keys() == set(found[2][1])


def test_devices_connected_marks_each_online_and_gives_each_its_open_commands(
    alice_home, bob_home, django_assert_max_num_queries
):
    alices, bobs = alice_home["device"], bob_home["device"]
    Device.objects.filter(pk__in=[alices.pk, bobs.pk]).update(online=False, last_seen=None)
    first = services.command_issue(device=bobs, name="ping")
    second = services.command_issue(device=bobs, name="relay", args={"state": "on"})

    with django_assert_max_num_queries(5):  # SET LOCAL, lock, UPDATE, SELECT (+ savepoint)
        open_ids = services.devices_connected(
            connections=[(alices, AT), (bobs, AT + timedelta(seconds=1))]
        )

    assert open_ids == [[], [first.id, second.id]]
    assert dict(Device.objects.filter(online=True).values_list("uid", "last_seen")) == {
        "pi-a1": AT,
        "pi-b1": AT + timedelta(seconds=1),
    }


def test_devices_disconnected_leaves_online_a_device_another_socket_holds(
    alice_home, bob_home, django_capture_on_commit_callbacks
):
    alices, bobs = alice_home["device"], bob_home["device"]
    services.devices_connected(connections=[(alices, AT), (bobs, AT)])
    # bob's device reconnected meanwhile: its new socket holds the registry entry
    sync_client().hset(socket_registry.SOCKETS_KEY, bobs.pk, "a newer socket")

    with django_capture_on_commit_callbacks(execute=True):
        services.devices_disconnected(
            leaving=[(alices, AT + timedelta(minutes=1), True), (bobs, AT, False)]
        )

    rows = dict(Device.objects.values_list("uid", "online"))
    assert rows == {"pi-a1": False, "pi-b1": True}
    dropped = Device.objects.get(pk=alices.pk)
    assert (dropped.last_seen, dropped.dropped_at) == (AT + timedelta(minutes=1),) * 2


def test_a_clean_end_clears_the_drop_instant(alice_home):
    device = alice_home["device"]
    services.devices_disconnected(leaving=[(device, AT, True)])
    services.devices_disconnected(leaving=[(device, AT + timedelta(minutes=5), False)])

    assert Device.objects.get(pk=device.pk).dropped_at is None


def test_power_reports_of_many_sockets_are_stored_once_and_their_sites_marked(
    alice_home, bob_home, django_capture_on_commit_callbacks
):
    alices, bobs = alice_home["device"], bob_home["device"]
    lost = (alices.pk, alices.site_id, "lost", AT)
    reports = [lost, lost, (bobs.pk, bobs.site_id, "lost", AT), (alices.pk, alices.site_id,
               "restored", AT + timedelta(hours=1))]  # fmt: skip
    sync_client().set(outage_services.RECONCILE_QUEUED_KEY, 1)  # a drain is queued already

    with django_capture_on_commit_callbacks(execute=True):
        answers = outage_services.power_events_record(reports=reports)
        again = outage_services.power_events_record(reports=reports[:1])

    assert answers == [None] * 4 and again == [None]
    assert sorted(PowerEvent.objects.values_list("device__uid", "state")) == [
        ("pi-a1", "lost"),
        ("pi-a1", "restored"),
        ("pi-b1", "lost"),
    ]
    marked = sync_client().smembers(outage_services.RECONCILE_DIRTY_KEY)
    assert {int(site) for site in marked} == {alices.site_id, bobs.site_id}


@pytest.mark.django_db(transaction=True)  # foreign keys are checked at commit
def test_a_power_report_that_cannot_be_stored_fails_alone(alice_home, bob_home):
    alices, bobs = alice_home["device"], bob_home["device"]
    gone = bobs.pk
    Device.objects.filter(pk=gone).delete()  # deleted after its socket's token check

    answers = outage_services.power_events_record(
        reports=[(alices.pk, alices.site_id, "lost", AT), (gone, bobs.site_id, "lost", AT)]
    )

    assert answers[0] is None and isinstance(answers[1], Exception)
    assert list(PowerEvent.objects.values_list("device_id", flat=True)) == [alices.pk]


# --- the queue of one event loop --------------------------------------------------------------


@pytest.mark.asyncio
async def test_calls_waiting_together_go_in_one_trip_each_with_its_own_answer():
    trips = []
    release = threading.Event()

    def double(items):
        trips.append(list(items))
        release.wait(5)  # the first trip is under way while more calls come
        return [ValueError(f"no {item}") if item == 3 else item * 2 for item in items]

    queue = batched.Batched(double)
    first = asyncio.ensure_future(queue(0))
    while not trips:
        await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(queue(n)) for n in range(1, 5)]
    await asyncio.sleep(0.05)
    release.set()
    answers = await asyncio.gather(first, *later, return_exceptions=True)

    # the first call travels alone; the others waited meanwhile and share the next trip
    assert trips == [[0], [1, 2, 3, 4]]
    assert answers[:3] + answers[4:] == [0, 2, 4, 8]
    assert isinstance(answers[3], ValueError) and str(answers[3]) == "no 3"


@pytest.mark.asyncio
async def test_a_failed_trip_fails_each_of_its_calls_and_the_next_trip_runs():
    calls = []

    def flaky(items):
        calls.append(items)
        if len(calls) == 1:
            raise ConnectionError("database went away")
        return items

    queue = batched.Batched(flaky)
    with pytest.raises(ConnectionError):
        await queue("a")
    assert await queue("b") == "b"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_loops_queues_check_tokens_of_sockets_connecting_at_once(alice_home, bob_home):
    found = await asyncio.gather(
        batched.socket_lookups()(alice_home["token"]),
        batched.socket_lookups()("nope"),
        batched.socket_lookups()(bob_home["token"]),
    )
    connected = await asyncio.gather(
        *(batched.sockets_connected()((device, AT)) for device, _ in [found[0], found[2]])
    )

    assert [f and f[0].uid for f in found] == ["pi-a1", None, "pi-b1"]
    assert connected == [[], []]
    online = await database_sync_to_async(lambda: set(
        Device.objects.filter(online=True).values_list("uid", flat=True)
    ))()  # fmt: skip
    assert online == {"pi-a1", "pi-b1"}
