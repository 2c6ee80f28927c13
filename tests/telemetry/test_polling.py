"""HTTP polling of iots-right.json appliances, against real HTTP servers the tests start."""

import copy
import json
import math
import socket
import time
from datetime import UTC, datetime, timedelta
from io import StringIO
from urllib.parse import urlsplit

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from devices.models import Device, Sensor, Site
from energy_portal.redis_client import sync_client
from telemetry.iots_config import IotsConfigError
from telemetry.models import PolledAppliance, PollSource
from telemetry.polling import (
    iots_import,
    lock_key,
    poll_source_run,
    poll_source_schedule,
    samples_key,
)
from telemetry.tasks import poll_source
from tests.fixtures.sample_files import SAMPLES
from tests.telemetry.appliance_servers import appliance_server
from tests.telemetry.conftest import stream_rows

# A minute boundary in the recent past: store windows of 5 and 10 s start on it.
BASE = datetime.fromtimestamp(math.floor(time.time() / 60) * 60 - 120, UTC)
BASE_US = int(BASE.timestamp()) * 1_000_000


def at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


@pytest.fixture(autouse=True)
def poll_keys():
    """Redis DB 15 is shared with other tests: only this module's keys are cleared."""
    client = sync_client()

    def clear():
        keys = list(client.scan_iter("ep:poll:*"))
        if keys:
            client.delete(*keys)

    clear()
    yield client
    clear()


@pytest.fixture
def site(db):
    return Site.objects.create(name="Casa Azul")


@pytest.fixture
def healthy():
    with appliance_server("healthy") as server:
        yield server


@pytest.fixture
def slow():
    with appliance_server("slow", delay=5.0) as server:
        yield server


@pytest.fixture
def garbage():
    with appliance_server("garbage") as server:
        yield server


@pytest.fixture
def broken():
    with appliance_server("error") as server:
        yield server


def sample_document(server) -> dict:
    """The shipped sample, its appliances moved onto `server` (same paths)."""
    document = json.loads((SAMPLES / "iots-right.json").read_bytes())
    for appliance in document["resources"]["iots"]:
        appliance["uri"] = server.url(urlsplit(appliance["uri"]).path)
    return document


def config(*appliances, monitoring_period: int = 5) -> dict:
    return {
        "app": {"monitoring": True, "dr_events_auto_accept": False},
        "resources": {"monitoring_period": monitoring_period, "iots": list(appliances)},
    }


def appliance(name, uri, values, *, store_type="avg", store_period=10, kind="hvac") -> dict:
    return {
        "name": name,
        "type": kind,
        "uri": uri,
        "values": [
            {"type": value_type, "tag": tag, "data": "DOUBLE", "unit": unit}
            for value_type, tag, unit in values
        ],
        "control": {"demandresponse": False},
        "store": {"period": store_period, "type": store_type},
    }


def polled(site, name: str) -> PolledAppliance:
    return PolledAppliance.objects.get(device__uid=f"site{site.pk}-{name}")


def rows_by_public_id(client) -> dict[str, list[tuple[int, float]]]:
    """The readings waiting in the ingest stream, as {public id: [(epoch us, value)]}."""
    names = {sensor.pk: sensor.public_id for sensor in Sensor.objects.select_related("device")}
    found: dict[str, list[tuple[int, float]]] = {}
    for sensor_id, us, value in stream_rows(client):
        found.setdefault(names[sensor_id], []).append((us, value))
    return found


# --- import -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_importing_the_sample_creates_devices_sensors_appliances_and_schedule(site, healthy):
    # when
    report = iots_import(site=site, name="main", data=json.dumps(sample_document(healthy)))
    # then
    source = report.source
    assert (source.site, source.name, source.monitoring_period_s) == (site, "main", 5)
    assert source.config == sample_document(healthy)
    prefix = f"site{site.pk}-"
    devices = {
        d.uid.removeprefix(prefix): (d.name, d.kind, d.controllable)
        for d in Device.objects.filter(site=site)
    }
    assert devices == {
        "ac1": ("AC1", "hvac", True),
        "waterheater": ("WaterHeater", "water_heater", True),
        "consumption": ("Consumption", "meter", False),
        "generation": ("Generation", "pv_inverter", False),
    }
    sensors = {
        s.public_id.removeprefix(prefix): (s.kind, s.unit)
        for s in Sensor.objects.filter(device__site=site).select_related("device")
    }
    assert sensors == {
        "ac1.power_w": ("power", "W"),
        "ac1.temperature_c": ("temperature", "°C"),
        "waterheater.power_w": ("power", "W"),
        "consumption.energy_wh": ("energy", "Wh"),
        "generation.generation_w": ("generation", "W"),
    }
    ac1 = polled(site, "ac1")
    assert (ac1.source, ac1.uri) == (source, healthy.url("/api/realtime/H_01/AC1"))
    assert (ac1.store_type, ac1.store_period_s) == ("avg", 10)
    assert ac1.values == [
        {"type": "power", "tag": "data.power", "data": "DOUBLE", "unit": "W",
         "sensor_key": "power_w"},
        {"type": "temperature", "tag": "data.room.temp", "data": "DOUBLE", "unit": "°C",
         "sensor_key": "temperature_c"},
    ]  # fmt: skip
    consumption = polled(site, "consumption")
    assert (consumption.store_type, consumption.store_period_s) == ("consumption", 15)
    assert source.schedule is not None
    assert len(report.created) == 1 + 4 + 4  # the source, 4 devices, 4 polled appliances
    # the sample's dr_events_auto_accept: true sets the site's auto-response (demand response)
    assert report.updated == ["site Casa Azul: demand-response events accepted automatically"]
    assert not report.removed


@pytest.mark.django_db
def test_importing_the_same_file_again_changes_nothing(site, healthy):
    # given
    data = json.dumps(sample_document(healthy)).encode()
    first = iots_import(site=site, name="main", data=data)
    before = {
        "devices": sorted(Device.objects.filter(site=site).values_list("pk", "uid")),
        "sensors": sorted(Sensor.objects.filter(device__site=site).values_list("pk", "key")),
        "appliances": sorted(PolledAppliance.objects.values_list("pk", "device_id", "uri")),
        "tasks": list(PeriodicTask.objects.filter(name__startswith="poll-source-").values()),
    }
    # when
    again = iots_import(site=site, name="main", data=data)
    # then
    assert again.source.pk == first.source.pk
    assert not again.changed
    assert before == {
        "devices": sorted(Device.objects.filter(site=site).values_list("pk", "uid")),
        "sensors": sorted(Sensor.objects.filter(device__site=site).values_list("pk", "key")),
        "appliances": sorted(PolledAppliance.objects.values_list("pk", "device_id", "uri")),
        "tasks": list(PeriodicTask.objects.filter(name__startswith="poll-source-").values()),
    }
    assert PollSource.objects.count() == 1


@pytest.mark.django_db
def test_reimport_updates_changes_and_stops_polling_removed_appliances_keeping_devices(
    site, healthy
):
    # given
    document = sample_document(healthy)
    iots_import(site=site, name="main", data=document)
    changed = copy.deepcopy(document)
    iots = changed["resources"]["iots"]
    iots[0]["store"]["type"] = "last"  # AC1
    iots[0]["control"]["demandresponse"] = False
    iots[1]["values"].append({"type": "voltage", "tag": "v", "data": "DOUBLE", "unit": "V"})
    del iots[3]  # Generation
    # when
    report = iots_import(site=site, name="main", data=changed)
    # then
    uid = f"site{site.pk}-"
    assert polled(site, "ac1").store_type == "last"
    assert Device.objects.get(uid=uid + "ac1").controllable is False
    assert Sensor.objects.filter(device__uid=uid + "waterheater", key="voltage_v").exists()
    assert not PolledAppliance.objects.filter(device__uid=uid + "generation").exists()
    assert Sensor.objects.filter(device__uid=uid + "generation", key="generation_w").exists()
    assert report.created == [f"sensor {uid}waterheater.voltage_v"]
    assert f"device {uid}ac1: controllable" in report.updated
    assert f"polling of {uid}ac1: store_type" in report.updated
    assert f"polling of {uid}waterheater: values" in report.updated
    assert report.removed == [
        f"stopped polling {uid}generation (its device, sensors and readings are kept)"
    ]
    # listing it again picks the same device up
    kept = Device.objects.get(uid=uid + "generation").pk
    iots_import(site=site, name="main", data=document)
    assert polled(site, "generation").device_id == kept


@pytest.mark.django_db
def test_the_invalid_sample_is_refused_with_every_problem_by_path_and_nothing_created(site):
    # when
    with pytest.raises(IotsConfigError) as refused:
        iots_import(site=site, name="main", data=(SAMPLES / "iots-right.invalid.json").read_bytes())
    # then
    assert [path for path, _ in refused.value.problems] == [
        "$.resources.monitoring_period",
        "$.resources.iots[0].values[0].tag",
        "$.resources.iots[1].store.type",
        "$.resources.iots[2].uri",
    ]
    assert not PollSource.objects.exists()
    assert not Device.objects.exists()
    assert not PeriodicTask.objects.filter(name__startswith="poll-source-").exists()


@pytest.mark.django_db
def test_appliances_that_would_share_a_device_or_sensor_are_refused_by_path(site, healthy):
    document = config(
        appliance("AC 1", healthy.url("/a"), [("power", "p", "W"), ("Power", "q", "W")]),
        appliance("ac-1", healthy.url("/b"), [("power", "p", "W")]),
    )
    with pytest.raises(IotsConfigError) as refused:
        iots_import(site=site, name="main", data=document)
    assert refused.value.problems == [
        ("$.resources.iots[0].values[1].type",
         "gives sensor key power_w, as $.resources.iots[0].values[0] does"),
        ("$.resources.iots[1].name",
         f"gives device uid site{site.pk}-ac-1, as $.resources.iots[0].name does; rename one"),
    ]  # fmt: skip
    assert not Device.objects.exists()


@pytest.mark.django_db
def test_an_appliance_polled_by_another_source_of_the_site_is_refused(site, healthy):
    document = sample_document(healthy)
    iots_import(site=site, name="main", data=document)
    with pytest.raises(IotsConfigError) as refused:
        iots_import(site=site, name="annex", data=document)
    assert [path for path, _ in refused.value.problems] == [
        f"$.resources.iots[{i}].name" for i in range(4)
    ]
    assert "already polled by source 'main'" in refused.value.problems[0][1]
    assert not PollSource.objects.filter(name="annex").exists()


@pytest.mark.django_db
def test_command_imports_a_file_for_a_site_by_id_or_name_and_prints_what_it_did(
    site, healthy, tmp_path
):
    # given
    path = tmp_path / "iots-right.json"
    path.write_text(json.dumps(sample_document(healthy)))
    out = StringIO()
    # when
    call_command("import_iots", str(path), "--site", str(site.pk), stdout=out)
    # then
    printed = out.getvalue()
    assert f"created device site{site.pk}-ac1 (hvac) with sensors power_w, temperature_c" in printed
    assert "has 4 appliance(s), polled every 5 s" in printed
    assert Device.objects.filter(site=site).count() == 4
    # again, naming the site: nothing changes
    out = StringIO()
    call_command("import_iots", str(path), "--site", "Casa Azul", "--name", "main", stdout=out)
    assert "nothing changed" in out.getvalue()
    assert "created" not in out.getvalue()


@pytest.mark.django_db
def test_command_prints_each_problem_with_its_path_and_fails(site):
    err = StringIO()
    with pytest.raises(CommandError, match="4 problem"):
        call_command(
            "import_iots", str(SAMPLES / "iots-right.invalid.json"), "--site", str(site.pk),
            stderr=err,
        )  # fmt: skip
    printed = err.getvalue().splitlines()
    assert printed == [
        "$.resources.monitoring_period: must be a positive whole number, not -1",
        "$.resources.iots[0].values[0].tag: must be a dot path into the answer such as "
        'data.power, not ""',
        '$.resources.iots[1].store.type: must be one of avg, sum, last, consumption, not "median"',
        "$.resources.iots[2].uri: is required but missing",
    ]
    assert not Device.objects.exists()


@pytest.mark.django_db
def test_command_refuses_an_unknown_site(site):
    with pytest.raises(CommandError, match="No site is named 'Nowhere'"):
        call_command("import_iots", str(SAMPLES / "iots-right.json"), "--site", "Nowhere")


# --- schedule -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_schedule_polls_the_source_every_monitoring_period_and_follows_its_state(site, healthy):
    # given
    document = sample_document(healthy)
    source = iots_import(site=site, name="main", data=document).source
    # then
    task = PeriodicTask.objects.get(name=f"poll-source-{source.pk}")
    assert source.schedule == task
    assert (task.task, json.loads(task.args), task.enabled) == (
        "telemetry.tasks.poll_source", [source.pk], True
    )  # fmt: skip
    assert (task.interval.every, task.interval.period) == (5, IntervalSchedule.SECONDS)
    assert task.expire_seconds == 5  # a run not started within its period is dropped
    assert json.loads(task.headers) == {"timelimit": [9, 4]}  # [hard, soft], soft under 5 s
    # when the source is disabled
    source.enabled = False
    source.save(update_fields=["enabled"])
    poll_source_schedule(source=source)
    # then
    task.refresh_from_db()
    assert task.enabled is False
    # when the period changes in the file
    document["resources"]["monitoring_period"] = 10
    iots_import(site=site, name="main", data=document)
    task.refresh_from_db()
    assert task.interval.every == 10
    assert PeriodicTask.objects.filter(name__startswith="poll-source-").count() == 1


# --- polling ------------------------------------------------------------------------------------


@pytest.fixture
def four_kinds(site, healthy):
    """One appliance for each store type, all on the healthy server, stored over 10 s."""
    document = config(
        appliance("AC", healthy.url("/ac"), [("power", "data.power", "W"),
                                             ("temperature", "data.room.temp", "°C")]),
        appliance("Boiler", healthy.url("/wh"), [("power", "power", "W")], store_type="sum"),
        appliance("Meter", healthy.url("/meter"), [("energy", "counters.import_wh", "Wh")],
                  store_type="consumption", kind="meter"),
        appliance("PV", healthy.url("/pv"), [("generation", "ac.p", "W")], store_type="last"),
    )  # fmt: skip
    return iots_import(site=site, name="main", data=document).source


def answer(server, ac_power, ac_temp, boiler, meter, pv):
    server.answers.update(
        {
            "/ac": {"data": {"power": ac_power, "room": {"temp": ac_temp}}},
            "/wh": {"power": boiler},
            "/meter": {"counters": {"import_wh": meter}},
            "/pv": {"ac": {"p": pv}},
        }
    )


@pytest.mark.django_db
def test_values_are_picked_and_each_ended_window_gives_one_aggregated_reading_per_value(
    site, healthy, four_kinds, ingest_stream
):
    # given two polls inside the window [BASE, BASE + 10 s)
    answer(healthy, ac_power=100, ac_temp=20, boiler=10, meter=1000, pv=350)
    poll_source_run(source_id=four_kinds.pk, now=at(1))
    answer(healthy, ac_power=300, ac_temp=22.5, boiler=15, meter=1012.5, pv=360)
    poll_source_run(source_id=four_kinds.pk, now=at(6))
    assert stream_rows(ingest_stream) == []  # the window has not ended yet
    # when a poll falls in the next window
    run = poll_source_run(source_id=four_kinds.pk, now=at(11))
    # then the first window is ingested: one reading per value, stamped at its start
    uid = f"site{site.pk}-"
    assert rows_by_public_id(ingest_stream) == {
        f"{uid}ac.power_w": [(BASE_US, 200.0)],
        f"{uid}ac.temperature_c": [(BASE_US, 21.25)],
        f"{uid}boiler.power_w": [(BASE_US, 25.0)],
        f"{uid}meter.energy_wh": [(BASE_US, 12.5)],
        f"{uid}pv.generation_w": [(BASE_US, 360.0)],
    }
    assert (run.polled, run.failed, run.readings) == (4, 0, 5)
    ac = polled(site, "ac")
    assert (ac.polls, ac.failures, ac.last_error, ac.rows_ingested) == (3, 0, "", 2)
    assert ac.last_latency_ms is not None and ac.last_latency_ms >= 0
    assert ac.last_polled_at == ac.last_success_at == at(11)
    assert healthy.requests.count("/ac") == 3


@pytest.mark.django_db
def test_a_window_is_ingested_once_however_often_the_run_repeats(
    site, healthy, four_kinds, ingest_stream, poll_keys
):
    # given a window that ended and was ingested
    answer(healthy, ac_power=100, ac_temp=20, boiler=10, meter=1000, pv=350)
    poll_source_run(source_id=four_kinds.pk, now=at(1))
    poll_source_run(source_id=four_kinds.pk, now=at(6))
    poll_source_run(source_id=four_kinds.pk, now=at(11))
    ingested = stream_rows(ingest_stream)
    assert len(ingested) == 5
    # when the run repeats for the same instant, and another one closes the window again as a
    # run that died between ingesting and forgetting the window would
    poll_source_run(source_id=four_kinds.pk, now=at(11))
    ac = polled(site, "ac")
    poll_keys.zadd(f"ep:poll:{ac.pk}:open", {str(int(BASE.timestamp())): BASE.timestamp()})
    poll_source_run(source_id=four_kinds.pk, now=at(12))
    # then nothing of that window is ingested twice
    assert stream_rows(ingest_stream) == ingested


@pytest.mark.django_db
def test_consumption_counts_the_use_between_windows_too(site, healthy, ingest_stream):
    # given a meter stored over one poll period
    document = config(
        appliance("Meter", healthy.url("/m"), [("energy", "wh", "Wh")],
                  store_type="consumption", store_period=5, kind="meter"),
    )  # fmt: skip
    source = iots_import(site=site, name="main", data=document).source
    # when the counter is read once per window
    for second, counter in [(1, 1000), (6, 1010), (11, 1025), (16, 1025.5)]:
        healthy.answers["/m"] = {"wh": counter}
        poll_source_run(source_id=source.pk, now=at(second))
    # then each window after the first gets the use since the previous window's last reading
    assert rows_by_public_id(ingest_stream) == {
        f"site{site.pk}-meter.energy_wh": [
            (BASE_US + 5_000_000, 10.0),
            (BASE_US + 10_000_000, 15.0),
        ]
    }


@pytest.mark.django_db
def test_a_slow_appliance_times_out_without_delaying_the_others(site, healthy, slow):
    # given
    healthy.answers["/fast"] = {"power": 42}
    slow.answers["/slow"] = {"power": 1}
    document = config(
        appliance("Fast", healthy.url("/fast"), [("power", "power", "W")]),
        appliance("Slow", slow.url("/slow"), [("power", "power", "W")]),
    )
    source = iots_import(site=site, name="main", data=document).source
    # when
    started = time.monotonic()
    run = poll_source_run(source_id=source.pk, now=at(1), timeout=0.5)
    took = time.monotonic() - started
    # then the run ended at about the timeout, not after the slow appliance's 5 s
    assert took < 3
    assert (run.polled, run.failed) == (2, 1)
    fast, late = polled(site, "fast"), polled(site, "slow")
    assert (fast.polls, fast.failures, fast.last_error) == (1, 0, "")
    assert fast.last_latency_ms is not None and fast.last_success_at == at(1)
    assert (late.polls, late.failures, late.consecutive_failures) == (1, 1, 1)
    assert late.last_error == f"timed out after 0.5 s waiting for {slow.url('/slow')}"
    assert late.last_latency_ms is None and late.last_success_at is None


@pytest.mark.django_db
def test_garbage_and_http_500_answers_are_counted_with_a_clear_error(
    site, garbage, broken, ingest_stream
):
    # given
    document = config(
        appliance("Junk", garbage.url("/junk"), [("power", "power", "W")]),
        appliance("Down", broken.url("/down"), [("power", "power", "W")]),
    )
    source = iots_import(site=site, name="main", data=document).source
    # when polled in two periods
    poll_source_run(source_id=source.pk, now=at(1))
    poll_source_run(source_id=source.pk, now=at(6))
    poll_source_run(source_id=source.pk, now=at(11))
    # then
    junk, down = polled(site, "junk"), polled(site, "down")
    assert (junk.polls, junk.failures, junk.consecutive_failures) == (3, 3, 3)
    start = "<html>\x00\ufffdnot json at all"  # the bytes that are not UTF-8 are replaced
    url = garbage.url("/junk")
    assert junk.last_error == f"answer from {url} is not JSON (it starts {start!r})"
    assert (down.polls, down.failures, down.consecutive_failures) == (3, 3, 3)
    assert down.last_error == f"HTTP 500 from {broken.url('/down')}"
    assert down.last_latency_ms is not None  # it did answer
    assert stream_rows(ingest_stream) == []


@pytest.mark.django_db
def test_a_missing_tag_is_named_and_the_appliance_counts_as_healthy_again_once_it_answers(
    site, healthy, poll_keys
):
    # given an answer that has the power but not the temperature
    healthy.answers["/ac"] = {"data": {"power": 500}}
    document = config(
        appliance("AC", healthy.url("/ac"), [("power", "data.power", "W"),
                                             ("temperature", "data.room.temp", "°C")]),
    )  # fmt: skip
    source = iots_import(site=site, name="main", data=document).source
    # when
    poll_source_run(source_id=source.pk, now=at(1))
    # then the failure names the tag, and the value that was there is kept
    ac = polled(site, "ac")
    assert (ac.failures, ac.consecutive_failures) == (1, 1)
    assert ac.last_error == (
        f"tag data.room.temp not found in the answer from {healthy.url('/ac')}, or not a number"
    )
    window = int(BASE.timestamp())
    assert poll_keys.lrange(samples_key(ac.pk, "power_w", window), 0, -1) == [b"500.0"]
    assert poll_keys.lrange(samples_key(ac.pk, "temperature_c", window), 0, -1) == []
    # when the answer is complete again
    healthy.answers["/ac"] = {"data": {"power": 510, "room": {"temp": 21}}}
    poll_source_run(source_id=source.pk, now=at(6))
    ac.refresh_from_db()
    assert (ac.polls, ac.failures, ac.consecutive_failures, ac.last_error) == (2, 1, 0, "")
    assert ac.last_success_at == at(6)


@pytest.mark.django_db
def test_an_unreachable_appliance_is_counted_and_named(site):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}/ac"
    source = iots_import(
        site=site, name="main", data=config(appliance("AC", uri, [("power", "p", "W")]))
    ).source
    poll_source_run(source_id=source.pk, now=at(1), timeout=0.5)
    ac = polled(site, "ac")
    assert ac.failures == 1
    assert ac.last_error.startswith(f"cannot reach {uri}: ")


@pytest.mark.django_db
def test_the_task_skips_a_source_whose_previous_run_is_still_going(site, healthy):
    # given
    healthy.answers["/ac"] = {"power": 1}
    document = config(appliance("AC", healthy.url("/ac"), [("power", "power", "W")]))
    source = iots_import(site=site, name="main", data=document).source
    running = sync_client().lock(lock_key(source.pk), timeout=30)
    assert running.acquire(blocking=False)
    # when
    try:
        skipped = poll_source(source.pk)
    finally:
        running.release()
    done = poll_source(source.pk)
    # then
    assert skipped["skipped"] is True
    assert (done["skipped"], done["polled"]) == (False, 1)
    assert polled(site, "ac").polls == 1
    assert healthy.requests == ["/ac"]


@pytest.mark.django_db
def test_a_disabled_source_is_not_polled(site, healthy):
    document = config(appliance("AC", healthy.url("/ac"), [("power", "power", "W")]))
    source = iots_import(site=site, name="main", data=document).source
    PollSource.objects.filter(pk=source.pk).update(enabled=False)
    assert poll_source(source.pk) is None
    assert healthy.requests == []


@pytest.mark.django_db
def test_sources_api_shows_each_appliances_counters(
    site, healthy, broken, operator, api_client_for
):
    # given
    healthy.answers["/ok"] = {"power": 7}
    document = config(
        appliance("Fine", healthy.url("/ok"), [("power", "power", "W")]),
        appliance("Down", broken.url("/down"), [("power", "power", "W")]),
    )
    source = iots_import(site=site, name="main", data=document).source
    poll_source_run(source_id=source.pk, now=at(1))
    # when
    response = api_client_for(operator).get("/api/v1/sources/")
    # then
    assert response.status_code == 200
    (shown,) = response.json()["http"]
    counters = {
        a["device"]: (a["polls"], a["failures"], a["last_error"], a["last_latency_ms"] is None)
        for a in shown["appliances"]
    }
    assert counters == {
        f"site{site.pk}-fine": (1, 0, "", False),
        f"site{site.pk}-down": (1, 1, f"HTTP 500 from {broken.url('/down')}", False),
    }


# --- admin --------------------------------------------------------------------------------------


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.mark.django_db
def test_admin_pages_show_sources_and_appliance_counters(admin_client, site, healthy, broken):
    # given one healthy and one failing appliance, polled once
    healthy.answers["/ok"] = {"power": 7}
    document = config(
        appliance("Fine", healthy.url("/ok"), [("power", "power", "W")]),
        appliance("Down", broken.url("/down"), [("power", "power", "W")]),
    )
    source = iots_import(site=site, name="main", data=document).source
    poll_source_run(source_id=source.pk, now=at(1))
    error = f"HTTP 500 from {broken.url('/down')}"
    # when / then
    listing = admin_client.get("/admin/telemetry/pollsource/")
    assert listing.status_code == 200
    assert "Casa Azul" in listing.content.decode()
    page = admin_client.get(f"/admin/telemetry/pollsource/{source.pk}/change/")
    assert page.status_code == 200
    assert f"site{site.pk}-down" in page.content.decode()
    assert error in page.content.decode()
    appliances = admin_client.get("/admin/telemetry/polledappliance/")
    assert appliances.status_code == 200
    assert error in appliances.content.decode()
    failing = admin_client.get("/admin/telemetry/polledappliance/?health=failing")
    assert f"site{site.pk}-down" in failing.content.decode()
    assert f"site{site.pk}-fine" not in failing.content.decode()
    detail = admin_client.get(f"/admin/telemetry/polledappliance/{polled(site, 'down').pk}/change/")
    assert detail.status_code == 200


@pytest.mark.django_db
def test_admin_add_page_imports_an_uploaded_file(admin_client, site, healthy):
    upload = SimpleUploadedFile(
        "iots-right.json", json.dumps(sample_document(healthy)).encode(), "application/json"
    )
    response = admin_client.post(
        "/admin/telemetry/pollsource/add/",
        {"site": site.pk, "name": "main", "enabled": "on", "iots_file": upload},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    source = PollSource.objects.get(site=site, name="main")
    assert source.appliances.count() == 4
    assert PeriodicTask.objects.get(name=f"poll-source-{source.pk}").enabled is True


@pytest.mark.django_db
def test_admin_add_page_shows_each_problem_of_a_refused_file_and_creates_nothing(
    admin_client, site
):
    upload = SimpleUploadedFile(
        "iots-right.json", (SAMPLES / "iots-right.invalid.json").read_bytes(), "application/json"
    )
    response = admin_client.post(
        "/admin/telemetry/pollsource/add/", {"site": site.pk, "name": "main", "iots_file": upload}
    )
    assert response.status_code == 200
    page = response.content.decode()
    for path in (
        "$.resources.monitoring_period: must be a positive whole number",
        "$.resources.iots[0].values[0].tag:",
        "$.resources.iots[1].store.type:",
        "$.resources.iots[2].uri: is required but missing",
    ):
        assert path in page
    assert not PollSource.objects.exists()
    assert not Device.objects.exists()
