"""The reference Pi agent against a real portal that is killed mid-stream and restarted: every
reading the agent produced ends up in the ingest stream exactly once."""

import asyncio
import json
import tempfile
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from django.conf import settings
from django.db import connection

from devices import services
from energy_portal.redis_client import sync_client
from pi_agent.energy_pi_agent import Agent, SimulatorSource
from telemetry.services import INGEST_STREAM
from tests.e2e import servers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]
TOTAL = 300


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class FewReadings:
    """The simulator, for a fixed number of readings, so the test can wait for all of them."""

    def __init__(self, limit: int):
        self.inner = SimulatorSource(seed=7)
        self.left = limit

    def read(self, now):
        if self.left == 0:
            return None
        self.left -= 1
        return self.inner.read(now)


def _epoch_us(ts: str) -> int:
    moment = datetime.fromisoformat(ts)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


async def test_agent_survives_a_killed_portal_and_every_reading_is_buffered_once(alice_home):
    # given a device with every sensor the simulator reports, and an empty ingest stream
    device = alice_home["device"]
    await asyncio.to_thread(
        services.sensor_create, device=device, key="energy_kwh", kind="energy", unit="kWh"
    )
    sensor_ids = dict(
        await asyncio.to_thread(lambda: list(device.sensors.values_list("key", "id")))
    )
    redis = sync_client()
    redis.delete(INGEST_STREAM)
    url = servers.database_url(connection.settings_dict)
    with tempfile.TemporaryDirectory(prefix="ep-agent-") as work:
        first = servers.spawn(database_url=url, redis_url=settings.REDIS_URL, log_dir=Path(work))
        servers.wait_until_answering(first)
        agent = Agent(
            f"{first.ws}/ws/devices/",
            alice_home["token"],
            device.uid,
            FewReadings(TOTAL),
            Path(work) / "queue.sqlite3",
            interval=0.02,
            backoff_base=0.05,
            backoff_cap=0.5,
            ack_timeout=3,
        )
        run = asyncio.create_task(agent.run())
        try:
            # when the portal is killed with readings in flight, and comes back a moment later
            await _until(lambda: agent.stats.acked >= 40, 30, "the first acks")
            first.process.kill()
            first.process.wait()
            await _until(lambda: agent.queue_length() >= 30, 10, "a backlog to build up")
            second = servers.spawn(
                database_url=url, redis_url=settings.REDIS_URL, log_dir=Path(work), port=first.port
            )
            try:
                servers.wait_until_answering(second)
                await _until(
                    lambda: agent.stats.produced == TOTAL and agent.queue_length() == 0,
                    60,
                    "every reading to be acknowledged",
                )
                await agent.stop()
            finally:
                servers.stop(second)
        finally:
            if not run.done():
                await agent.stop()
            await run
            agent.close()

    # then every produced reading (not still queued) is in the stream exactly once
    in_stream: Counter = Counter()
    for _id, fields in redis.xrange(INGEST_STREAM):
        for sensor_id, us, _value in json.loads(fields[b"rows"]):
            if sensor_id in sensor_ids.values():
                in_stream[(sensor_id, us)] += 1
    redis.delete(INGEST_STREAM)
    assert agent.stats.connections >= 2, "the agent never reconnected"
    assert agent.stats.batches_sent >= 1, "the backlog was not replayed in batches"
    expected = Counter()
    for reading in agent.produced:
        for key in reading.values:
            expected[(sensor_ids[key], _epoch_us(reading.ts))] += 1
    assert len(agent.produced) == TOTAL
    assert set(in_stream) == set(expected)
    assert max(in_stream.values()) == 1
