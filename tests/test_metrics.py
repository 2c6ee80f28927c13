"""`GET /metrics`: Prometheus figures of every portal process, for whoever may read them.

Two real servers share one metrics folder, as the processes of `make run` or of compose do: what
happens on one is read through the other. The counters are read from the scrape's text, as
Prometheus reads it.
"""

import asyncio
import http.client
import ipaddress
import json
import math
import time
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect

from django.conf import settings
from django.db import connection

from devices import services
from energy_portal import metrics_dir as metrics_dir_module
from energy_portal.health import BEAT_KEY
from energy_portal.metrics import DEVICE_FRAMES, Tally, metrics_allowed
from energy_portal.redis_client import sync_client
from telemetry.services import INGEST_STREAM
from tests.devices.test_consumers import (  # noqa: F401 (fixtures used by name)
    clean_redis,
    fast_passwords,
    live_communicator,
    recent,
    session_cookie,
    telemetry,
)
from tests.e2e import servers

TOKEN = "scrape-token-for-tests"
# An allow-list without this machine's loopback: only the token lets the test read the metrics.
ALLOW_ELSEWHERE = "192.0.2.0/24"


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prometheus-multiproc")


def spawn_sharing(metrics_dir: Path, log_dir: Path) -> servers.Server:
    """A one-process server writing its metrics to `metrics_dir`, readable only with TOKEN."""
    return servers.spawn(
        database_url=servers.database_url(connection.settings_dict),
        redis_url=settings.REDIS_URL,
        log_dir=log_dir,
        extra_env={
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "METRICS_TOKEN": TOKEN,
            "METRICS_ALLOW_IPS": ALLOW_ELSEWHERE,
        },
    )


def pi_socket(server: servers.Server, token: str):
    bearer = {"Authorization": f"Bearer {token}"}
    return sync_connect(f"{server.ws}/ws/devices/", additional_headers=bearer, close_timeout=1)


@pytest.fixture(scope="module")
def portals(django_db_setup, metrics_dir, tmp_path_factory):
    """Two servers sharing one metrics folder."""
    log_dir = tmp_path_factory.mktemp("metrics-servers")
    started = [spawn_sharing(metrics_dir, log_dir) for _ in range(2)]
    try:
        for server in started:
            servers.wait_until_answering(server)
        yield started
    finally:
        for server in started:
            servers.stop(server)


@pytest.fixture
def no_beat_yet():
    """Beat has never run, and its mark made by a test goes with it."""
    sync_client().delete(BEAT_KEY)
    yield
    sync_client().delete(BEAT_KEY)


def get(server: servers.Server, path: str, headers: dict | None = None) -> tuple[int, str]:
    client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        client.request("GET", path, headers=headers or {})
        response = client.getresponse()
        return response.status, response.read().decode()
    finally:
        client.close()


def scrape(server: servers.Server) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, by name and labels."""
    status, body = get(server, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(check, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# Who may read them


@pytest.mark.django_db(transaction=True)
def test_metrics_are_refused_without_the_token_from_an_address_not_allowed(portals):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Token {TOKEN}"}):
        status, body = get(portals[0], "/metrics", headers)

        assert status == 403
        assert "METRICS_TOKEN" in body
        assert "energy_portal_" not in body


@pytest.mark.django_db(transaction=True)
def test_metrics_are_served_with_the_token(portals):
    status, body = get(portals[0], "/metrics", {"Authorization": f"Bearer {TOKEN}"})

    assert status == 200
    assert "# TYPE energy_portal_http_requests_total counter" in body


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("127.0.0.1", True), ("::1", True), ("10.1.2.3", True), ("10.2.0.1", False), ("x", False)],
)
def test_the_allow_list_takes_addresses_and_networks(address, allowed):
    allow = [ipaddress.ip_network(n) for n in ("127.0.0.1/32", "::1/128", "10.1.0.0/16")]

    assert metrics_allowed(authorization="", address=address, token="", allow=allow) is allowed


def test_an_empty_token_setting_lets_no_token_in():
    assert not metrics_allowed(authorization="Bearer ", address="10.9.9.9", token="", allow=[])
    assert metrics_allowed(authorization="Bearer t", address="10.9.9.9", token="t", allow=[])


# ---------------------------------------------------------------------------------------------
# What they say, gathered across processes


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_frames_readings_sockets_and_requests_of_both_servers_add_up(portals, alice_home):
    # given: the counters as they stand (other tests of the module moved some)
    first, second = portals
    before = scrape(second)
    ts, _ = recent()

    # when: a Pi talks to the first server, and each server answers a health request
    async with connect(
        f"{first.ws}/ws/devices/",
        additional_headers={"Authorization": f"Bearer {alice_home['token']}"},
    ) as pi:
        await pi.send(json.dumps(telemetry("m1", ts, power_w=512.5, voltage_v=230.1)))
        assert json.loads(await pi.recv())["type"] == "ack"
        await pi.send(json.dumps({"type": "heartbeat"}))
        await pi.send("not json")
        assert json.loads(await pi.recv())["code"] == "invalid_json"
        await pi.send(json.dumps({"type": "gossip"}))
        assert json.loads(await pi.recv())["code"] == "unknown_type"
        open_while_connected = scrape(second)
    for server in portals:
        assert get(server, "/api/v1/health/")[0] == 200

    # then: the second server reports what happened on the first (the sockets' counts within
    # a second: energy_portal.metrics.Tally)
    frames = "energy_portal_device_frames_total"
    wait_for(
        lambda: (
            value(scrape(second), frames, type="unknown") > value(before, frames, type="unknown")
        )
    )
    after = scrape(second)

    def moved(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(frames, type="telemetry") == 1
    assert moved(frames, type="heartbeat") == 1
    assert moved(frames, type="error") == 1
    assert moved(frames, type="unknown") == 1
    readings = "energy_portal_readings_total"
    assert moved(readings, source="socket", outcome="accepted") == 2
    health = {"method": "GET", "route": "/api/v1/health/", "status": "2xx"}
    assert moved("energy_portal_http_requests_total", **health) == 2
    assert moved("energy_portal_http_request_duration_seconds_count", **health) == 2
    sockets = "energy_portal_sockets_open"
    assert value(open_while_connected, sockets, kind="device") == 1
    wait_for(lambda: value(scrape(second), sockets, kind="device") == 0)


@pytest.mark.django_db(transaction=True)
def test_unrouted_requests_share_one_series_and_routes_are_patterns(portals, alice_home):
    before = scrape(portals[0])

    for path in ("/no-such-page/1", "/no-such-page/2", "/no-such-page/3"):
        assert get(portals[0], path)[0] == 404

    after = scrape(portals[0])
    unmatched = {"method": "GET", "route": "unmatched", "status": "4xx"}
    name = "energy_portal_http_requests_total"
    assert value(after, name, **unmatched) - value(before, name, **unmatched) == 3
    assert not any("no-such-page" in str(labels) for _, labels in after)


@pytest.mark.django_db(transaction=True)
def test_the_ingest_stream_and_beat_freshness_are_read_from_redis_at_scrape_time(
    portals, no_beat_yet
):
    # given: three entries waiting (no writer runs), a writers' group that has read one of
    # them, and beat's last run 30 s ago
    client = sync_client()
    for n in range(3):
        client.xadd(INGEST_STREAM, {"src": "test", "rows": f"[[1,{n},1.0]]"})
    client.xgroup_create(INGEST_STREAM, "writers", id="0")
    client.xreadgroup("writers", "w1", {INGEST_STREAM: ">"}, count=1)
    client.set(BEAT_KEY, f"{time.time() - 30:.3f}")

    # when
    samples = scrape(portals[1])

    # then
    assert value(samples, "energy_portal_redis_up") == 1
    assert value(samples, "energy_portal_ingest_stream_length") == 3
    assert value(samples, "energy_portal_ingest_group_lag", group="writers") == 2
    assert value(samples, "energy_portal_ingest_group_pending", group="writers") == 1
    assert value(samples, "energy_portal_ingest_oldest_pending_age_seconds", group="writers") >= 0
    assert 29 <= value(samples, "energy_portal_beat_last_run_age_seconds") < 60


@pytest.mark.django_db(transaction=True)
def test_beat_freshness_is_not_a_number_before_beat_ever_ran(portals, no_beat_yet):
    samples = scrape(portals[0])

    assert math.isnan(value(samples, "energy_portal_beat_last_run_age_seconds"))
    assert value(samples, "energy_portal_ingest_stream_length") == 0


@pytest.mark.django_db(transaction=True)
def test_a_stopped_server_leaves_no_live_gauges_behind(metrics_dir, alice_home, tmp_path):
    # given: a third server writing to the same folder, which has had a Pi's socket
    server = spawn_sharing(metrics_dir, tmp_path)
    pid = server.process.pid
    try:
        servers.wait_until_answering(server)
        with pi_socket(server, alice_home["token"]) as pi:
            pi.send(json.dumps({"type": "heartbeat"}))
        wait_for(lambda: value(scrape(server), "energy_portal_sockets_open", kind="device") == 0)
        assert list(metrics_dir.glob(f"gauge_livesum_*-{pid}.db"))
    finally:
        servers.stop(server)

    # then: its live gauges went with it (counters stay: what it did still counts)
    assert not list(metrics_dir.glob(f"gauge_livesum_*-{pid}.db")), server.output()
    assert list(metrics_dir.glob(f"counter_*-{pid}.db"))


@pytest.mark.django_db(transaction=True)
def test_a_killed_server_s_open_sockets_are_forgotten_at_the_next_scrape(
    portals, metrics_dir, alice_home, tmp_path
):
    # given: a third server killed while a Pi's socket is open on it
    server = spawn_sharing(metrics_dir, tmp_path)
    pid = server.process.pid
    try:
        servers.wait_until_answering(server)
        with pi_socket(server, alice_home["token"]):
            wait_for(lambda: value(scrape(portals[0]), "energy_portal_sockets_open", kind="device"))
            server.process.kill()
    finally:
        server.process.kill()
        server.process.wait()
    assert list(metrics_dir.glob(f"gauge_livesum_*-{pid}.db"))

    # when: another server is scraped
    samples = scrape(portals[0])

    # then: the dead process's sockets are no longer counted
    assert value(samples, "energy_portal_sockets_open", kind="device") == 0
    assert not list(metrics_dir.glob(f"gauge_livesum_*-{pid}.db"))


def test_the_metrics_folder_is_emptied_of_metrics_files_but_kept(tmp_path, monkeypatch):
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_123.db").write_bytes(b"old")
    (folder / "gauge_livesum_123.db").write_bytes(b"old")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))

    assert metrics_dir_module.main() == 0

    assert folder.is_dir()
    assert list(folder.iterdir()) == []
    metrics_dir_module.wipe(tmp_path / "new")  # made when missing
    assert (tmp_path / "new").is_dir()


# ---------------------------------------------------------------------------------------------
# Counted where it happens (this process's own registry)


@pytest.mark.django_db(transaction=True)
def test_a_command_outcome_is_counted_once_committed(alice_home):
    device = alice_home["device"]
    name = "energy_portal_command_outcomes_total"
    before = REGISTRY.get_sample_value(name, {"status": "done"}) or 0
    command = services.command_issue(device=device, name="ping")

    services.command_complete(command_id=command.id, device_id=device.id, status="done")
    services.command_complete(command_id=command.id, device_id=device.id, status="done")

    assert REGISTRY.get_sample_value(name, {"status": "done"}) == before + 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_viewer_socket_is_counted_while_open_and_counted_out_once(alice):
    gauge = "energy_portal_sockets_open"
    before = REGISTRY.get_sample_value(gauge, {"kind": "viewer"}) or 0
    cookie = await database_sync_to_async(session_cookie)(alice)
    feed = live_communicator(cookie)

    connected, _ = await feed.connect()
    while_open = REGISTRY.get_sample_value(gauge, {"kind": "viewer"})
    await feed.disconnect()  # the consumer stops on disconnect and again as it ends

    assert connected
    assert while_open == before + 1
    assert REGISTRY.get_sample_value(gauge, {"kind": "viewer"}) == before


# ---------------------------------------------------------------------------------------------
# The sockets' tally


@pytest.mark.asyncio
async def test_the_tally_adds_its_counts_to_the_counters_at_once_after_the_first():
    frames = "energy_portal_device_frames_total"

    def counted(kind: str) -> float:
        return REGISTRY.get_sample_value(frames, {"type": kind}) or 0.0

    before = counted("telemetry"), counted("heartbeat")
    tally = Tally(flush_s=0.05)
    for _ in range(3):
        tally.add(DEVICE_FRAMES, ("telemetry",))
    tally.add(DEVICE_FRAMES, ("heartbeat",), 2)

    assert (counted("telemetry"), counted("heartbeat")) == before  # not yet: one call per series
    await asyncio.sleep(0.2)
    assert (counted("telemetry"), counted("heartbeat")) == (before[0] + 3, before[1] + 2)
    # and a count after the flush starts the next period; flushing by hand adds it at once
    tally.add(DEVICE_FRAMES, ("telemetry",))
    tally.flush()
    assert counted("telemetry") == before[0] + 4
