"""The portal's VEN against a real OpenLEADR VTN on a local port (tests/.../vtn.py): events the
VTN creates become our events with invitations, `curtail` reaches the homes' device sockets at
the start, a cancel there restores them, an opt-out mid-event reaches the VTN, modifications
and implied cancellations change ours, reports arrive, and a VEN killed mid-event and started
again keeps every mapping (no second event, no second curtail).

The VEN runs as the command runs it (`ven.run_connection`) in the test's event loop, except in
the restart test, where `manage.py run_openadr_ven` is a real process killed with SIGKILL.
Celery runs eagerly (a start's curtail goes out as soon as the event turns active); the event's
start is reached by the beat sweep (`events_transition_due`) called when the clock passes it."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from openleadr import OpenADRServer, objects

from django.conf import settings
from django.db import connection as db_connection
from django.utils import timezone

from demand_response import services
from demand_response.models import (
    DispatchedCommand,
    DispatchKind,
    EventStatus,
    InvitationStatus,
    VenState,
    VtnConnection,
    VtnEvent,
    VtnMessage,
)
from demand_response.openadr import services as ven_services
from demand_response.openadr import ven
from devices.models import Sensor
from telemetry.services import readings_insert
from tests.demand_response.openadr.vtn import Vtn
from tests.devices.test_consumers import (  # noqa: F401 (an autouse fixture)
    REDIS_PATTERNS,
    close_sync_thread_connections,
    device_socket,
    settle,
)
from tests.e2e.servers import BASE_DIR, database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clean_redis")]

PORTS = range(8210, 8250)  # this worktree's range
WAIT_S = 15


def _port() -> int:
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 8210-8249")


@pytest_asyncio.fixture
async def vtn():
    server = Vtn(port=_port())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def vtn_connection(program, alice_home, bob_home):
    def make(url: str) -> VtnConnection:
        return VtnConnection.objects.create(
            vtn_url=url, ven_name="portal-test", poll_interval_s=1, program=program
        )

    return make


@pytest_asyncio.fixture
async def running_ven(vtn, vtn_connection, eager_celery):
    """The connection's VEN, running in this loop until the test ends."""
    connection = await database_sync_to_async(vtn_connection)(vtn.url)
    stop = asyncio.Event()
    task = asyncio.create_task(ven.run_connection(connection.pk, stop))
    yield connection
    stop.set()
    await asyncio.wait_for(task, timeout=10)


async def until(what: str, check, timeout: float = WAIT_S):
    """Wait for `check()` (sync, run in a thread for the ORM) to be truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await database_sync_to_async(check)()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _mapped(connection, event_id):
    return (
        VtnEvent.objects.select_related("event")
        .filter(connection=connection, vtn_event_id=event_id)
        .first()
    )


async def _start_when_due(event) -> None:
    """The beat sweep, run once the clock has passed the event's start."""
    await asyncio.sleep(max(0.0, (event.start - timezone.now()).total_seconds()) + 0.1)
    await database_sync_to_async(services.events_transition_due)(now=timezone.now())


def _auto_accept(*homes):
    for home in homes:
        services.site_auto_response_set(site_id=home["site"].pk, mode="accept_all")


@pytest.mark.asyncio
async def test_a_vtn_event_invites_curtails_at_its_start_and_a_cancel_restores(
    vtn, running_ven, alice_home, bob_home
):
    await database_sync_to_async(_auto_accept)(alice_home)  # Bob answers himself (pending)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    vtn.add_event("ev-1", start=start, duration=timedelta(minutes=30), level=2,
                  startafter=timedelta(seconds=3))  # fmt: skip

    mapped = await until("the event mapped", lambda: _mapped(running_ven, "ev-1"))
    event = mapped.event
    assert (event.start, event.end) == (start, start + timedelta(minutes=30))
    assert (event.signal_type, event.signal_value, event.randomization_s) == ("level", 2, 3)
    assert event.program_id == running_ven.program_id
    invitations = await database_sync_to_async(
        lambda: dict(event.invitations.values_list("site_id", "status"))
    )()
    assert invitations == {
        alice_home["site"].pk: InvitationStatus.OPTED_IN,
        bob_home["site"].pk: InvitationStatus.PENDING,
    }
    await until("the VTN's answer", lambda: ("ev-1", "optIn") in vtn.answers)

    async with device_socket(alice_home["token"]) as pi, device_socket(bob_home["token"]) as bobs:
        await settle(pi)
        await settle(bobs)
        await _start_when_due(event)
        curtail = await pi.receive_json_from(timeout=5)
        assert (curtail["name"], curtail["args"]["event"], curtail["args"]["level"]) == (
            "curtail",
            event.pk,
            2,
        )
        await pi.send_json_to({"type": "command_result", "id": curtail["id"], "status": "done"})
        await settle(pi)

        vtn.cancel("ev-1")
        restore = await pi.receive_json_from(timeout=WAIT_S)
        assert (restore["name"], restore["args"]) == ("restore", {"event": event.pk})
        assert await bobs.receive_nothing(timeout=0.2)  # Bob never opted in

    await event.arefresh_from_db()
    assert event.status == EventStatus.CANCELLED
    mapped = await database_sync_to_async(_mapped)(running_ven, "ev-1")
    assert (mapped.modification_number, mapped.vtn_status) == (1, "cancelled")
    connection = await VtnConnection.objects.aget(pk=running_ven.pk)
    assert connection.state == VenState.REGISTERED and connection.ven_id == "ven-under-test"
    assert timezone.now() - connection.last_poll_at < timedelta(seconds=5)


@pytest.mark.asyncio
async def test_an_opt_out_mid_event_restores_the_home_and_reaches_the_vtn(
    vtn, running_ven, alice_home
):
    await database_sync_to_async(_auto_accept)(alice_home)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    vtn.add_event("ev-2", start=start, duration=timedelta(minutes=30), level=1)
    mapped = await until("the event mapped", lambda: _mapped(running_ven, "ev-2"))
    await until("the VTN's answer", lambda: ("ev-2", "optIn") in vtn.answers)

    async with device_socket(alice_home["token"]) as pi:
        await settle(pi)
        await _start_when_due(mapped.event)
        curtail = await pi.receive_json_from(timeout=5)
        assert curtail["name"] == "curtail"
        invitation = await mapped.event.invitations.aget(site=alice_home["site"])
        await database_sync_to_async(services.invitation_respond)(
            invitation_id=invitation.pk, response="opt_out", by="resident"
        )
        restore = await pi.receive_json_from(timeout=5)
        assert restore["name"] == "restore"

    opt = await until("the oadrCreateOpt", lambda: vtn.opts)
    assert (opt[0]["opt_type"], opt[0]["event_id"]) == ("optOut", "ev-2")
    assert opt[0]["opt_reason"] == "notParticipating"
    await until("the changed answer", lambda: ("ev-2", "optOut") in vtn.answers)
    kinds = await database_sync_to_async(
        lambda: list(
            VtnMessage.objects.filter(connection=running_ven, vtn_event__vtn_event_id="ev-2")
            .order_by("sent_at", "id")
            .values_list("kind", "opt_type", "ok")
        )
    )()
    assert kinds == [
        ("created_event", "optIn", True),
        ("create_opt", "optOut", True),
        ("created_event", "optOut", True),
    ]


@pytest.mark.asyncio
async def test_modifications_update_and_an_implied_cancel_cancels(
    vtn, running_ven, alice_home, bob_home
):
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    vtn.add_event("ev-3", start=start, duration=timedelta(minutes=30), level=1)
    vtn.add_event("ev-4", start=start, duration=timedelta(minutes=30), level=None, kw=4.5,
                  targets=[objects.Target(resource_id="unmapped-resource")])  # fmt: skip
    await until(
        "both mapped", lambda: _mapped(running_ven, "ev-3") and _mapped(running_ven, "ev-4")
    )
    kw_event = (await database_sync_to_async(_mapped)(running_ven, "ev-4")).event
    assert (kw_event.signal_type, kw_event.signal_value) == ("target_kw", 4.5)
    sites = await database_sync_to_async(
        lambda: set(kw_event.invitations.values_list("site_id", flat=True))
    )()
    assert sites == {alice_home["site"].pk, bob_home["site"].pk}  # unmapped: all eligible

    vtn.modify("ev-3", duration=timedelta(minutes=45), level=3)
    mapped = await until(
        "the modification",
        lambda: (m := _mapped(running_ven, "ev-3")) and m.modification_number == 1 and m,
    )
    assert (mapped.event.end, mapped.event.signal_value) == (start + timedelta(minutes=45), 3)

    vtn.drop("ev-3")  # left out of the next distribution: implied cancel
    await until(
        "the implied cancel",
        lambda: _mapped(running_ven, "ev-3").event.status == EventStatus.CANCELLED,
    )
    kw_event = (await database_sync_to_async(_mapped)(running_ven, "ev-4")).event
    assert kw_event.status == EventStatus.SCHEDULED  # still in the distribution
    vtn.drop("ev-4")  # an empty distribution cancels the rest
    await until(
        "the last implied cancel",
        lambda: _mapped(running_ven, "ev-4").event.status == EventStatus.CANCELLED,
    )


@pytest.mark.asyncio
async def test_an_event_gone_from_the_vtns_list_is_cancelled_though_no_poll_says_so(
    vtn, running_ven, monkeypatch
):
    monkeypatch.setattr(ven, "RECONCILE_EVERY_S", 1.0)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    vtn.add_event("ev-7", start=start, duration=timedelta(minutes=30))
    await until("the event mapped", lambda: _mapped(running_ven, "ev-7"))
    vtn.drop("ev-7", announce=False)  # polls answer "nothing new"; oadrRequestEvent: nothing
    await until(
        "the implied cancel",
        lambda: _mapped(running_ven, "ev-7").event.status == EventStatus.CANCELLED,
    )


@pytest.mark.asyncio
async def test_reports_of_the_fleets_power_and_status_arrive_at_the_vtn(
    vtn, running_ven, alice_home, bob_home
):
    def readings():
        now = datetime.now(UTC)
        us = int(now.timestamp() * 1_000_000) - 5_000_000
        sensors = [
            Sensor.objects.get(device=alice_home["device"], key="power_w").pk,
            Sensor.objects.get(device=bob_home["device"], key="power_w").pk,
        ]
        readings_insert(sensor_ids=sensors, times_us=[us, us], values=[512.5, 700.0])

    await database_sync_to_async(readings)()
    await until("usage reports", lambda: any(m == "RealPower" for m, *_ in vtn.reports))
    await until("status reports", lambda: any(m == "Status" for m, *_ in vtn.reports))
    usage = [value for name, _, value in vtn.reports if name == "RealPower"]
    assert usage[-1] == pytest.approx(1212.5)  # both homes, no event under way
    assert ("RealPower", "W", "none") in vtn.offered
    status = [value for name, _, value in vtn.reports if name == "Status"]
    assert status[-1] == 0  # neither Pi is connected
    logged = await VtnMessage.objects.filter(
        connection=running_ven, kind="report", report_name="TELEMETRY_USAGE"
    ).acount()
    assert logged >= 1


def _ven_process(connection_id: int, log) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(db_connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SETTINGS_MODULE": "energy_portal.settings",
    }
    return subprocess.Popen(
        [sys.executable, str(BASE_DIR / "manage.py"), "run_openadr_ven",
         "--connection", str(connection_id)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


async def _end(process: subprocess.Popen, signum: int) -> None:
    """Signal the process's group and wait for it without blocking the loop (the VTN runs in
    it: the VEN's last requests must be answered)."""
    os.killpg(process.pid, signum)
    deadline = time.monotonic() + 15
    while process.poll() is None:
        assert time.monotonic() < deadline, "the VEN process did not stop"
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_a_ven_killed_and_restarted_mid_event_keeps_every_mapping(
    vtn, vtn_connection, alice_home, eager_celery, tmp_path
):
    log = (tmp_path / "ven.log").open("w")  # a file, not a pipe: nothing blocks the VEN
    connection = await database_sync_to_async(vtn_connection)(vtn.url)
    await database_sync_to_async(_auto_accept)(alice_home)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    vtn.add_event("ev-5", start=start, duration=timedelta(minutes=30), level=2)
    vtn.add_event("ev-6", start=start + timedelta(hours=2), duration=timedelta(minutes=30))
    process = _ven_process(connection.pk, log)
    try:
        await until(
            "both mapped", lambda: _mapped(connection, "ev-6") and _mapped(connection, "ev-5")
        )
        mapped = await database_sync_to_async(_mapped)(connection, "ev-5")
        await _start_when_due(mapped.event)  # the event is under way
        curtailed = await DispatchedCommand.objects.filter(kind=DispatchKind.CURTAIL).acount()
        assert curtailed == 1
        await _end(process, signal.SIGKILL)

        vtn.modify("ev-5", duration=timedelta(minutes=40))  # while the VEN is down
        restarted_at = timezone.now()
        process = _ven_process(connection.pk, log)
        await until(
            "the modification after the restart",
            lambda: _mapped(connection, "ev-5").modification_number == 1,
        )
        await until(
            "a poll after the restart",
            lambda: VtnConnection.objects.get(pk=connection.pk).last_poll_at > restarted_at,
        )
    finally:
        if process.poll() is None:
            await _end(process, signal.SIGTERM)
        log.close()
    assert process.returncode == 0  # SIGTERM stops it cleanly
    assert vtn.registrations == 2
    mappings = await database_sync_to_async(
        lambda: sorted(
            VtnEvent.objects.filter(connection=connection).values_list(
                "vtn_event_id", "event__status", "modification_number"
            )
        )
    )()
    assert mappings == [("ev-5", "active", 1), ("ev-6", "scheduled", 0)]
    ours = await database_sync_to_async(
        lambda: VtnEvent.objects.get(connection=connection, vtn_event_id="ev-5").event
    )()
    assert ours.end == start + timedelta(minutes=40)
    # one event each, one curtail: nothing doubled by the restart
    events = await database_sync_to_async(lambda: connection.program.events.count())()
    assert events == 2
    assert await DispatchedCommand.objects.filter(kind=DispatchKind.CURTAIL).acount() == 1


@pytest.mark.asyncio
async def test_against_openleadrs_own_event_queue_a_cancel_restores_and_is_confirmed(
    vtn_connection, alice_home, eager_celery
):
    """OpenLEADR's VTN as its documentation runs it: `add_event` with an opt callback and
    `cancel_event`, its own queue and polling (no handlers of ours but registration)."""
    server = OpenADRServer(
        vtn_id="QUEUE-VTN",
        http_host="127.0.0.1",
        http_port=_port(),
        requested_poll_freq=timedelta(seconds=1),
        show_fingerprint=False,
    )
    server.add_handler("on_create_party_registration", lambda info: ("ven-q", "reg-q"))
    await server.run()
    url = f"http://127.0.0.1:{server.http_port}/OpenADR2/Simple/2.0b"
    connection = await database_sync_to_async(vtn_connection)(url)
    await database_sync_to_async(_auto_accept)(alice_home)
    stop = asyncio.Event()
    task = asyncio.create_task(ven.run_connection(connection.pk, stop))
    answers = []
    try:
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        server.add_event(
            ven_id="ven-q", signal_name="SIMPLE", signal_type="level", event_id="q-1",
            intervals=[{"dtstart": start, "duration": timedelta(minutes=20), "signal_payload": 3}],
            callback=lambda ven_id, event_id, opt_type: answers.append((event_id, opt_type)),
        )  # fmt: skip
        mapped = await until("the event mapped", lambda: _mapped(connection, "q-1"))
        assert (mapped.event.signal_value, mapped.event.end) == (3, start + timedelta(minutes=20))
        await until("the opt callback", lambda: answers == [("q-1", "optIn")])
        async with device_socket(alice_home["token"]) as pi:
            await settle(pi)
            await _start_when_due(mapped.event)
            assert (await pi.receive_json_from(timeout=5))["name"] == "curtail"
            server.cancel_event("ven-q", "q-1")
            assert (await pi.receive_json_from(timeout=WAIT_S))["name"] == "restore"
        # the VEN confirmed the cancellation: the VTN dropped the event from its queue
        await until("the cancellation confirmed", lambda: server.events["ven-q"] == [])
        await mapped.event.arefresh_from_db()
        assert mapped.event.status == EventStatus.CANCELLED
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await server.stop()


@pytest.mark.asyncio
async def test_an_unreachable_vtn_shows_as_failed_and_is_retried_until_it_answers(
    vtn_connection, eager_celery
):
    port = _port()  # nothing listens there yet
    connection = await database_sync_to_async(vtn_connection)(
        f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b"
    )
    stop = asyncio.Event()
    task = asyncio.create_task(ven.run_connection(connection.pk, stop))
    server = Vtn(port=port)
    try:
        failed = await until(
            "the failed state",
            lambda: (
                (c := VtnConnection.objects.get(pk=connection.pk)).state == VenState.FAILED
                and "retrying" in c.state_detail
                and c
            ),
        )
        assert failed.last_poll_at is None
        await server.start()
        await until(
            "the registration on a retry",
            lambda: VtnConnection.objects.get(pk=connection.pk).state == VenState.REGISTERED,
        )
        assert server.registrations == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        if hasattr(server.server, "app_runner"):  # it was started
            await server.stop()
    stopped = await VtnConnection.objects.aget(pk=connection.pk)
    assert stopped.state == VenState.STOPPED


@pytest.mark.asyncio
async def test_an_event_that_failed_to_be_taken_is_asked_for_again_and_others_keep_their_answer(
    vtn, running_ven, alice_home, monkeypatch
):
    await database_sync_to_async(_auto_accept)(alice_home)
    real = ven_services.vtn_event_receive
    failures = []

    def flaky(*, connection_id, event, **kw):
        if event["event_descriptor"]["event_id"] == "ev-9" and not failures:
            failures.append(1)
            raise ConnectionError("the database went away")  # once
        return real(connection_id=connection_id, event=event, **kw)

    monkeypatch.setattr(ven_services, "vtn_event_receive", flaky)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    vtn.add_event("ev-8", start=start, duration=timedelta(minutes=30))
    vtn.add_event("ev-9", start=start, duration=timedelta(minutes=30))
    await until(
        "both mapped", lambda: _mapped(running_ven, "ev-8") and _mapped(running_ven, "ev-9")
    )
    await until("ev-9 answered again", lambda: ("ev-9", "optIn") in vtn.answers)
    assert failures == [1]
    assert ("ev-8", "optIn") in vtn.answers and ("ev-8", "optOut") not in vtn.answers
    assert ("ev-9", "optOut") in vtn.answers  # the first, failed, answer


@pytest.mark.asyncio
async def test_a_disabled_connection_stops_its_ven(vtn, running_ven):
    await until(
        "registered",
        lambda: VtnConnection.objects.get(pk=running_ven.pk).state == VenState.REGISTERED,
    )

    def disable():
        connection = VtnConnection.objects.get(pk=running_ven.pk)
        connection.enabled = False
        connection.save()

    await database_sync_to_async(disable)()
    stopped = await until(
        "the stop",
        lambda: (c := VtnConnection.objects.get(pk=running_ven.pk)).state == VenState.STOPPED and c,
    )
    assert stopped.state_detail == "Disabled."
