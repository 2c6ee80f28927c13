"""FTP ingestion of SA4CPS `.sgl_v2` load-profile files.

A beat job per `FtpSource` lists the source's folder, downloads the `.sgl_v2` files it has not
recorded yet, and hands each to `ftp_file_ingest`, which parses it (`sgl_parser`), attaches its
records to the meter sensor of the site whose CPE they name, and pushes them through the one
ingest pipeline (`telemetry.services`). Every file seen is recorded as an `IngestedFile`:

- INGESTED: its readings went to the ingest buffer. Records of CPEs that match no site are listed
  in `unknown_cpes` and `errors`, and the rest of the file is still ingested, so nothing valid is
  lost. Readings the pipeline refuses (e.g. older than it accepts) are named in `errors` likewise.
- DUPLICATE: the same bytes were already ingested (under any name, from any source); nothing is
  ingested again.
- QUARANTINED: the file is malformed (or too large to fetch); `errors` names every problem by line
  and nothing of it is ingested.

A file is fetched once per name and source. Deleting its record in the admin makes the next poll
fetch it again (e.g. after creating the site of an unknown CPE); readings already stored are not
doubled, as the readings table drops a repeat of the same (sensor, time).

Exactly once under races: the INGESTED record is inserted before the readings are buffered, in the
same transaction, and the table's unique constraints (one record per source and name, one INGESTED
record per checksum) make a second worker racing on the same content wait for the first and then
record a DUPLICATE. Should the commit fail after the readings were buffered, the file stays
unrecorded and is ingested again on the next poll; the readings table drops the repeats.
"""

import ftplib
import hashlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from datetime import datetime
from operator import itemgetter

from celery.exceptions import SoftTimeLimitExceeded
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from redis.exceptions import LockError

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from devices import services as device_services
from devices.models import Device, DeviceKind, Sensor, SensorKind, Site
from energy_portal.redis_client import sync_client
from telemetry.models import FileStatus, FtpSource, IngestedFile
from telemetry.services import Item, cyclic_gc_paused, readings_ingest, readings_validate
from telemetry.sgl_parser import MAX_ERRORS, SglRow, parse_sgl_rows
from telemetry.validation import SensorRef

logger = logging.getLogger(__name__)

FILE_SUFFIX = ".sgl_v2"
POLL_TASK = "telemetry.tasks.ftp_source_poll"
METER_SENSOR_KEY = "energy_kwh"
# Readings per pipeline call: bounded memory, and few live summaries (each a hop to an event
# loop); the pipeline cuts the stream entries smaller.
CHUNK_ROWS = 100_000
MAX_FILE_BYTES = 200 * 1024 * 1024
FTP_TIMEOUT_S = 30.0
POLL_LOCK_S = 600  # how long a poll without a time budget keeps others of its source out

# Problems of the connection or the server's state, worth trying again soon; a refused login or a
# missing folder (5xx, `error_perm`) is not, and waits for the next scheduled run.
_TRANSIENT_ERRORS = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ftplib.error_proto)


class FtpUnavailable(Exception):
    """The FTP server could not be reached or dropped the connection; the poll may be retried."""


class _FileTooLarge(Exception):
    pass


class _Refused(Exception):
    """The server turned down our login or folder: no use retrying before someone fixes it."""


def ftp_source_schedule_name(source_id: int) -> str:
    return f"ftp-source-{int(source_id)}"


# --- schedule ------------------------------------------------------------------------------


@transaction.atomic
def ftp_source_schedule(*, source: FtpSource) -> PeriodicTask:
    """Create or update the source's beat job: every `interval_s` seconds, enabled as the source.

    Called by the admin after saving a source. A disabled source keeps a disabled job.
    """
    every = (
        IntervalSchedule.objects.filter(every=source.interval_s, period=IntervalSchedule.SECONDS)
        .order_by("id")
        .first()
    ) or IntervalSchedule.objects.create(every=source.interval_s, period=IntervalSchedule.SECONDS)
    task, _ = PeriodicTask.objects.update_or_create(
        name=ftp_source_schedule_name(source.id),
        defaults={
            "task": POLL_TASK,
            "interval": every,
            "args": json.dumps([source.id]),
            "enabled": source.enabled,
            "description": f"List FTP source {source.name!r} and ingest its new .sgl_v2 files.",
        },
    )
    if source.schedule_id != task.id:
        source.schedule = task
        source.save(update_fields=["schedule"])
    return task


@transaction.atomic
def ftp_source_delete(*, source: FtpSource) -> None:
    """Delete a source with its beat job and its file records."""
    PeriodicTask.objects.filter(name=ftp_source_schedule_name(source.id)).delete()
    source.delete()


# --- meter sensors -------------------------------------------------------------------------


def site_meter_uid(site_id: int) -> str:
    return f"meter-{int(site_id)}"


@transaction.atomic
def site_meter_sensor(*, site: Site) -> Sensor:
    """The energy sensor (kWh per interval) of the site's utility meter, created on first need.

    The meter is the device `meter-<site id>` (kind meter) with the sensor `energy_kwh`. Safe to
    call again and from racing workers: whoever creates second gets the first one's rows.
    """
    uid = site_meter_uid(site.id)
    device = Device.objects.filter(uid=uid).first()
    if device is None:
        try:
            with transaction.atomic():
                device, _token = device_services.device_create(
                    uid=uid, site=site, kind=DeviceKind.METER, name=f"Meter {site.cpe or site.id}"
                )
        except (IntegrityError, ValidationError):  # created meanwhile by another worker
            device = Device.objects.get(uid=uid)
    if device.site_id != site.id:
        raise ValueError(
            f"device {uid} belongs to site {device.site_id}, not {site.id}; "
            "rename that device so the meter of this site can be created"
        )
    sensor = device.sensors.filter(key=METER_SENSOR_KEY).first()
    if sensor is None:
        try:
            with transaction.atomic():
                sensor = device_services.sensor_create(
                    device=device, key=METER_SENSOR_KEY, kind=SensorKind.ENERGY, unit="kWh"
                )
        except (IntegrityError, ValidationError):
            sensor = device.sensors.get(key=METER_SENSOR_KEY)
    sensor.device = device
    return sensor


def _meter_refs(*, cpes: set[str]) -> dict[str, SensorRef]:
    """CPE -> meter sensor of the site with that CPE, for the CPEs some site has."""
    sites = {site.id: site for site in Site.objects.filter(cpe__in=cpes)}
    existing = {
        sensor.device.site_id: sensor
        for sensor in Sensor.objects.select_related("device").filter(
            device__uid__in=[site_meter_uid(site_id) for site_id in sites],
            key=METER_SENSOR_KEY,
        )
    }
    refs = {}
    for site_id, site in sites.items():
        sensor = existing.get(site_id) or site_meter_sensor(site=site)
        refs[site.cpe] = SensorRef(
            sensor_id=sensor.id,
            key=sensor.key,
            device_id=sensor.device_id,
            device_uid=sensor.device.uid,
            site_id=site_id,
        )
    return refs


# --- one file ------------------------------------------------------------------------------


def _error(line: int | None, message: str) -> dict:
    return {"line": line, "message": message}


def _capped(errors: list[dict]) -> list[dict]:
    if len(errors) <= MAX_ERRORS:
        return errors
    left_out = errors[MAX_ERRORS:]
    summary = f"… and {len(left_out)} more errors from line {left_out[0]['line']} on (not listed)"
    return [*errors[:MAX_ERRORS], _error(left_out[0]["line"], summary)]


def _record(record: IngestedFile) -> IngestedFile:
    """Save a record that ingests nothing; if a racing worker recorded this name first, theirs."""
    try:
        with transaction.atomic():
            record.save()
    except IntegrityError:
        return IngestedFile.objects.get(source=record.source, name=record.name)
    return record


def _record_duplicate(record: IngestedFile, original: IngestedFile | None) -> IngestedFile:
    record.pk = None
    record.status = FileStatus.DUPLICATE
    record.rows = 0
    record.unknown_cpes = []
    if original is None:
        record.errors = [
            _error(None, "same content as a file already ingested; not ingested again")
        ]
    else:
        record.errors = [
            _error(
                None,
                f"same content as {original.name!r} (source {original.source}), ingested "
                f"{original.received_at:%Y-%m-%d %H:%M} UTC; not ingested again",
            )
        ]
    return _record(record)


def _ingested_with(checksum: str) -> IngestedFile | None:
    return (
        IngestedFile.objects.select_related("source")
        .filter(checksum=checksum, status=FileStatus.INGESTED)
        .first()
    )


# The file's rows stay alive while millions of short-lived objects come and go; they are freed
# (by reference counting) on return, before the collector resumes.
@cyclic_gc_paused()
def ftp_file_ingest(
    *, source: FtpSource, name: str, data: bytes, now: datetime | None = None
) -> IngestedFile:
    """Ingest one downloaded `.sgl_v2` file of `source` and record it; see the module docstring.

    Idempotent: a name this source has already recorded returns that record and does nothing.
    `now` is the instant the readings' age is judged against (default: the current time).
    """
    existing = IngestedFile.objects.filter(source=source, name=name).first()
    if existing is not None:
        return existing
    checksum = hashlib.sha256(data).hexdigest()
    record = IngestedFile(source=source, name=name, size=len(data), checksum=checksum)
    original = _ingested_with(checksum)
    if original is not None:
        return _record_duplicate(record, original)

    sgl_file, rows = parse_sgl_rows(data, tz=source.timezone)
    if not sgl_file.valid:
        record.status = FileStatus.QUARANTINED
        record.errors = [_error(e.line, e.message) for e in sgl_file.errors]
        return _record(record)

    with transaction.atomic():
        record.status = FileStatus.INGESTED
        try:
            with transaction.atomic():
                # Blocks while a racing worker holds an uncommitted record of this content or name.
                record.save()
        except IntegrityError:
            existing = IngestedFile.objects.filter(source=source, name=name).first()
            return existing or _record_duplicate(record, _ingested_with(checksum))
        _rows_ingest(record=record, rows=rows, now=now)
        record.save(update_fields=["rows", "errors", "unknown_cpes"])
    return record


def _rows_ingest(*, record: IngestedFile, rows: list[SglRow], now: datetime | None) -> None:
    """Push the rows of known CPEs through the pipeline; note unknown CPEs and refused rows."""
    per_cpe = Counter(map(itemgetter(0), rows))
    refs = _meter_refs(cpes=set(per_cpe))
    errors = []
    unknown = sorted(cpe for cpe in per_cpe if cpe not in refs)
    if unknown:
        first_line = {}
        for cpe, _start, _kwh, _estimated, line in rows:
            if cpe not in refs:
                first_line.setdefault(cpe, line)
        record.unknown_cpes = [{"cpe": cpe, "records": per_cpe[cpe]} for cpe in unknown]
        errors += [
            _error(
                first_line[cpe],
                f"line {first_line[cpe]}: CPE {cpe} matches no site; its {per_cpe[cpe]} records "
                "were not ingested. Give a site this CPE, then delete this file's record to have "
                "it fetched again.",
            )
            for cpe in unknown
        ]
    accepted = refused_total = 0
    refused: list[dict] = []  # the first MAX_ERRORS only: a whole file may be refused
    for items in _chunks(rows, refs):
        result = readings_validate(items=items, sensors=refs, ref_name="cpe", now=now)
        readings_ingest(result=result, source="ftp", live="summary")
        accepted += result.accepted
        refused_total += len(result.rejected)
        refused += result.rejected[: MAX_ERRORS - len(refused)]
    errors += [
        _error(r["index"], f"line {r['index']}: CPE {r['cpe']}: {r['error']}; not ingested")
        for r in refused
    ]
    errors = _capped(sorted(errors, key=lambda e: e["line"]))
    if refused_total > len(refused):
        errors.append(
            _error(None, f"… and {refused_total - len(refused)} more refused readings (not listed)")
        )
    record.rows = accepted
    record.errors = errors


def _chunks(rows: list[SglRow], refs: dict[str, SensorRef]) -> Iterator[list[Item]]:
    """Pipeline items of the known CPEs' rows, CHUNK_ROWS at a time."""
    iso: dict[datetime, str] = {}  # a file repeats each instant once per CPE
    chunk: list[Item] = []
    for cpe, start, kwh, _estimated, line in rows:
        if cpe not in refs:
            continue
        ts = iso.get(start)
        if ts is None:
            ts = iso[start] = start.isoformat()
        chunk.append(Item(cpe, ts, kwh, line))
        if len(chunk) == CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _file_refuse(*, source: FtpSource, name: str, size: int | None, message: str) -> IngestedFile:
    """Record a file that was not downloaded (e.g. too large), so it is not tried every run."""
    record = IngestedFile(
        source=source,
        name=name,
        size=size or 0,
        checksum="",
        status=FileStatus.QUARANTINED,
        errors=[_error(None, message)],
    )
    return _record(record)


# --- one poll of a source ------------------------------------------------------------------


def _connect(source: FtpSource) -> ftplib.FTP:
    # Plain FTP because that is what SA4CPS servers speak; FTPS would need a per-source flag.
    ftp = ftplib.FTP(timeout=FTP_TIMEOUT_S)  # noqa: S321
    where = f"{source.host}:{source.port}"
    try:
        ftp.connect(source.host, source.port)
        try:
            ftp.login(source.username, source.password)
        except ftplib.error_perm as exc:
            raise _Refused(
                f"{where} refused login as {source.username!r}: {exc}. "
                "Check the username and password."
            ) from exc
        try:
            ftp.cwd(source.folder)
        except ftplib.error_perm as exc:
            raise _Refused(
                f"folder {source.folder!r} is not available on {where}: {exc}. Check the folder."
            ) from exc
        ftp.voidcmd("TYPE I")  # SIZE needs binary mode on many servers
    except BaseException:
        ftp.close()
        raise
    return ftp


def _list_files(ftp: ftplib.FTP) -> dict[str, int | None]:
    """Name -> size (None if the listing does not say) of the `.sgl_v2` files in the folder."""
    try:
        listing = {
            name: int(facts["size"]) if facts.get("size", "").isdecimal() else None
            for name, facts in ftp.mlsd(facts=["type", "size"])
            if facts.get("type", "file") == "file"
        }
    except ftplib.error_perm:  # MLSD not supported: names only
        try:
            listing = {name.rsplit("/", 1)[-1]: None for name in ftp.nlst()}
        except ftplib.error_perm as exc:
            if str(exc).startswith("550"):  # some servers answer an empty folder with 550
                return {}
            raise
    return {name: size for name, size in listing.items() if name.lower().endswith(FILE_SUFFIX)}


def _size(ftp: ftplib.FTP, name: str) -> int | None:
    try:
        return ftp.size(name)
    except ftplib.error_perm:  # SIZE not supported
        return None


def _download(ftp: ftplib.FTP, name: str, *, max_bytes: int) -> bytes:
    buffer = io.BytesIO()

    def write(block: bytes) -> None:
        if buffer.tell() + len(block) > max_bytes:
            raise _FileTooLarge
        buffer.write(block)

    try:
        ftp.retrbinary(f"RETR {name}", write, blocksize=1024 * 1024)
    except _FileTooLarge:
        # The data connection is closed; read the server's answer to the aborted transfer so
        # the control connection is in step for the next command.
        with suppress(ftplib.error_temp):
            ftp.voidresp()
        raise
    return buffer.getvalue()


def _too_large(name: str, size: int | None, max_bytes: int) -> str:
    got = f"{size:,} bytes" if size else "larger than that"
    return (
        f"{name} is {got}; files over {max_bytes:,} bytes are not fetched. Split it into smaller "
        "files on the server, or delete this record after raising the limit."
    )


def ftp_source_poll(
    *,
    source_id: int,
    max_file_bytes: int = MAX_FILE_BYTES,
    time_budget_s: float | None = None,
    now: datetime | None = None,
) -> dict:
    """List the source's folder and ingest every `.sgl_v2` file it has not recorded yet.

    One bad file never stops the others. Files left when `time_budget_s` runs out wait for the
    next run. A refused login or a missing folder is recorded in `last_error`; an unreachable
    server too, and then `FtpUnavailable` is raised so the task can retry. Polls of one source do
    not overlap: a second one finding the first still running returns at once. `now` is the
    instant the readings' age is judged against (default: the current time).

    Returns a summary: files listed, new, per status, left for the next run, rows ingested, and
    the run's error text (empty when all went well).
    """
    source = FtpSource.objects.filter(pk=source_id).first()
    if source is None:
        return {"source": source_id, "skipped": "no such source"}
    if not source.enabled:
        return {"source": source_id, "skipped": "source is disabled"}
    # Expires on its own if the worker dies; the last file may overrun the budget a little.
    lock = sync_client().lock(
        f"ep:ftp:poll:{source.id}", timeout=(time_budget_s or POLL_LOCK_S) + 2 * FTP_TIMEOUT_S
    )
    if not lock.acquire(blocking=False):
        return {"source": source_id, "skipped": "another poll of this source is running"}
    try:
        return _Poll(source, max_file_bytes, time_budget_s, now).run()
    finally:
        with suppress(LockError):  # expired meanwhile: nothing to release
            lock.release()


class _Poll:
    """One run over one source's folder: what it found, did, and what went wrong."""

    def __init__(
        self,
        source: FtpSource,
        max_file_bytes: int,
        time_budget_s: float | None,
        now: datetime | None,
    ) -> None:
        self.source = source
        self.max_file_bytes = max_file_bytes
        self.deadline = time.monotonic() + time_budget_s if time_budget_s else None
        self.now = now
        self.summary = {"source": source.id, "listed": 0, "new": 0, "left": 0, "rows": 0}
        self.summary |= {status: 0 for status in FileStatus.values}
        self.failures: list[str] = []

    def run(self) -> dict:
        source = self.source
        unavailable = None
        try:
            with _connect(source) as ftp:
                self.fetch_new(ftp)
        except _Refused as exc:
            self.failures.append(str(exc))
        except ftplib.error_perm as exc:
            self.failures.append(f"{source.host}:{source.port} refused to list the folder: {exc}.")
        except _TRANSIENT_ERRORS as exc:
            self.failures.append(
                f"could not reach {source.host}:{source.port} or lost the connection: {exc}. "
                "Check the host and port; the poll is retried."
            )
            unavailable = exc
        except SoftTimeLimitExceeded:
            self.failures.append(
                "stopped by the task's time limit; the files left wait for the next run"
            )
        except Exception as exc:  # e.g. a listing that is not UTF-8: say so where admins look
            logger.exception("FTP source %s: poll failed", source.id)
            self.failures.append(f"poll failed: {exc!r}")
        finally:
            self.record_run()
        self.summary["error"] = source.last_error
        if unavailable is not None:
            raise FtpUnavailable(source.last_error) from unavailable
        return self.summary

    def fetch_new(self, ftp: ftplib.FTP) -> None:
        listing = _list_files(ftp)
        self.summary["listed"] = len(listing)
        seen = set(self.source.files.filter(name__in=list(listing)).values_list("name", flat=True))
        new = sorted(name for name in listing if name not in seen)
        self.summary["new"] = len(new)
        for position, name in enumerate(new):
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.summary["left"] = len(new) - position
                return
            try:
                record = self.fetch_one(ftp, name, listing[name])
            except (*_TRANSIENT_ERRORS, SoftTimeLimitExceeded):
                raise
            except Exception as exc:  # one file's trouble (e.g. Redis briefly down) spares the rest
                logger.exception("FTP source %s: file %s failed", self.source.id, name)
                self.failures.append(f"{name}: {exc}")
                continue
            self.summary[record.status] += 1
            if record.status == FileStatus.INGESTED:
                self.summary["rows"] += record.rows

    def fetch_one(self, ftp: ftplib.FTP, name: str, size: int | None) -> IngestedFile:
        source, limit = self.source, self.max_file_bytes
        if size is None:
            size = _size(ftp, name)
        if size is not None and size > limit:
            return _file_refuse(
                source=source, name=name, size=size, message=_too_large(name, size, limit)
            )
        try:
            data = _download(ftp, name, max_bytes=limit)
        except _FileTooLarge:
            return _file_refuse(
                source=source, name=name, size=size, message=_too_large(name, None, limit)
            )
        return ftp_file_ingest(source=source, name=name, data=data, now=self.now)

    def record_run(self) -> None:
        """Add this run to the source's counters; increments in SQL, as runs may overlap."""
        source, summary = self.source, self.summary
        source.last_run_at = timezone.now()
        source.last_error = "\n".join(self.failures)
        source.runs = F("runs") + 1
        source.files_ingested = F("files_ingested") + summary[FileStatus.INGESTED]
        source.files_quarantined = F("files_quarantined") + summary[FileStatus.QUARANTINED]
        source.rows_ingested = F("rows_ingested") + summary["rows"]
        counters = ["runs", "files_ingested", "files_quarantined", "rows_ingested"]
        source.save(update_fields=["last_run_at", "last_error", *counters])
        source.refresh_from_db(fields=counters)
