"""FTP ingestion of `.sgl_v2` files, against a real FTP server (pyftpdlib), PostgreSQL and Redis."""

import gc
import json
import shutil
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from django.db import connection
from django.db.models import Count, Max, Min, Sum
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from devices.models import Device, Site
from energy_portal.celery import app as celery_app
from telemetry import ftp_ingest, services, tasks
from telemetry.ftp_ingest import (
    FtpUnavailable,
    ftp_file_ingest,
    ftp_source_delete,
    ftp_source_poll,
    ftp_source_schedule,
    site_meter_sensor,
)
from telemetry.models import FileStatus, FtpSource, IngestedFile, Reading
from telemetry.services import INGEST_STREAM
from telemetry.writer import Batch, Writer
from tests.conftest import PASSWORD as USER_PASSWORD
from tests.fixtures.sample_files import AUTUMN, DAY, MALFORMED, RESEND, SAMPLES
from tests.telemetry.conftest import stream_rows
from tests.telemetry.ftp_server import PASSWORD, USER, FtpServer

# The samples' readings are judged as of the day after the latest of them, so the tests do not
# start failing once the samples are older than the pipeline accepts.
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
LISBON = ZoneInfo("Europe/Lisbon")


def _expected(stem: str) -> dict:
    return json.loads((SAMPLES / f"{stem}.expected.json").read_text())


def _day_cpes() -> list[str]:
    return sorted(_expected(DAY)["total_kwh_by_cpe"])


def _upload(folder: Path, stem: str, *, as_name: str | None = None) -> None:
    shutil.copyfile(SAMPLES / f"{stem}.sgl_v2", folder / (as_name or f"{stem}.sgl_v2"))


def _sgl(readings: list[tuple[str, datetime, int]], *, entity: str = "GECAD01") -> bytes:
    """A `.sgl_v2` file of (CPE, local start, hundredths of kWh) readings, CRLF, Latin-1."""
    first = readings[0][1] if readings else datetime(2026, 11, 21)
    lines = [f"00{entity:<10}{first:%Y%m%d}0001"]
    lines += [f"20{cpe:<20}{start:%Y%m%d%H%M}{value:010d}R" for cpe, start, value in readings]
    lines.append(f"99{'TOTAL':<10}{len(readings):08d}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def _poll(source: FtpSource, **kwargs) -> dict:
    return ftp_source_poll(source_id=source.id, now=NOW, **kwargs)


def _write_all(client) -> None:
    """Run an ingest writer until the stream is empty: the readings are then in the table."""
    writer = Writer(name="t", max_rows=100_000, max_age_s=0)
    writer.ensure_group()
    batch = Batch()
    for _ in range(200):
        batch = writer.run_once(batch, block_ms=10)
        if not len(batch) and not client.xlen(INGEST_STREAM):
            return
    raise AssertionError("the writer did not empty the ingest stream")


def _meter_readings(cpe: str, first: str, last: str):
    return Reading.objects.filter(
        sensor__device__site__cpe=cpe,
        sensor__key="energy_kwh",
        time__gte=datetime.fromisoformat(first),
        time__lte=datetime.fromisoformat(last),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "ftp"
    root.mkdir()
    return root


@pytest.fixture
def ftp_server(folder: Path):
    with FtpServer(folder) as server:
        yield server


def _source_for(server: FtpServer, **fields) -> FtpSource:
    return FtpSource.objects.create(
        **{
            "name": "sa4cps",
            "host": server.host,
            "port": server.port,
            "username": USER,
            "password": PASSWORD,
            "folder": "/",
            "timezone": "Europe/Lisbon",
            **fields,
        }
    )


@pytest.fixture
def source(db, ftp_server) -> FtpSource:
    return _source_for(ftp_server)


@pytest.fixture
def sample_sites(db) -> dict[str, Site]:
    """A site for every CPE the samples' expectations name."""
    return {cpe: Site.objects.create(name=f"Site {cpe[-6:]}", cpe=cpe) for cpe in _day_cpes()}


@pytest.fixture
def eager_celery():
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


# --- the samples -------------------------------------------------------------------------


@pytest.mark.django_db
def test_sample_folder_is_ingested_and_totals_per_cpe_equal_the_expected(
    source, folder, sample_sites, ingest_stream
):
    # given every sample in the folder
    for stem in (DAY, RESEND, AUTUMN, MALFORMED):
        _upload(folder, stem)
    # when
    summary = _poll(source)
    _write_all(ingest_stream)
    # then
    day, autumn = _expected(DAY), _expected(AUTUMN)
    assert summary | {"error": ""} == {
        "source": source.id,
        "listed": 4,
        "new": 4,
        "left": 0,
        "rows": day["records"] + autumn["records"],
        "ingested": 2,
        "duplicate": 1,
        "quarantined": 1,
        "error": "",
    }
    first, last = day["first"][1], day["last"][1]
    for cpe, kwh in day["total_kwh_by_cpe"].items():
        total = _meter_readings(cpe, first, last).aggregate(kwh=Sum("value"))["kwh"]
        assert total == pytest.approx(kwh, abs=0.005), cpe
    day_rows = Reading.objects.filter(
        sensor__device__site__cpe__in=day["total_kwh_by_cpe"],
        time__gte=datetime.fromisoformat(first),
        time__lte=datetime.fromisoformat(last),
    )
    assert day_rows.count() == day["records"]
    records = {f.name: f for f in IngestedFile.objects.all()}
    assert records[f"{AUTUMN}.sgl_v2"].unknown_cpes == []
    autumn_rows = Reading.objects.filter(
        sensor__key="energy_kwh",
        time__gte=datetime.fromisoformat(autumn["first_utc"]),
        time__lte=datetime.fromisoformat(autumn["last_utc"]),
    ).aggregate(
        n=Count("time"), instants=Count("time", distinct=True), lo=Min("time"), hi=Max("time")
    )
    assert autumn_rows == {
        "n": autumn["records"],
        "instants": autumn["distinct_utc_instants"],
        "lo": datetime.fromisoformat(autumn["first_utc"]),
        "hi": datetime.fromisoformat(autumn["last_utc"]),
    }
    source.refresh_from_db()
    assert (source.runs, source.files_ingested, source.files_quarantined) == (1, 2, 1)
    assert source.rows_ingested == day["records"] + autumn["records"]
    assert source.last_error == ""
    assert source.last_run_at is not None


@pytest.mark.django_db
def test_readings_attach_to_a_meter_sensor_of_the_site_with_the_cpe(
    source, folder, sample_sites, ingest_stream
):
    _upload(folder, DAY)
    _poll(source)
    for cpe, site in sample_sites.items():
        device = Device.objects.get(site=site, kind="meter")
        assert device.uid == f"meter-{site.id}"
        sensor = device.sensors.get()
        assert (sensor.key, sensor.kind, sensor.unit) == ("energy_kwh", "energy", "kWh"), cpe
    sensor_ids = {row[0] for row in stream_rows(ingest_stream)}
    assert sensor_ids == {site_meter_sensor(site=s).id for s in sample_sites.values()}


@pytest.mark.django_db
def test_site_meter_sensor_is_created_once(sample_sites):
    site = next(iter(sample_sites.values()))
    first = site_meter_sensor(site=site)
    again = site_meter_sensor(site=site)
    assert again.id == first.id
    assert Device.objects.filter(site=site).count() == 1


@pytest.mark.django_db
def test_resend_under_another_name_is_recorded_duplicate_and_not_buffered_again(
    source, folder, sample_sites, ingest_stream
):
    _upload(folder, DAY)
    _upload(folder, RESEND)
    _poll(source)
    original = IngestedFile.objects.get(name=f"{DAY}.sgl_v2")
    resend = IngestedFile.objects.get(name=f"{RESEND}.sgl_v2")
    assert (original.status, original.rows) == (FileStatus.INGESTED, 288)
    assert (resend.status, resend.rows) == (FileStatus.DUPLICATE, 0)
    assert resend.checksum == original.checksum
    assert f"same content as '{DAY}.sgl_v2'" in resend.errors[0]["message"]
    assert len(stream_rows(ingest_stream)) == _expected(DAY)["records"]


@pytest.mark.django_db
def test_same_content_under_two_names_is_stored_once_in_the_table(
    source, folder, sample_sites, ingest_stream
):
    # the "nothing doubled" check, on the table itself
    _upload(folder, DAY, as_name="a.sgl_v2")
    _upload(folder, DAY, as_name="b.sgl_v2")
    _poll(source)
    _write_all(ingest_stream)
    meters = Reading.objects.filter(sensor__device__site__in=sample_sites.values())
    assert meters.count() == _expected(DAY)["records"]
    assert sorted(IngestedFile.objects.values_list("status", flat=True)) == [
        FileStatus.DUPLICATE,
        FileStatus.INGESTED,
    ]


@pytest.mark.django_db
def test_malformed_file_is_quarantined_with_errors_by_line_and_the_good_ones_go_on(
    source, folder, sample_sites, ingest_stream
):
    _upload(folder, MALFORMED)
    _upload(folder, DAY)
    summary = _poll(source)
    bad = IngestedFile.objects.get(name=f"{MALFORMED}.sgl_v2")
    assert (bad.status, bad.rows) == (FileStatus.QUARANTINED, 0)
    assert [e["line"] for e in bad.errors] == [4, 6, 8, 10]
    assert all(e["message"].startswith(f"line {e['line']}: ") for e in bad.errors)
    assert "energy '00000O0012' is not a number" in bad.errors[0]["message"]
    good = IngestedFile.objects.get(name=f"{DAY}.sgl_v2")
    assert (good.status, good.rows) == (FileStatus.INGESTED, 288)
    assert len(stream_rows(ingest_stream)) == 288
    assert (summary["quarantined"], summary["ingested"]) == (1, 1)


@pytest.mark.django_db
def test_file_with_a_nul_byte_is_quarantined_with_its_line_named(
    source, folder, sample_sites, ingest_stream
):
    # given a file whose known CPE has a NUL in it (PostgreSQL text cannot hold one)
    cpe = _day_cpes()[0]
    data = _sgl([(cpe, datetime(2026, 11, 21, 0, 0), 7), (cpe, datetime(2026, 11, 21, 0, 15), 8)])
    (folder / "nul.sgl_v2").write_bytes(
        data.replace(cpe.encode(), cpe[:10].encode() + b"\0" + cpe[11:].encode(), 1)
    )
    # when
    summary = _poll(source)
    # then
    bad = IngestedFile.objects.get(name="nul.sgl_v2")
    assert (bad.status, bad.rows) == (FileStatus.QUARANTINED, 0)
    assert bad.errors[0] == {
        "line": 2,
        "message": "line 2: holds a NUL byte (column 13); the file must be text",
    }
    assert summary["quarantined"] == 1
    assert stream_rows(ingest_stream) == []


@pytest.mark.django_db
def test_second_poll_of_the_same_folder_ingests_nothing_new(
    source, folder, sample_sites, ingest_stream
):
    for stem in (DAY, AUTUMN, MALFORMED):
        _upload(folder, stem)
    _poll(source)
    buffered = len(stream_rows(ingest_stream))
    again = _poll(source)
    assert (again["listed"], again["new"], again["rows"]) == (3, 0, 0)
    assert len(stream_rows(ingest_stream)) == buffered == 388
    assert IngestedFile.objects.count() == 3
    source.refresh_from_db()
    assert (source.runs, source.files_ingested, source.rows_ingested) == (2, 2, 388)


@pytest.mark.django_db
def test_file_added_after_a_poll_is_picked_up_by_the_next(
    source, folder, sample_sites, ingest_stream
):
    _upload(folder, AUTUMN)
    _poll(source)
    _upload(folder, DAY)
    summary = _poll(source)
    assert (summary["new"], summary["ingested"], summary["rows"]) == (1, 1, 288)


# --- unknown CPEs, odd bytes, odd servers ---------------------------------------------------


@pytest.mark.django_db
def test_records_of_an_unknown_cpe_are_reported_and_the_known_ones_ingested(
    source, folder, ingest_stream
):
    known, unknown = _day_cpes()[:2], _day_cpes()[2]
    for cpe in known:
        Site.objects.create(name=cpe, cpe=cpe)
    _upload(folder, DAY)
    _poll(source)
    record = IngestedFile.objects.get()
    assert (record.status, record.rows) == (FileStatus.INGESTED, 192)
    assert record.unknown_cpes == [{"cpe": unknown, "records": 96}]
    assert len(record.errors) == 1
    assert (
        f"CPE {unknown} matches no site; its 96 records were not ingested"
        in (record.errors[0]["message"])
    )
    assert len(stream_rows(ingest_stream)) == 192


@pytest.mark.django_db
def test_readings_older_than_the_pipeline_accepts_are_named_by_line(
    source, folder, sample_sites, ingest_stream
):
    _upload(folder, DAY)
    ftp_source_poll(source_id=source.id, now=NOW + timedelta(days=800))
    record = IngestedFile.objects.get()
    assert (record.status, record.rows) == (FileStatus.INGESTED, 0)
    assert len(record.errors) == 288
    assert record.errors[0]["line"] == 2
    assert "too far in the past" in record.errors[0]["message"]
    assert stream_rows(ingest_stream) == []


@pytest.mark.django_db
def test_latin1_bytes_in_a_file_and_its_name_are_read_as_iso_8859_1(
    source, folder, sample_sites, ingest_stream
):
    # given a header whose entity code has Latin-1 letters (not valid UTF-8)
    cpe = _day_cpes()[0]
    data = _sgl([(cpe, datetime(2026, 11, 21, 10, 15), 123)], entity="ÉVORA-Ç")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    (folder / "Évora_20261121.sgl_v2").write_bytes(data)
    # when
    _poll(source)
    # then
    record = IngestedFile.objects.get()
    assert (record.name, record.status, record.rows) == (
        "Évora_20261121.sgl_v2",
        FileStatus.INGESTED,
        1,
    )
    start = datetime(2026, 11, 21, 10, 15, tzinfo=LISBON)
    sensor = site_meter_sensor(site=sample_sites[cpe])
    assert stream_rows(ingest_stream) == [[sensor.id, int(start.timestamp() * 1_000_000), 1.23]]


@pytest.mark.django_db
def test_server_without_mlsd_is_listed_with_nlst(folder, sample_sites, ingest_stream):
    with FtpServer(folder, mlsd=False) as server:
        source = _source_for(server)
        _upload(folder, DAY)
        (folder / "notes.txt").write_text("not a load profile")
        summary = _poll(source)
    assert (summary["listed"], summary["ingested"], summary["rows"]) == (1, 1, 288)


@pytest.mark.django_db
def test_file_over_the_size_limit_is_quarantined_unread_and_the_rest_go_on(
    source, folder, sample_sites, ingest_stream
):
    cpe = _day_cpes()[0]
    _upload(folder, DAY)
    size = (SAMPLES / f"{DAY}.sgl_v2").stat().st_size
    (folder / "small.sgl_v2").write_bytes(_sgl([(cpe, datetime(2026, 11, 20, 0, 0), 5)]))
    summary = _poll(source, max_file_bytes=10_000)
    big = IngestedFile.objects.get(name=f"{DAY}.sgl_v2")
    assert (big.status, big.size, big.rows) == (FileStatus.QUARANTINED, size, 0)
    assert "files over 10,000 bytes are not fetched" in big.errors[0]["message"]
    assert IngestedFile.objects.get(name="small.sgl_v2").status == FileStatus.INGESTED
    assert summary["rows"] == 1


@pytest.mark.django_db
def test_refused_login_sets_last_error_and_fetches_nothing(ftp_server, folder, ingest_stream):
    _upload(folder, DAY)
    source = _source_for(ftp_server, password="wrong")
    summary = _poll(source)
    source.refresh_from_db()
    assert "refused login as 'sa4cps'" in source.last_error
    assert "530" in source.last_error
    assert summary["error"] == source.last_error
    assert (source.runs, summary["new"]) == (1, 0)
    assert not IngestedFile.objects.exists()


@pytest.mark.django_db
def test_missing_folder_sets_last_error(ftp_server, ingest_stream):
    source = _source_for(ftp_server, folder="/no/such/folder")
    _poll(source)
    source.refresh_from_db()
    assert "folder '/no/such/folder' is not available" in source.last_error
    assert "550" in source.last_error


@pytest.mark.django_db
def test_server_down_sets_last_error_and_the_poll_raises_for_a_retry(db, ingest_stream):
    source = FtpSource.objects.create(name="down", host="127.0.0.1", port=_free_port())
    with pytest.raises(FtpUnavailable):
        _poll(source)
    source.refresh_from_db()
    assert source.last_error.startswith(f"could not reach 127.0.0.1:{source.port}")
    assert source.runs == 1


@pytest.mark.django_db
def test_task_for_a_server_that_is_down_is_retried_and_then_gives_up(db, ingest_stream):
    source = FtpSource.objects.create(name="down", host="127.0.0.1", port=_free_port())
    # eager: each retry runs at once instead of after its countdown
    result = tasks.ftp_source_poll.apply(args=[source.id])
    assert result.failed()
    assert isinstance(result.result, FtpUnavailable)
    source.refresh_from_db()
    assert source.runs == 1 + tasks.ftp_source_poll.max_retries
    assert "could not reach" in source.last_error


@pytest.mark.django_db
def test_disabled_source_is_not_polled(source, folder, ingest_stream):
    _upload(folder, DAY)
    source.enabled = False
    source.save(update_fields=["enabled"])
    assert _poll(source)["skipped"] == "source is disabled"
    assert not IngestedFile.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_workers_racing_on_the_same_content_ingest_it_once(ingest_stream):
    # given three workers at once: two with the same name, one with another name
    for cpe in _day_cpes():
        Site.objects.create(name=cpe, cpe=cpe)
    source = FtpSource.objects.create(name="race", host="127.0.0.1")
    data = (SAMPLES / f"{DAY}.sgl_v2").read_bytes()
    names = ["a.sgl_v2", "a.sgl_v2", "b.sgl_v2"]
    start = threading.Barrier(len(names))
    results: list = []

    def worker(name: str) -> None:
        try:
            start.wait()
            results.append(ftp_file_ingest(source=source, name=name, data=data, now=NOW))
        except Exception as exc:
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=[name]) for name in names]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # then
    assert not [r for r in results if isinstance(r, Exception)], results
    stored = dict(IngestedFile.objects.values_list("name", "status"))
    assert sorted(stored.values()) == [FileStatus.DUPLICATE, FileStatus.INGESTED]
    assert len(stream_rows(ingest_stream)) == _expected(DAY)["records"]
    assert gc.isenabled()  # the last of the overlapping ingests turned the collector back on


@pytest.mark.django_db
def test_a_file_goes_through_the_pipeline_in_chunks_and_bounded_stream_entries(
    monkeypatch, sample_sites, ingest_stream
):
    # given a file read whole, and the same file with small chunks and stream entries
    source = FtpSource.objects.create(name="chunks", host="127.0.0.1")
    data = (SAMPLES / f"{DAY}.sgl_v2").read_bytes()
    ftp_file_ingest(source=source, name="whole.sgl_v2", data=data, now=NOW)
    whole = stream_rows(ingest_stream)
    ingest_stream.delete(INGEST_STREAM)
    IngestedFile.objects.all().delete()
    monkeypatch.setattr(ftp_ingest, "CHUNK_ROWS", 100)
    monkeypatch.setattr(services, "STREAM_ENTRY_ROWS", 40)
    # when
    record = ftp_file_ingest(source=source, name="chunked.sgl_v2", data=data, now=NOW)
    # then the same rows, in entries of at most 40 rows, cut again at each 100-row chunk
    sizes = [
        len(json.loads(fields[b"rows"])) for _id, fields in ingest_stream.xrange(INGEST_STREAM)
    ]
    assert sizes == [40, 40, 20, 40, 40, 20, 40, 40, 8]
    assert stream_rows(ingest_stream) == whole
    assert (record.status, record.rows, len(whole)) == (FileStatus.INGESTED, 288, 288)


# --- cyclic garbage collection -------------------------------------------------------------


def _gc_state_while_enqueueing(monkeypatch, *, fail: bool = False) -> list[bool]:
    """Whether the cyclic GC was on each time the file's readings reached the pipeline."""
    seen = []
    enqueue = ftp_ingest.readings_ingest

    def watched(**kwargs):
        seen.append(gc.isenabled())
        if fail:
            raise ConnectionError("Redis went away")
        enqueue(**kwargs)

    monkeypatch.setattr(ftp_ingest, "readings_ingest", watched)
    return seen


@pytest.mark.django_db
def test_cyclic_gc_is_off_while_a_file_is_ingested_and_on_again_after(
    monkeypatch, sample_sites, ingest_stream
):
    seen = _gc_state_while_enqueueing(monkeypatch)
    source = FtpSource.objects.create(name="gc", host="127.0.0.1")
    data = (SAMPLES / f"{DAY}.sgl_v2").read_bytes()
    assert gc.isenabled()
    record = ftp_file_ingest(source=source, name="a.sgl_v2", data=data, now=NOW)
    assert record.status == FileStatus.INGESTED
    assert seen == [False]
    assert gc.isenabled()


@pytest.mark.django_db
def test_cyclic_gc_is_on_again_after_an_ingest_that_failed(monkeypatch, sample_sites):
    seen = _gc_state_while_enqueueing(monkeypatch, fail=True)
    source = FtpSource.objects.create(name="gc", host="127.0.0.1")
    data = (SAMPLES / f"{DAY}.sgl_v2").read_bytes()
    with pytest.raises(ConnectionError):
        ftp_file_ingest(source=source, name="a.sgl_v2", data=data, now=NOW)
    assert seen == [False]
    assert gc.isenabled()
    assert not IngestedFile.objects.exists()  # rolled back: the next poll tries it again


@pytest.mark.django_db
def test_cyclic_gc_a_caller_turned_off_stays_off_after_an_ingest(
    monkeypatch, sample_sites, ingest_stream
):
    seen = _gc_state_while_enqueueing(monkeypatch)
    source = FtpSource.objects.create(name="gc", host="127.0.0.1")
    data = (SAMPLES / f"{DAY}.sgl_v2").read_bytes()
    gc.disable()
    try:
        ftp_file_ingest(source=source, name="a.sgl_v2", data=data, now=NOW)
        assert seen == [False]
        assert not gc.isenabled()
    finally:
        gc.enable()


# --- schedule ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_schedule_runs_the_poll_every_interval_and_follows_the_source(db):
    source = FtpSource.objects.create(name="sched", host="ftp.example", interval_s=120)
    task = ftp_source_schedule(source=source)
    assert (task.name, task.task, json.loads(task.args), task.enabled) == (
        f"ftp-source-{source.id}",
        "telemetry.tasks.ftp_source_poll",
        [source.id],
        True,
    )
    assert (task.interval.every, task.interval.period) == (120, IntervalSchedule.SECONDS)
    source.refresh_from_db()
    assert source.schedule_id == task.id

    source.interval_s, source.enabled = 600, False
    source.save(update_fields=["interval_s", "enabled"])
    again = ftp_source_schedule(source=source)
    assert again.id == task.id
    assert (again.interval.every, again.enabled) == (600, False)
    assert PeriodicTask.objects.filter(name__startswith="ftp-source-").count() == 1

    ftp_source_delete(source=source)
    assert not PeriodicTask.objects.filter(id=task.id).exists()


# --- admin ---------------------------------------------------------------------------------


@pytest.fixture
def admin_client(admin_user) -> Client:
    client = Client()
    assert client.login(username=admin_user.username, password=USER_PASSWORD)
    return client


@pytest.mark.django_db
def test_admin_pages_render_and_show_a_quarantined_files_errors(
    admin_client, source, folder, sample_sites, ingest_stream
):
    _upload(folder, MALFORMED)
    _upload(folder, DAY)
    _poll(source)
    bad = IngestedFile.objects.get(status=FileStatus.QUARANTINED)
    pages = {
        "source list": reverse("admin:telemetry_ftpsource_changelist"),
        "source": reverse("admin:telemetry_ftpsource_change", args=[source.id]),
        "file list": reverse("admin:telemetry_ingestedfile_changelist"),
        "file": reverse("admin:telemetry_ingestedfile_change", args=[bad.id]),
    }
    body = {}
    for page, url in pages.items():
        response = admin_client.get(url)
        assert response.status_code == 200, page
        body[page] = response.content.decode()
    assert "line 4: energy &#x27;00000O0012&#x27; is not a number" in body["file"]
    assert "line 10: trailer counts 97 reading records" in body["file"]
    assert f"{MALFORMED}.sgl_v2" in body["source"]  # the inline of recent files
    assert PASSWORD not in body["source"]
    assert "Quarantined" in body["file list"]


@pytest.mark.django_db
def test_admin_shows_unknown_cpes_of_a_file(admin_client, source, folder, ingest_stream):
    _upload(folder, AUTUMN)
    _poll(source)
    record = IngestedFile.objects.get()
    response = admin_client.get(reverse("admin:telemetry_ingestedfile_change", args=[record.id]))
    assert response.status_code == 200
    cpe = record.unknown_cpes[0]["cpe"]
    assert f"{cpe}: 100 records not ingested" in response.content.decode()


@pytest.mark.django_db
def test_admin_add_schedules_the_source_and_keeps_the_password_when_left_empty(admin_client):
    form = {
        "name": "sa4cps",
        "enabled": "on",
        "host": "ftp.example",
        "port": "21",
        "username": "u",
        "password": "s3cret",
        "folder": "/profiles",
        "timezone": "Europe/Lisbon",
        "interval_s": "900",
        "files-TOTAL_FORMS": "0",
        "files-INITIAL_FORMS": "0",
    }
    response = admin_client.post(reverse("admin:telemetry_ftpsource_add"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    source = FtpSource.objects.get(name="sa4cps")
    assert source.schedule.interval.every == 900
    assert source.schedule.enabled

    # when saved again with an empty password and disabled
    change = reverse("admin:telemetry_ftpsource_change", args=[source.id])
    form = form | {"password": "", "interval_s": "300"}
    del form["enabled"]
    response = admin_client.post(change, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    source.refresh_from_db()
    assert source.password == "s3cret"
    assert (source.schedule.interval.every, source.schedule.enabled) == (300, False)


@pytest.mark.django_db
def test_admin_refuses_an_interval_too_short(admin_client):
    form = {
        "name": "fast",
        "host": "ftp.example",
        "port": "21",
        "username": "u",
        "folder": "/",
        "timezone": "Europe/Lisbon",
        "interval_s": "1",
        "files-TOTAL_FORMS": "0",
        "files-INITIAL_FORMS": "0",
    }
    response = admin_client.post(reverse("admin:telemetry_ftpsource_add"), form)
    assert response.status_code == 200
    assert "at most every 10 seconds" in response.content.decode()
    assert not FtpSource.objects.exists()


@pytest.mark.django_db
def test_admin_poll_now_runs_the_task(
    admin_client, source, folder, sample_sites, ingest_stream, eager_celery
):
    # given a file of yesterday (the task judges readings against the real clock)
    cpe = _day_cpes()[0]
    day = (timezone.now().astimezone(LISBON) - timedelta(days=1)).replace(tzinfo=None)
    start = day.replace(hour=0, minute=0, second=0, microsecond=0)
    readings = [(cpe, start + timedelta(minutes=15 * i), 10 + i) for i in range(4)]
    (folder / "yesterday.sgl_v2").write_bytes(_sgl(readings))
    # when
    response = admin_client.post(
        reverse("admin:telemetry_ftpsource_changelist"),
        {"action": "poll_now", "_selected_action": [source.id]},
    )
    # then
    assert response.status_code == 302
    record = IngestedFile.objects.get()
    assert (record.status, record.rows) == (FileStatus.INGESTED, 4)
    assert [row[2] for row in stream_rows(ingest_stream)] == [0.10, 0.11, 0.12, 0.13]
