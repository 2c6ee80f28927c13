"""The batch writer: batches, duplicates, dead letters, dead writers, killed writers, a database
that goes away — in every case the table ends up with each reading exactly once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from django.db import connection

from devices.models import Sensor
from telemetry import writer as writer_module
from telemetry.models import Reading
from telemetry.services import INGEST_STREAM
from telemetry.writer import DEAD_LETTER_STREAM, GROUP, Batch, Writer, entry_rows

BASE_DIR = Path(__file__).resolve().parents[2]
T0 = 1_795_392_000_000_000  # 2026-11-22T21:20:00Z in epoch microseconds


def _enqueue(client, sensor_id: int, start: int, count: int, per_entry: int = 500) -> None:
    pipe = client.pipeline()
    for first in range(start, start + count, per_entry):
        rows = [
            [sensor_id, T0 + i * 1_000_000, float(i)]
            for i in range(first, min(first + per_entry, start + count))
        ]
        # compact, as the portal's producers write entries
        pipe.xadd(INGEST_STREAM, {"src": "test", "rows": json.dumps(rows, separators=(",", ":"))})
    pipe.execute()


def _drain(writer: Writer, *, rounds: int = 200) -> None:
    batch = Batch()
    for _ in range(rounds):
        batch = writer.run_once(batch, block_ms=5)
        if not batch.ids and writer.client.xlen(INGEST_STREAM) == 0:
            return


@pytest.fixture
def power_sensor(alice_home) -> Sensor:
    return alice_home["device"].sensors.get(key="power_w")


@pytest.mark.django_db
def test_writer_writes_batches_and_drops_duplicates(power_sensor, ingest_stream):
    # given 1,000 readings, the first 300 of them sent twice
    _enqueue(ingest_stream, power_sensor.id, 0, 1000)
    _enqueue(ingest_stream, power_sensor.id, 0, 300)
    writer = Writer(name="w1", max_rows=400, max_age_s=0)
    writer.ensure_group()
    # when
    _drain(writer)
    # then
    assert Reading.objects.filter(sensor=power_sensor).count() == 1000
    assert writer.written == 1000
    assert ingest_stream.xlen(INGEST_STREAM) == 0  # committed entries are deleted
    assert ingest_stream.xpending(INGEST_STREAM, GROUP)["pending"] == 0


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.mark.django_db
def test_each_batch_written_is_measured_in_rows_and_seconds(power_sensor, ingest_stream):
    # given 1,000 readings in entries of 200 and batches of at most 400 rows
    _enqueue(ingest_stream, power_sensor.id, 0, 1000, per_entry=200)
    writer = Writer(name="w1", max_rows=400, max_age_s=0)
    writer.ensure_group()
    batches = _sample("energy_portal_writer_batch_rows_count")
    rows = _sample("energy_portal_writer_batch_rows_sum")
    timed = _sample("energy_portal_writer_batch_write_seconds_count")
    # when
    _drain(writer)
    # then: every row in some batch of at most 400 rows, each batch timed
    written = _sample("energy_portal_writer_batch_rows_count") - batches
    assert _sample("energy_portal_writer_batch_rows_sum") - rows == 1000
    assert written >= 3
    assert _sample("energy_portal_writer_batch_write_seconds_count") - timed == written
    assert _sample("energy_portal_writer_batch_write_seconds_sum") > 0


@pytest.mark.django_db
def test_values_and_times_are_stored_exactly(power_sensor, ingest_stream):
    us = T0 + 123_456  # sub-second precision must survive
    ingest_stream.xadd(INGEST_STREAM, {"rows": json.dumps([[power_sensor.id, us, 512.25]])})
    writer = Writer(name="w1", max_age_s=0)
    writer.ensure_group()
    _drain(writer)
    reading = Reading.objects.get(sensor=power_sensor)
    assert reading.value == 512.25
    assert int(reading.time.timestamp()) * 1_000_000 + reading.time.microsecond == us


@pytest.mark.django_db
def test_unparseable_entries_go_to_the_dead_letter_stream_and_the_rest_is_written(
    power_sensor, ingest_stream
):
    ingest_stream.xadd(INGEST_STREAM, {"rows": "not json"})
    ingest_stream.xadd(INGEST_STREAM, {"rows": json.dumps([[power_sensor.id, "soon", 1]])})
    ingest_stream.xadd(INGEST_STREAM, {"other": "x"})
    _enqueue(ingest_stream, power_sensor.id, 0, 10)
    writer = Writer(name="w1", max_age_s=0)
    writer.ensure_group()
    _drain(writer)
    assert Reading.objects.count() == 10
    dead = ingest_stream.xrange(DEAD_LETTER_STREAM)
    assert len(dead) == 3
    reasons = [fields[b"reason"].decode() for _id, fields in dead]
    assert any("Expecting value" in r for r in reasons)
    assert any("bad row" in r for r in reasons)
    assert any("no 'rows'" in r for r in reasons)


@pytest.mark.parametrize(
    "raw, rows, count",
    [
        (b"[]", "", 0),
        (b"[[7,1795392000000000,512.25]]", "{7,1795392000000000,512.25}", 1),
        (b"[[7,1,-2.5e-3],[8,2,3]]", "{7,1,-2.5e-3},{8,2,3}", 2),
        # other JSON spacing is parsed as JSON and written out compact
        (b"[[7, 1, 2.5], [8, 2, 3]]", "{7,1,2.5},{8,2,3.0}", 2),
        (b" [ [7,1,2.5] ] ", "{7,1,2.5}", 1),
    ],
)
def test_entry_rows_become_array_literal_elements(raw, rows, count):
    assert entry_rows(raw) == (rows, count)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "no 'rows'"),
        (b"[[7,1,2.5]", "Expecting"),  # truncated
        (b"[[7,1]]", "bad row"),  # two numbers
        (b"[[7,1,2,3]]", "bad row"),  # four numbers
        (b"[[[7,1,2]]]", "bad row"),  # three levels
        (b"[[7,1,2],3]", "bad row"),
        (b'[[7,1,"2"]]', "bad row"),
        (b"[[7,1,2],[8,2,3]", "Expecting"),
        (b'{"a":1}', "not a list"),
        # ids and times must be integer text: a double would round these to whole numbers
        (b"[[7.0000000000000001,1795392000000000.1,1]]", "bad row"),
        (b"[[7, 1, 1" + b"0" * 400 + b"]]", "OverflowError"),
        (b"[" * 100_000, "RecursionError"),
    ],
)
def test_entry_rows_refuse_what_is_not_rows_of_three_numbers(raw, reason):
    with pytest.raises(ValueError, match=reason):
        entry_rows(raw)


@pytest.mark.django_db
def test_rows_the_database_refuses_go_to_the_dead_letter_stream_and_their_batch_is_written(
    power_sensor, ingest_stream
):
    # given compact entries PostgreSQL refuses to cast (a value past double range, a time past
    # 2^53 µs, an id out of range) between good ones, all in one batch
    _enqueue(ingest_stream, power_sensor.id, 0, 10)
    for bad in (
        f"[[{power_sensor.id},{T0},1e999]]",
        f"[[{power_sensor.id},9007199254740993123,1.0]]",
        f"[[99999999999,{T0},1.0]]",
    ):
        ingest_stream.xadd(INGEST_STREAM, {"src": "test", "rows": bad})
    _enqueue(ingest_stream, power_sensor.id, 10, 10)
    writer = Writer(name="w1", max_age_s=0)
    writer.ensure_group()
    # when
    _drain(writer)
    # then the good rows are in, exactly once, and each bad entry is set aside with the reason
    assert Reading.objects.filter(sensor=power_sensor).count() == 20
    assert writer.written == 20
    dead = ingest_stream.xrange(DEAD_LETTER_STREAM)
    assert len(dead) == 3
    assert all(b"refused by the database" in fields[b"reason"] for _id, fields in dead)
    assert ingest_stream.xlen(INGEST_STREAM) == 0
    assert ingest_stream.xpending(INGEST_STREAM, GROUP)["pending"] == 0


@pytest.mark.django_db
def test_readings_of_a_deleted_sensor_are_dropped_without_blocking_the_batch(
    alice_home, power_sensor, ingest_stream
):
    voltage = alice_home["device"].sensors.get(key="voltage_v")
    _enqueue(ingest_stream, voltage.id, 0, 5)
    _enqueue(ingest_stream, power_sensor.id, 0, 5)
    voltage.delete()
    writer = Writer(name="w1", max_age_s=0)
    writer.ensure_group()
    _drain(writer)
    assert Reading.objects.count() == 5
    assert ingest_stream.xlen(INGEST_STREAM) == 0


@pytest.mark.django_db
def test_a_live_writer_claims_the_entries_a_dead_writer_left_pending(power_sensor, ingest_stream):
    # given a writer that read entries and died before writing them
    _enqueue(ingest_stream, power_sensor.id, 0, 100, per_entry=10)
    dead = Writer(name="dead", max_age_s=0)
    dead.ensure_group()
    ingest_stream.xreadgroup(GROUP, "dead", {INGEST_STREAM: ">"}, count=100)
    assert ingest_stream.xpending(INGEST_STREAM, GROUP)["pending"] == 10
    # when another writer runs once they have been idle long enough
    time.sleep(0.05)
    alive = Writer(name="alive", max_age_s=0, claim_idle_ms=10)
    _drain(alive)
    # then
    assert Reading.objects.count() == 100
    assert ingest_stream.xpending(INGEST_STREAM, GROUP)["pending"] == 0


@pytest.fixture
def batch_sizes(monkeypatch) -> list[int]:
    """Rows of each batch the writers write, in order."""
    sizes = []
    insert = writer_module.readings_insert_rows

    def recorded(*, rows: str):
        sizes.append(rows.count("{") - 1)
        return insert(rows=rows)

    monkeypatch.setattr(writer_module, "readings_insert_rows", recorded)
    return sizes


def _run(writer: Writer, batch: Batch, rounds: int = 100) -> Batch:
    for _ in range(rounds):
        batch = writer.run_once(batch, block_ms=5)
    return batch


@pytest.mark.django_db
def test_a_batch_is_bounded_by_rows_and_takes_whole_entries(
    power_sensor, ingest_stream, batch_sizes
):
    # given entries of 300 rows and a writer that takes 1,000 rows a batch (and is in no hurry)
    _enqueue(ingest_stream, power_sensor.id, 0, 3000, per_entry=300)
    writer = Writer(name="w1", max_rows=1000, max_age_s=3600)
    writer.ensure_group()
    # when
    batch = _run(writer, Batch())
    # then as many whole entries as fit, never more rows; the rest waits for its age
    assert batch_sizes == [900, 900, 900]
    writer.max_age_s = 0
    writer.run_once(batch, block_ms=5)
    assert batch_sizes == [900, 900, 900, 300]
    assert Reading.objects.filter(sensor=power_sensor).count() == 3000
    assert ingest_stream.xpending(INGEST_STREAM, GROUP)["pending"] == 0


@pytest.mark.django_db
def test_first_read_after_a_restart_takes_a_batch_of_rows_not_hundreds_of_entries(
    power_sensor, ingest_stream, batch_sizes
):
    # given a backlog of big entries (HTTP batches) and a writer that has read nothing yet
    _enqueue(ingest_stream, power_sensor.id, 0, 60_000, per_entry=5000)
    writer = Writer(name="w1", max_rows=12_000, max_age_s=3600)
    writer.ensure_group()
    # when
    batch = _run(writer, Batch())
    writer.max_age_s = 0
    writer.run_once(batch, block_ms=5)
    # then (it used to take 500 entries at once: all 60,000 rows in one statement)
    assert batch_sizes == [10_000] * 6
    assert Reading.objects.filter(sensor=power_sensor).count() == 60_000


@pytest.mark.django_db
def test_entry_larger_than_a_batch_is_written_alone(power_sensor, ingest_stream, batch_sizes):
    _enqueue(ingest_stream, power_sensor.id, 0, 100, per_entry=100)
    _enqueue(ingest_stream, power_sensor.id, 100, 2500, per_entry=2500)
    _enqueue(ingest_stream, power_sensor.id, 2600, 100, per_entry=100)
    writer = Writer(name="w1", max_rows=1000, max_age_s=0)
    writer.ensure_group()
    _drain(writer)
    assert batch_sizes == [100, 2500, 100]
    assert Reading.objects.filter(sensor=power_sensor).count() == 2700


@pytest.mark.django_db
def test_entries_claimed_from_a_dead_writer_are_written_in_bounded_batches(
    power_sensor, ingest_stream, batch_sizes
):
    # given a writer that read 20 entries of 1,000 rows and died
    _enqueue(ingest_stream, power_sensor.id, 0, 20_000, per_entry=1000)
    ingest_stream.xgroup_create(INGEST_STREAM, GROUP, id="0")
    ingest_stream.xreadgroup(GROUP, "dead", {INGEST_STREAM: ">"}, count=100)
    time.sleep(0.05)
    # when another writer claims them
    alive = Writer(name="alive", max_rows=2500, max_age_s=0, claim_idle_ms=10)
    _drain(alive)
    # then
    assert batch_sizes == [2000] * 10
    assert Reading.objects.filter(sensor=power_sensor).count() == 20_000
    assert ingest_stream.xpending(INGEST_STREAM, GROUP)["pending"] == 0


def _database_url() -> str:
    settings = connection.settings_dict
    return f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"


def _start_writer(env_overrides: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": _database_url(), **(env_overrides or {})}
    return subprocess.Popen(
        [sys.executable, str(BASE_DIR / "manage.py"), "run_ingest_writer", "--max-rows", "2000"],
        env=env,
        cwd=BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait(predicate, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"writer exited: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.django_db(transaction=True)
def test_writers_killed_mid_stream_and_restarted_lose_and_double_nothing(
    power_sensor, ingest_stream
):
    total = 300_000
    _enqueue(ingest_stream, power_sensor.id, 0, total, per_entry=500)
    kills = 0
    writer = _start_writer({"INGEST_CLAIM_IDLE_MS": "200"})
    try:
        # when: writers are killed with SIGKILL, three times, each as soon as it has written
        for _ in range(3):
            before = Reading.objects.count()
            _wait(lambda b=before: Reading.objects.count() > b, 60, "the writer to write", writer)
            writer.send_signal(signal.SIGKILL)
            writer.wait(10)
            writer = _start_writer({"INGEST_CLAIM_IDLE_MS": "200"})
            if Reading.objects.count() == total:
                break
            kills += 1
        # then the last one claims what the dead ones held and finishes the job
        _wait(lambda: ingest_stream.xlen(INGEST_STREAM) == 0, 120, "the stream to drain")
        assert kills >= 1, "every writer finished before it could be killed"
        assert Reading.objects.count() == total
        assert ingest_stream.xpending(INGEST_STREAM, GROUP)["pending"] == 0
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.wait(10)


def _pg_server():
    """A PostgreSQL of the test's own (pgserver), which it may stop and start at will.

    Its folder must be readable by the unprivileged user pgserver runs PostgreSQL as when the
    tests run as root, which pytest's own tmp_path (mode 700) is not.
    """
    import pgserver

    parent = Path(tempfile.mkdtemp(prefix="ep-writer-pg-"))
    parent.chmod(0o755)
    return pgserver.get_server(parent / "pgdata", cleanup_mode="delete")


def test_writer_waits_for_a_restarted_database_and_resumes_losing_nothing(ingest_stream):
    from urllib.parse import parse_qs, quote, urlsplit

    import psycopg
    from pgserver._commands import pg_ctl

    # given a database of our own with the schema and one sensor
    server = _pg_server()
    socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    url = f"postgres://postgres@{quote(socket_dir, safe='')}/postgres"
    env = {**os.environ, "DATABASE_URL": url}
    manage = [sys.executable, str(BASE_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=BASE_DIR)
    subprocess.run([*manage, "seed_demo"], env=env, check=True, cwd=BASE_DIR, capture_output=True)
    conninfo = f"host={socket_dir} user=postgres dbname=postgres"
    with psycopg.connect(conninfo) as conn:
        sensor_id = conn.execute("SELECT min(id) FROM devices_sensor").fetchone()[0]

    def count() -> int:
        try:
            with psycopg.connect(conninfo) as conn:
                return conn.execute("SELECT count(*) FROM energy_readings").fetchone()[0]
        except psycopg.OperationalError:
            return -1

    writer = subprocess.Popen(
        [*manage, "run_ingest_writer", "--max-rows", "2000"],
        env=env,
        cwd=BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _enqueue(ingest_stream, sensor_id, 0, 20_000)
        _wait(lambda: ingest_stream.xlen(INGEST_STREAM) == 0, 60, "the first part", writer)
        # when the database goes away while readings keep coming
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        _enqueue(ingest_stream, sensor_id, 20_000, 20_000)
        time.sleep(2)  # the writer meets the closed database and keeps retrying
        assert writer.poll() is None, "the writer gave up"
        assert ingest_stream.xlen(INGEST_STREAM) > 0
        server.ensure_postgres_running()
        # then it resumes, and every reading is in the table once
        _wait(lambda: ingest_stream.xlen(INGEST_STREAM) == 0, 60, "the writer to resume", writer)
        assert count() == 40_000
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.wait(10)
        server.cleanup()
        shutil.rmtree(server.pgdata.parent, ignore_errors=True)


@pytest.mark.django_db
def test_a_stopping_writer_writes_the_entries_it_held_back(power_sensor, ingest_stream):
    # given a writer that read more entries than its batch took (the rest held for the next)
    _enqueue(ingest_stream, power_sensor.id, 0, 3000, per_entry=300)
    writer = Writer(name="w1", max_rows=1000, max_age_s=0)
    writer.ensure_group()
    writer._rows_per_entry = 100  # it expects small entries, so it reads too many at once
    writer.run_once(Batch(), block_ms=5)
    read = ingest_stream.xpending(INGEST_STREAM, GROUP)["pending"]
    assert writer._held and read
    written_before = Reading.objects.filter(sensor=power_sensor).count()

    # when it is told to stop
    writer.stop()
    writer.run()

    # then nothing it read stays pending: everything it took is in the table
    assert ingest_stream.xpending(INGEST_STREAM, GROUP)["pending"] == 0
    written = Reading.objects.filter(sensor=power_sensor).count()
    assert written == written_before + 300 * read
