"""Registry services and the selectors that scope reads to a user."""

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.db import connection, connections, transaction
from django.utils import timezone

from devices import selectors, services, socket_registry
from devices import tasks as device_tasks
from devices.groups import commands_group
from devices.models import Command, Device, Sensor, hash_token
from energy_portal.realtime import live_channel
from energy_portal.redis_client import sync_client
from tests.conftest import SENSORS


def test_device_create_stores_the_tokens_hash_and_the_sensors(alice_home):
    # when
    device, token = services.device_create(
        uid="pi-0009", site=alice_home["site"], flexible_kw=Decimal("1.5"), sensors=SENSORS
    )

    # then
    device.refresh_from_db()
    assert device.token_hash == hash_token(token)
    assert device.token_rotated_at is not None
    assert device.flexible_kw == Decimal("1.5")
    assert [s.public_id for s in device.sensors.order_by("key")] == [
        "pi-0009.power_w",
        "pi-0009.voltage_v",
    ]


def test_device_create_gives_each_device_its_own_token(alice_home):
    _, first = services.device_create(uid="pi-x1", site=alice_home["site"])
    _, second = services.device_create(uid="pi-x2", site=alice_home["site"])

    assert len({first, second, alice_home["token"]}) == 3


def test_device_create_refuses_a_room_of_another_site(alice_home, bob_home):
    with pytest.raises(ValidationError) as caught:
        services.device_create(uid="pi-x", site=alice_home["site"], room=bob_home["room"])

    assert "room" in caught.value.message_dict
    assert not Device.objects.filter(uid="pi-x").exists()


def test_device_create_rolls_back_the_device_when_a_sensor_is_invalid(alice_home):
    sensors = [*SENSORS, {"key": "power_w", "kind": "power", "unit": "W"}]

    with pytest.raises(ValidationError):
        services.device_create(uid="pi-x", site=alice_home["site"], sensors=sensors)

    assert not Device.objects.filter(uid="pi-x").exists()
    assert not Sensor.objects.filter(device__uid="pi-x").exists()


def test_device_issue_token_replaces_the_old_token(alice_home):
    device, old = alice_home["device"], alice_home["token"]
    rotated_before = device.token_rotated_at

    new = services.device_issue_token(device=device)

    device.refresh_from_db()
    assert new != old
    assert device.token_hash == hash_token(new)
    assert device.token_rotated_at > rotated_before
    assert selectors.device_by_token(token=new) == device
    assert selectors.device_by_token(token=old) is None


def test_device_update_validates_and_leaves_the_row_alone_on_error(alice_home, bob_home):
    device = alice_home["device"]

    with pytest.raises(ValidationError):
        services.device_update(device=device, room=bob_home["room"])
    with pytest.raises(ValidationError):
        services.device_update(device=Device.objects.get(pk=device.pk), flexible_kw=Decimal(-1))

    device.refresh_from_db()
    assert device.room_id == alice_home["room"].id
    assert device.flexible_kw == Decimal("2")


def test_device_update_saves_only_the_named_fields(alice_home):
    device = alice_home["device"]
    # another process marks the device online meanwhile
    Device.objects.filter(pk=device.pk).update(online=True)

    services.device_update(device=device, name="Meter cabinet")

    device.refresh_from_db()
    assert device.name == "Meter cabinet"
    assert device.online is True


def test_sensor_create_refuses_a_duplicate_key_per_device(alice_home, bob_home):
    with pytest.raises(ValidationError):
        services.sensor_create(device=alice_home["device"], key="power_w", kind="power")

    # the same key on another device is fine
    other = services.sensor_create(device=bob_home["device"], key="temp_c", kind="temperature")
    assert other.public_id == "pi-b1.temp_c"


@pytest.mark.parametrize(
    ("who", "expected"),
    [("admin_user", True), ("operator", True), ("alice", False), (None, False)],
)
def test_user_is_operator(request, who, expected):
    user = request.getfixturevalue(who) if who else AnonymousUser()

    assert selectors.user_is_operator(user) is expected


def test_selectors_scope_residents_to_their_own_sites(alice, operator, alice_home, bob_home):
    assert list(selectors.site_list(user=alice)) == [alice_home["site"]]
    assert list(selectors.room_list(user=alice)) == [alice_home["room"]]
    assert [d.uid for d in selectors.device_list(user=alice)] == ["pi-a1"]
    assert {s.public_id for s in selectors.sensor_list(user=alice)} == {
        "pi-a1.power_w",
        "pi-a1.voltage_v",
    }
    assert selectors.device_list(user=operator).count() == 2


def test_fleet_devices_filters_and_counts(alice_home, bob_home, feeder):
    Device.objects.filter(uid="pi-b1").update(online=True)

    assert [d.uid for d in selectors.fleet_devices(online=True)] == ["pi-b1"]
    assert [d.uid for d in selectors.fleet_devices(search="alice")] == ["pi-a1"]
    assert selectors.fleet_devices(feeder_id=feeder.id).count() == 2
    assert [d.uid for d in selectors.fleet_devices(site_id=bob_home["site"].id)] == ["pi-b1"]
    assert selectors.fleet_counts() == {"total": 2, "online": 1, "offline": 1}


@pytest.fixture
def registry_keys():
    client = sync_client()
    keys = (socket_registry.LAST_SEEN_KEY, socket_registry.SOCKETS_KEY)
    client.delete(*keys)
    yield client
    client.delete(*keys)


def test_silent_devices_go_offline_by_the_latest_of_redis_and_the_database(
    alice_home, bob_home, settings, registry_keys
):
    # given two devices shown online, each with a registered socket, the heartbeat timeout 10 s
    settings.DEVICE_HEARTBEAT_TIMEOUT = 10
    now = time.time()
    alice_id, bob_id = alice_home["device"].id, bob_home["device"].id
    for device_id in (alice_id, bob_id):
        registry_keys.hset(socket_registry.SOCKETS_KEY, device_id, f"channel-{device_id}")
    # Alice's Pi just connected: the database says so, its first note is not in Redis yet.
    Device.objects.filter(pk=alice_id).update(
        online=True, last_seen=datetime.fromtimestamp(now - 1, tz=UTC)
    )
    # Bob's Pi was last heard of 30 s ago (Redis), 60 s ago by the database.
    Device.objects.filter(pk=bob_id).update(
        online=True, last_seen=datetime.fromtimestamp(now - 60, tz=UTC)
    )
    registry_keys.hset(socket_registry.LAST_SEEN_KEY, bob_id, f"{now - 30:.3f}")

    # when the beat job looks for silent devices
    marked = services.devices_mark_silent_offline(now=now)

    # then only Bob's goes offline and loses its registry entry
    assert marked == 1
    assert Device.objects.get(pk=alice_id).online is True
    assert Device.objects.get(pk=bob_id).online is False
    # its socket dropped at its last sign of life, Redis' note 30 s ago
    assert Device.objects.get(pk=bob_id).dropped_at == datetime.fromtimestamp(
        float(f"{now - 30:.3f}"), tz=UTC
    )
    assert registry_keys.hget(socket_registry.SOCKETS_KEY, alice_id) is not None
    assert registry_keys.hget(socket_registry.SOCKETS_KEY, bob_id) is None


def test_the_flush_copies_signs_of_life_forward_only(alice_home, bob_home, registry_keys):
    # given Alice's Pi last seen an hour ago and Bob's never, by the database
    alice_id, bob_id = alice_home["device"].id, bob_home["device"].id
    now = time.time()
    hour_ago = datetime.fromtimestamp(now - 3600, tz=UTC)
    Device.objects.filter(pk=alice_id).update(last_seen=hour_ago)
    Device.objects.filter(pk=bob_id).update(last_seen=None)

    # when the sockets' notes say both were heard just now, and the beat job flushes them
    registry_keys.hset(socket_registry.LAST_SEEN_KEY, alice_id, f"{now:.3f}")
    registry_keys.hset(socket_registry.LAST_SEEN_KEY, bob_id, f"{now:.3f}")
    assert device_tasks.devices_flush_last_seen() == 2

    # then both moved to it
    heard = datetime.fromtimestamp(float(f"{now:.3f}"), tz=UTC)
    assert set(Device.objects.values_list("last_seen", flat=True)) == {heard}

    # and an older note (a flush racing a newer write) moves nothing back
    assert services.devices_record_last_seen(seen={alice_id: hour_ago, bob_id: heard}) == 0
    assert Device.objects.get(pk=alice_id).last_seen == heard


def test_a_recent_note_in_redis_keeps_a_device_online_whatever_the_database_says(
    alice_home, settings, registry_keys
):
    settings.DEVICE_HEARTBEAT_TIMEOUT = 10
    now = time.time()
    device_id = alice_home["device"].id
    Device.objects.filter(pk=device_id).update(
        online=True, last_seen=datetime.fromtimestamp(now - 3600, tz=UTC)
    )
    registry_keys.hset(socket_registry.LAST_SEEN_KEY, device_id, f"{now - 2:.3f}")

    assert services.devices_mark_silent_offline(now=now) == 0
    assert Device.objects.get(pk=device_id).online is True


def test_the_socket_token_check_gives_the_device_and_its_sensors_in_one_query(
    alice_home, django_assert_num_queries
):
    with django_assert_num_queries(1):
        device, sensors = selectors.device_for_socket(token=alice_home["token"])

    assert device == alice_home["device"]
    assert device.site == alice_home["site"]
    assert {key: ref.sensor_id for key, ref in sensors.items()} == dict(
        Sensor.objects.filter(device=device).values_list("key", "id")
    )
    assert {ref.device_uid for ref in sensors.values()} == {"pi-a1"}
    assert selectors.device_for_socket(token="not a token") is None


def test_the_socket_token_check_of_a_device_without_sensors(alice_home):
    bare, token = services.device_create(uid="pi-bare", site=alice_home["site"])

    assert selectors.device_for_socket(token=token) == (bare, {})


def test_device_connected_marks_it_online_and_gives_its_open_commands_oldest_first(
    alice_home, django_assert_max_num_queries
):
    device = alice_home["device"]
    Device.objects.filter(pk=device.pk).update(online=False, last_seen=None)
    first = services.command_issue(device=device, name="ping")
    second = services.command_issue(device=device, name="relay", args={"state": "on"})
    done = services.command_issue(device=device, name="restore")
    services.command_complete(command_id=done.id, device_id=device.id, status="done")
    at = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)

    with django_assert_max_num_queries(5):  # SET LOCAL, lock, UPDATE, SELECT (+ savepoint)
        open_ids = services.device_connected(device=device, at=at)

    assert open_ids == [first.id, second.id]
    assert Device.objects.filter(pk=device.pk, online=True, last_seen=at).exists()
    assert (device.online, device.last_seen) == (True, at)


def test_commands_mark_sent_records_a_batch_once_and_never_reopens_a_finished_command(
    alice_home,
):
    device = alice_home["device"]
    pending = services.command_issue(device=device, name="ping")
    answered = services.command_issue(device=device, name="relay", args={"state": "on"})
    # the device answered before its socket's batch of sent marks was written
    services.command_complete(command_id=answered.id, device_id=device.id, status="done")
    at = datetime(2026, 11, 2, 18, 0, 1, tzinfo=UTC)

    marked = services.commands_mark_sent(command_ids=[pending.id, answered.id], at=at)
    again = services.commands_mark_sent(command_ids=[pending.id, answered.id])

    pending.refresh_from_db()
    answered.refresh_from_db()
    assert (marked, again) == (2, 0)  # a second batch with the same ids changes nothing
    assert (pending.status, pending.sent_at) == ("sent", at)
    assert (answered.status, answered.sent_at) == ("done", at)


def test_commands_issued_together_are_published_once_committed_in_chunks(
    alice_home, bob_home, monkeypatch, django_capture_on_commit_callbacks
):
    """The server processes hear of a batch of commands in one message per
    COMMANDS_PER_MESSAGE (here 2), each entry the device, the command, the frame its socket
    writes and the expiry; nothing before the commands are committed."""
    monkeypatch.setattr(services, "COMMANDS_PER_MESSAGE", 2)
    spare, _ = services.device_create(uid="pi-spare", site=alice_home["site"])
    listener = sync_client().pubsub(ignore_subscribe_messages=True)
    listener.subscribe(live_channel(commands_group()))
    listener.get_message(timeout=1)  # the subscription's confirmation

    devices = [alice_home["device"], bob_home["device"], spare]

    with django_capture_on_commit_callbacks(execute=True):
        ids = services.commands_issue(
            device_ids=[d.pk for d in devices] + [999_999], name="relay", args={"state": "off"}
        )
        before_commit = listener.get_message(timeout=0.2)
    messages = [listener.get_message(timeout=1) for _ in range(2)]
    listener.close()
    commands = [Command.objects.get(pk=ids[d.pk]) for d in devices]

    batches = [json.loads(m["data"]) for m in messages]
    assert before_commit is None
    assert set(ids) == {d.pk for d in devices}  # a device that does not exist gets none
    assert [(c.name, c.args, c.status, c.sent_at) for c in commands] == [
        ("relay", {"state": "off"}, "pending", None)
    ] * 3
    assert [len(batch) for batch in batches] == [2, 1]
    assert sorted(entry for batch in batches for entry in batch) == sorted(
        [c.device_id, str(c.id), services.command_frame(c), c.expires_at.timestamp()]
        for c in commands
    )
    assert json.loads(services.command_frame(commands[0])) == {
        "type": "command",
        "id": str(commands[0].id),
        "name": "relay",
        "args": {"state": "off"},
        "expires_at": commands[0].expires_at.isoformat(),
    }


def test_commands_complete_records_a_batch_of_results_each_for_its_own_device_only(
    alice_home, bob_home
):
    alices = services.command_issue(device=alice_home["device"], name="ping")
    bobs = services.command_issue(device=bob_home["device"], name="ping")
    finished = services.command_issue(device=alice_home["device"], name="ping")
    services.command_complete(command_id=finished.id, device_id=alice_home["device"].pk,
                              status="failed", detail="first")  # fmt: skip
    alice, unknown = alice_home["device"].pk, "00000000-0000-0000-0000-000000000000"

    found = services.commands_complete(
        results=[
            (str(alices.id), alice, "done", "relay\x00off"),
            (str(bobs.id), alice, "done", ""),  # Bob's command, answered by Alice's device
            (unknown, alice, "done", ""),
            (str(finished.id), alice, "done", "again"),  # a second answer changes nothing
        ]
    )

    assert found == {str(alices.id), str(finished.id)}
    stored = {c.pk: c for c in Command.objects.all()}
    assert (stored[alices.id].status, stored[alices.id].detail) == ("done", "relay\ufffdoff")
    assert stored[alices.id].completed_at is not None
    assert stored[bobs.id].status == "pending"
    assert (stored[finished.id].status, stored[finished.id].detail) == ("failed", "first")
    with pytest.raises(ValueError, match="not a command result"):
        services.commands_complete(results=[(str(bobs.id), bob_home["device"].pk, "sent", "")])


def test_command_message_carries_the_frame_the_socket_writes(alice_home):
    command = services.command_issue(
        device=alice_home["device"], name="relay", args={"state": "off"}
    )

    message = services.command_message(command)

    assert message["type"] == "device.command"
    assert message["id"] == str(command.id)
    assert message["expires"] == command.expires_at.timestamp()
    assert json.loads(message["frame"]) == {
        "type": "command",
        "id": str(command.id),
        "name": "relay",
        "args": {"state": "off"},
        "expires_at": command.expires_at.isoformat(),
    }


@pytest.mark.django_db(transaction=True)  # foreign keys are checked at commit
def test_a_batch_holding_devices_never_blocks_a_power_report_of_them(alice_home):
    """The device batches' row locks (socket ends, the fleet's last-seen copy) must leave the
    key-share locks of the reports' foreign-key checks alone: with FOR UPDATE a batch of power
    reports and the last-seen copy deadlocked in a storm (bench/outages)."""
    from outages.services import power_events_record

    device = alice_home["device"]
    locked, release = threading.Event(), threading.Event()
    failures = []

    def hold_the_fleet():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                services._lock_devices_in_order(cursor, [device.pk])
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_fleet)
    holder.start()
    assert locked.wait(10)
    try:
        # when a report of the locked device is stored meanwhile (its check waits 2 s at most)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '2s'")
            answers = power_events_record(
                reports=[(device.pk, device.site_id, "lost", timezone.now())]
            )
    except Exception as exc:  # lock_not_available: the check waited for the batch
        failures.append(exc)
    finally:
        release.set()
        holder.join()

    # then it was stored at once
    assert failures == []
    assert answers == [None]


@pytest.mark.django_db(transaction=True)
def test_batches_of_sent_marks_and_of_results_over_the_same_commands_never_deadlock(alice_home):
    """A process's two batch writers run in threads of their own over the same commands (a
    device answers as soon as its command arrives), each listing them in its own order."""
    device = alice_home["device"]
    expires = timezone.now() + timedelta(minutes=5)
    failures = []

    def run(work, **kwargs):
        try:
            work(**kwargs)
        except Exception as exc:  # a deadlock is an OperationalError
            failures.append(exc)
        finally:
            connections.close_all()

    for _ in range(5):
        commands = Command.objects.bulk_create(
            [Command(device=device, name="ping", expires_at=expires) for _ in range(300)]
        )
        ids = [str(c.id) for c in commands]
        results = [(i, device.pk, "done", "") for i in reversed(ids)]
        threads = [
            threading.Thread(target=run, args=(services.commands_mark_sent,),
                             kwargs={"command_ids": ids}),
            threading.Thread(target=run, args=(services.commands_complete,),
                             kwargs={"results": results}),
        ]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert failures == []
    assert set(Command.objects.values_list("status", flat=True)) == {"done"}
