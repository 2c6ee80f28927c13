"""A demand-response event end to end: the reference agent, as its own process on the simulator
with relay commands, against a real portal server. The event's curtail reaches it through the
socket, its flexible load drops and its relay command runs; the restore brings both back; each
command's result is recorded."""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from django.conf import settings
from django.db import connection
from django.utils import timezone

from demand_response import services
from demand_response.models import DispatchedCommand, Program
from devices.models import CommandStatus
from energy_portal.redis_client import sync_client
from telemetry.services import INGEST_STREAM
from tests.e2e import servers

pytestmark = pytest.mark.django_db(transaction=True)
AGENT = servers.BASE_DIR / "pi_agent" / "energy_pi_agent.py"


def wait_for(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return found


def power_readings(sensor_id: int) -> list[tuple[datetime, float]]:
    """(instant, W) of the power sensor's readings in the ingest stream, oldest first."""
    rows = []
    for _id, fields in sync_client().xrange(INGEST_STREAM):
        for sensor, us, value in json.loads(fields[b"rows"]):
            if sensor == sensor_id:
                rows.append((datetime.fromtimestamp(us / 1_000_000, UTC), value))
    return sorted(rows)


def done_at(kind: str, event_id: int) -> datetime:
    """When the agent's result for the event's command of this kind reached the portal."""

    def finished():
        sent = DispatchedCommand.objects.filter(event_id=event_id, kind=kind).first()
        command = sent and sent.command
        return command if command and command.status == CommandStatus.DONE else None

    return wait_for(finished, f"the agent's {kind} result").completed_at


def test_a_curtailed_agent_sheds_its_flexible_load_and_runs_its_relay_until_restored(
    alice_home, tmp_path
):
    # given Alice's Pi opted in to a program's level-3 event that has just started
    site, device = alice_home["site"], alice_home["device"]
    power_id = device.sensors.get(key="power_w").pk
    services.site_auto_response_set(site_id=site.pk, mode="accept_all")
    program = Program.objects.create(
        name="Peaks", reward_per_kwh=Decimal("0.3"), currency="EUR",
        notification_lead_time=timedelta(0),
    )  # fmt: skip
    program.eligible_sites.add(site)
    start = timezone.now() + timedelta(seconds=1)
    event = services.event_create(
        program_id=program.pk, start=start, end=start + timedelta(minutes=10),
        signal_type="level", signal_value=Decimal(3), target_sites=[site.pk],
    )  # fmt: skip
    sync_client().delete(INGEST_STREAM)
    relay_log = tmp_path / "relay.log"
    relay = f'echo "$EP_EVENT $EP_LEVEL $EP_SHED" >> {relay_log}'

    with tempfile.TemporaryDirectory(prefix="ep-dr-") as work:
        server = servers.spawn(
            database_url=servers.database_url(connection.settings_dict),
            redis_url=settings.REDIS_URL,
            log_dir=Path(work),
        )
        agent = None
        try:
            servers.wait_until_answering(server)
            with (Path(work) / "agent.log").open("wb") as out:
                agent = subprocess.Popen(
                    [sys.executable, str(AGENT), "--url", f"{server.ws}/ws/devices/",
                     "--device", device.uid, "--source", "simulator", "--seed", "11",
                     "--interval", "0.1", "--queue", str(Path(work) / "queue.sqlite3"),
                     "--on-curtail", f"{relay} # curtail", "--on-restore", f"{relay} # restore"],
                    env={**os.environ, "PI_AGENT_TOKEN": alice_home["token"]},
                    stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            wait_for(lambda: len(power_readings(power_id)) >= 30, "readings before the event")

            # when the event starts (as its worker would) and, a while later, ends
            time.sleep(max(0.0, (start - timezone.now()).total_seconds()))
            services.event_transition(event_id=event.pk, now=timezone.now())
            services.event_sites_curtail(event_id=event.pk, site_ids=[site.pk])
            curtailed_at = done_at("curtail", event.pk)
            wait_for(
                lambda: sum(t > curtailed_at for t, _ in power_readings(power_id)) >= 40,
                "readings while curtailed",
            )
            services.event_cancel(event_id=event.pk)
            services.event_restore(event_id=event.pk)
            restored_at = done_at("restore", event.pk)
            wait_for(
                lambda: sum(t > restored_at for t, _ in power_readings(power_id)) >= 30,
                "readings after the restore",
            )
        finally:
            if agent is not None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=10)
            servers.stop(server)
            log = (Path(work) / "agent.log").read_text(errors="replace")

    # then the load dropped by the heat pump's draw while curtailed and came back after
    readings = power_readings(power_id)
    sync_client().delete(INGEST_STREAM)
    margin = timedelta(milliseconds=300)  # a reading is taken at most one tick after a change
    before = [w for t, w in readings if t < curtailed_at - margin * 2]
    during = [w for t, w in readings if curtailed_at + margin < t < restored_at - margin * 3]
    after = [w for t, w in readings if t > restored_at + margin]
    assert min(len(before), len(during), len(after)) >= 10, (before, during, after, log)
    normal, shed, back = (statistics.median(ws) for ws in (before, during, after))
    assert shed < normal - 140, (normal, shed, back, log)  # the heat pump draws 150-900 W
    assert back > shed + 140, (normal, shed, back, log)
    assert abs(back - normal) < 0.1 * normal
    # the relay was told the event, the level and the share shed, then restored
    assert relay_log.read_text().splitlines() == [f"{event.pk} 3 1.0000", f"{event.pk} 0 0.0000"]
