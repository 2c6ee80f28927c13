"""HTTP polling of IoT appliances described by an `iots-right.json` file.

Importing a file (`iots_import`) turns it into the registry: one device per appliance (uid
`site<site id>-<appliance name slug>`), one sensor per value (key from its type and unit, e.g.
`power_w`), a `PolledAppliance` with the appliance's URI and store rule, and a beat schedule.
Appliances missing from a new file stop being polled; their devices, sensors and readings stay.

A poll run (`poll_source_run`, every `monitoring_period` seconds) asks every appliance of a source
at once, each within a timeout shorter than the period, so a dead or slow appliance never delays
the others. The values picked from the answers wait in Redis until their store window
(`store.period` seconds, aligned to the epoch) has ended; then each window's samples are folded by
`store.type` into ONE reading per value, stamped at the window's START (as load-profile intervals
and aggregate buckets are), and handed to the one ingest pipeline. A per-window marker makes sure
a window is ingested once, however often the run repeats.
"""

import asyncio
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from redis.exceptions import LockError

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from devices.models import Device, DeviceKind, SensorKind, Site
from devices.services import device_create, device_update, sensor_create
from energy_portal.redis_client import sync_client
from telemetry.iots_config import IotsConfig, IotsConfigError, aggregate, parse_iots_config, pick
from telemetry.models import PolledAppliance, PollSource
from telemetry.selectors import sensor_refs_by_public_id
from telemetry.services import Item, readings_ingest, readings_validate
from telemetry.signals import iots_dr_auto_accept

logger = logging.getLogger(__name__)

POLL_TASK = "telemetry.tasks.poll_source"
POLL_TIMEOUT_MAX_S = 2.0  # per appliance; never more than half the monitoring period
RUN_MIN_S = 4  # soft limit of a run: its period less a second, within these bounds
RUN_MAX_S = 50
MAX_ANSWER_BYTES = 1_048_576  # an appliance's JSON answer is small; more is a broken device
SAMPLE_TTL_MARGIN_S = 300  # samples outlive their window by this, so a late run still finds them

# Appliance types that name a device kind in other words.
_DEVICE_KIND_ALIASES = {"pv": DeviceKind.PV_INVERTER, "ev": DeviceKind.EV_CHARGER}


# --- import -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedAppliance:
    """One appliance of the file as it will be in the registry."""

    path: str
    name: str
    uid: str
    kind: str
    controllable: bool
    uri: str
    store_type: str
    store_period_s: int
    sensors: list[dict]  # [{key, kind, unit}]
    values: list[dict]  # [{type, tag, data, unit, sensor_key}]


@dataclass(frozen=True)
class IotsPlan:
    document: dict
    config: IotsConfig
    appliances: list[PlannedAppliance]


@dataclass
class IotsImport:
    """What an import did, one line per change; all empty when the file changed nothing."""

    source: PollSource
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.removed)


def appliance_uid(*, site: Site, name: str) -> str:
    """The device uid of an appliance: `site<id>-<name slug>`, at most 64 characters."""
    return f"site{site.pk}-{slugify(name)}"[:64].rstrip("-")


def sensor_key(*, value_type: str, unit: str) -> str:
    """A value's sensor key from its type and unit: `power_w`, `temperature_c`, `energy_kwh`."""
    parts = [slugify(value_type), slugify(unit.replace("%", "pct"))]
    return "_".join(p.replace("-", "_") for p in parts if p)[:64].rstrip("_")


def _device_kind(appliance_type: str) -> str:
    wanted = appliance_type.strip().lower()
    if wanted in DeviceKind.values:
        return wanted
    return _DEVICE_KIND_ALIASES.get(wanted, DeviceKind.OTHER)


def _sensor_kind(value_type: str) -> str:
    wanted = value_type.strip().lower()
    return wanted if wanted in SensorKind.values else SensorKind.OTHER


def iots_plan(*, site: Site, name: str, data: bytes | str | dict) -> IotsPlan:
    """The registry an `iots-right.json` file asks for, checked against the file format and
    against what the registry already holds. Writes nothing.

    Raises `IotsConfigError` naming every problem by its JSON path.
    """
    config = parse_iots_config(data)
    document = data if isinstance(data, dict) else json.loads(data)
    problems: list[tuple[str, str]] = []
    uids: dict[str, str] = {}
    planned = []
    for index, appliance in enumerate(config.iots):
        path = f"$.resources.iots[{index}]"
        uid = appliance_uid(site=site, name=appliance.name)
        if not slugify(appliance.name):
            problems.append((f"{path}.name", "needs letters or digits to name a device"))
        elif uid in uids:
            problems.append(
                (f"{path}.name", f"gives device uid {uid}, as {uids[uid]}.name does; rename one")
            )
        else:
            uids[uid] = path
        if len(appliance.name) > Device._meta.get_field("name").max_length:
            problems.append((f"{path}.name", "is longer than 120 characters"))
        if len(appliance.uri) > PolledAppliance._meta.get_field("uri").max_length:
            problems.append((f"{path}.uri", "is longer than 500 characters"))
        sensors, values, keys = [], [], {}
        for number, spec in enumerate(appliance.values):
            value_path = f"{path}.values[{number}]"
            key = sensor_key(value_type=spec.type, unit=spec.unit)
            if not key:
                problems.append((f"{value_path}.type", "needs letters or digits to name a sensor"))
            elif key in keys:
                problems.append(
                    (f"{value_path}.type", f"gives sensor key {key}, as {keys[key]} does")
                )
            keys.setdefault(key, value_path)
            if len(spec.unit) > 16:
                problems.append((f"{value_path}.unit", "is longer than 16 characters"))
            sensors.append({"key": key, "kind": _sensor_kind(spec.type), "unit": spec.unit})
            values.append(
                {"type": spec.type, "tag": spec.tag, "data": spec.data, "unit": spec.unit,
                 "sensor_key": key}
            )  # fmt: skip
        planned.append(
            PlannedAppliance(
                path=path,
                name=appliance.name,
                uid=uid,
                kind=_device_kind(appliance.type),
                controllable=appliance.demand_response,
                uri=appliance.uri,
                store_type=appliance.store_type,
                store_period_s=appliance.store_period,
                sensors=sensors,
                values=values,
            )
        )
    problems += _registry_conflicts(site=site, name=name, planned=planned)
    if problems:
        raise IotsConfigError(problems)
    return IotsPlan(document=document, config=config, appliances=planned)


def _registry_conflicts(
    *, site: Site, name: str, planned: list[PlannedAppliance]
) -> list[tuple[str, str]]:
    """Appliances whose device uid is taken by a device this source may not adopt."""
    existing = Device.objects.filter(uid__in=[p.uid for p in planned]).select_related(
        "polled_appliance__source"
    )
    taken = {device.uid: device for device in existing}
    problems = []
    for item in planned:
        device = taken.get(item.uid)
        if device is None:
            continue
        polled = getattr(device, "polled_appliance", None)
        if device.site_id != site.pk:
            problems.append(
                (f"{item.path}.name", f"device uid {item.uid} belongs to another site; rename it")
            )
        elif polled is not None and polled.source.name != name:
            problems.append(
                (
                    f"{item.path}.name",
                    f"device {item.uid} is already polled by source {polled.source.name!r} of "
                    "this site; rename the appliance or import the file into that source",
                )
            )
    return problems


@transaction.atomic
def iots_import(*, site: Site, name: str = "main", data: bytes | str | dict) -> IotsImport:
    """Import an `iots-right.json` file as the poll source `name` of `site`.

    The whole file or nothing: raises `IotsConfigError` naming every problem by its JSON path.
    Creates or updates the source, one device per appliance with one sensor per value, the polled
    appliances and the beat schedule. Appliances no longer in the file stop being polled; their
    devices, sensors and readings are kept (history stays, and listing the appliance again picks
    the same device up). Importing the same file again changes nothing.
    """
    plan = iots_plan(site=site, name=name, data=data)
    period = plan.config.monitoring_period
    source = PollSource.objects.select_for_update().filter(site=site, name=name).first()
    previous_auto_accept = None if source is None else _dr_auto_accept(source.config)
    if source is None:
        source = PollSource.objects.create(
            site=site, name=name, config=plan.document, monitoring_period_s=period
        )
        report = IotsImport(source=source, created=[f"source {source}, polled every {period} s"])
    else:
        report = IotsImport(source=source)
        if source.monitoring_period_s != period:
            report.updated.append(
                f"source {source}: polled every {period} s (was {source.monitoring_period_s} s)"
            )
        elif source.config != plan.document:
            report.updated.append(f"source {source}: configuration")
        source.config, source.monitoring_period_s = plan.document, period
        source.save(update_fields=["config", "monitoring_period_s", "imported_at"])

    devices = {
        device.uid: device
        for device in Device.objects.filter(uid__in=[p.uid for p in plan.appliances])
        .prefetch_related("sensors")
        .select_related("polled_appliance")
    }
    kept = []
    for item in plan.appliances:
        device = devices.get(item.uid)
        if device is None:
            device, _token = device_create(
                uid=item.uid,
                site=site,
                kind=item.kind,
                name=item.name,
                controllable=item.controllable,
                sensors=item.sensors,
            )
            keys = ", ".join(s["key"] for s in item.sensors)
            report.created.append(f"device {item.uid} ({item.kind}) with sensors {keys}")
        else:
            _device_refresh(device=device, item=item, report=report)
        kept.append(device.pk)
        _appliance_refresh(source=source, device=device, item=item, report=report)

    for gone in source.appliances.exclude(device_id__in=kept).select_related("device"):
        report.removed.append(
            f"stopped polling {gone.device.uid} (its device, sensors and readings are kept)"
        )
        gone.delete()
    poll_source_schedule(source=source)
    if plan.config.dr_auto_accept != previous_auto_accept:
        # Only when the file says something new, so a resident's later choice stands until then.
        answers = iots_dr_auto_accept.send(
            sender=PollSource, site=site, auto_accept=plan.config.dr_auto_accept
        )
        report.updated += [line for _receiver, line in answers if isinstance(line, str)]
    return report


def _dr_auto_accept(document: object) -> bool | None:
    """The `app.dr_events_auto_accept` of a stored file, if it has one."""
    app = document.get("app") if isinstance(document, dict) else None
    value = app.get("dr_events_auto_accept") if isinstance(app, dict) else None
    return value if isinstance(value, bool) else None


def _device_refresh(*, device: Device, item: PlannedAppliance, report: IotsImport) -> None:
    wanted = {"name": item.name, "kind": item.kind, "controllable": item.controllable}
    changes = {name: value for name, value in wanted.items() if getattr(device, name) != value}
    if changes:
        device_update(device=device, **changes)
        report.updated.append(f"device {device.uid}: {', '.join(changes)}")
    sensors = {sensor.key: sensor for sensor in device.sensors.all()}
    for spec in item.sensors:
        sensor = sensors.get(spec["key"])
        if sensor is None:
            sensor_create(device=device, **spec)
            report.created.append(f"sensor {device.uid}.{spec['key']}")
        elif (sensor.kind, sensor.unit) != (spec["kind"], spec["unit"]):
            sensor.kind, sensor.unit = spec["kind"], spec["unit"]
            sensor.save(update_fields=["kind", "unit"])
            report.updated.append(f"sensor {device.uid}.{spec['key']}: kind, unit")


def _appliance_refresh(
    *, source: PollSource, device: Device, item: PlannedAppliance, report: IotsImport
) -> None:
    wanted = {
        "source": source,
        "uri": item.uri,
        "store_type": item.store_type,
        "store_period_s": item.store_period_s,
        "values": item.values,
    }
    appliance = getattr(device, "polled_appliance", None)
    if appliance is None:
        PolledAppliance.objects.create(device=device, **wanted)
        report.created.append(
            f"polling of {device.uid} at {item.uri}, stored as {item.store_type} "
            f"over {item.store_period_s} s"
        )
        return
    changes = [name for name, value in wanted.items() if getattr(appliance, name) != value]
    if changes:
        for name in changes:
            setattr(appliance, name, wanted[name])
        appliance.save(update_fields=changes)
        report.updated.append(f"polling of {device.uid}: {', '.join(changes)}")


# --- schedule -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLimits:
    """How long one poll run of a source may take, from its monitoring period."""

    timeout_s: float  # for each appliance's answer
    soft_s: int  # Celery's soft time limit of the run
    hard_s: int  # Celery's hard time limit; also how long a run's lock lives


def run_limits(monitoring_period_s: int) -> RunLimits:
    """A run ends before the next one is due: each appliance gets at most half the period, the
    run its period less a second (but never under RUN_MIN_S, enough for the database work)."""
    soft = min(max(monitoring_period_s - 1, RUN_MIN_S), RUN_MAX_S)
    return RunLimits(
        timeout_s=min(POLL_TIMEOUT_MAX_S, monitoring_period_s / 2), soft_s=soft, hard_s=soft + 5
    )


def poll_source_schedule(*, source: PollSource) -> PeriodicTask:
    """Create or update the beat schedule polling `source` every monitoring period.

    It lives in django-celery-beat's tables (admins can see and edit it there) and is disabled
    while the source is. A run not started within a period is dropped rather than queued, and
    Celery's per-message `timelimit` header bounds each run by the source's own period.
    """
    period = source.monitoring_period_s
    every = {"every": period, "period": IntervalSchedule.SECONDS}
    # Not get_or_create: nothing stops admins from making twin interval rows.
    interval = IntervalSchedule.objects.filter(**every).first() or IntervalSchedule.objects.create(
        **every
    )
    limits = run_limits(period)
    wanted = {
        "task": POLL_TASK,
        "interval": interval,
        "crontab": None,
        "args": json.dumps([source.pk]),
        "enabled": source.enabled,
        "expire_seconds": period,
        "headers": json.dumps({"timelimit": [limits.hard_s, limits.soft_s]}),
    }
    name = f"poll-source-{source.pk}"
    task = PeriodicTask.objects.filter(name=name).first()
    if task is None:
        description = f"Poll the appliances of {source} (iots-right.json)."
        task = PeriodicTask.objects.create(name=name, description=description, **wanted)
    else:
        # Only what differs, so an unchanged source leaves beat's schedule (and its reload) be,
        # and what admins set on the task beyond these fields stays.
        changes = [attr for attr, value in wanted.items() if getattr(task, attr) != value]
        if changes:
            for attr in changes:
                setattr(task, attr, wanted[attr])
            task.save(update_fields=[*changes, "date_changed"])
    if source.schedule_id != task.pk:
        source.schedule = task
        source.save(update_fields=["schedule"])
    return task


@transaction.atomic
def poll_source_delete(*, source: PollSource) -> None:
    """Delete a source with its schedule; its devices, sensors and readings are kept."""
    if source.schedule_id:
        PeriodicTask.objects.filter(pk=source.schedule_id).delete()
    source.delete()


# --- polling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PollOutcome:
    """One appliance's answer: the values picked (by sensor key), or why there are none."""

    appliance_id: int
    samples: dict[str, float]
    error: str = ""
    latency_ms: float | None = None  # None when no answer came

    @property
    def ok(self) -> bool:
        return not self.error


class _AnswerTooLarge(Exception):
    pass


async def poll_appliances(
    appliances: list[PolledAppliance], *, timeout: float
) -> list[PollOutcome]:
    """Ask every appliance at once, each within `timeout` seconds; one outcome per appliance, in
    order. A slow, dead or broken appliance fails alone and never holds up the others."""
    # trust_env off: appliances sit on the site's own network, never behind a proxy.
    async with httpx.AsyncClient(
        timeout=timeout,
        limits=httpx.Limits(max_connections=max(len(appliances), 1)),
        headers={"Accept": "application/json"},
        trust_env=False,
    ) as client:
        answers = await asyncio.gather(
            *(_poll_one(client, appliance, timeout) for appliance in appliances),
            return_exceptions=True,
        )
    return [
        answer
        if isinstance(answer, PollOutcome)
        else PollOutcome(appliance.pk, {}, f"{type(answer).__name__}: {answer}")
        for appliance, answer in zip(appliances, answers, strict=True)
    ]


async def _poll_one(
    client: httpx.AsyncClient, appliance: PolledAppliance, timeout: float
) -> PollOutcome:
    uri = appliance.uri
    started = time.perf_counter()
    try:
        # httpx's timeouts are per phase; this one bounds the whole exchange.
        async with asyncio.timeout(timeout), client.stream("GET", uri) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise _AnswerTooLarge
    except (TimeoutError, httpx.TimeoutException):
        return PollOutcome(appliance.pk, {}, f"timed out after {timeout:.1f} s waiting for {uri}")
    except _AnswerTooLarge:
        error = f"answer from {uri} is larger than {MAX_ANSWER_BYTES // 1024} KiB"
        return PollOutcome(appliance.pk, {}, error, _since(started))
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        return PollOutcome(appliance.pk, {}, f"cannot reach {uri}: {reason}")
    latency = _since(started)
    if not response.is_success:
        return PollOutcome(appliance.pk, {}, f"HTTP {response.status_code} from {uri}", latency)
    try:
        document = json.loads(body)
    except ValueError:
        start = bytes(body[:40]).decode("utf-8", "replace")
        error = f"answer from {uri} is not JSON (it starts {start!r})"
        return PollOutcome(appliance.pk, {}, error, latency)
    samples, missing = {}, []
    for spec in appliance.values:
        value = pick(spec["tag"], document, data=spec["data"])
        if value is None:
            missing.append(spec["tag"])
        else:
            samples[spec["sensor_key"]] = value
    error = ""
    if missing:
        tags = ", ".join(missing)
        error = f"tag {tags} not found in the answer from {uri}, or not a number"
    return PollOutcome(appliance.pk, samples, error, latency)


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


# --- runs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PollRun:
    """What one run did; `skipped` when the source's previous run was still going."""

    polled: int = 0
    failed: int = 0
    readings: int = 0
    skipped: bool = False


def lock_key(source_id: int) -> str:
    return f"ep:poll:lock:{int(source_id)}"


def samples_key(appliance_id: int, key: str, window: int) -> str:
    """The values of one sensor polled in the store window starting at `window` (epoch s)."""
    return f"ep:poll:{int(appliance_id)}:{key}:{int(window)}"


def _open_key(appliance_id: int) -> str:
    """The windows of an appliance that hold samples and have not been ingested yet."""
    return f"ep:poll:{int(appliance_id)}:open"


def _done_key(appliance_id: int, window: int) -> str:
    return f"ep:poll:{int(appliance_id)}:done:{int(window)}"


def _window(at: float, period: int) -> int:
    return math.floor(at / period) * period


def _ttl(appliance: PolledAppliance) -> int:
    # Three windows: the next window's consumption still needs this one's last sample.
    return appliance.store_period_s * 3 + SAMPLE_TTL_MARGIN_S


def poll_source_run(
    *, source_id: int, now: datetime | None = None, timeout: float | None = None
) -> PollRun | None:
    """Poll every appliance of a source once, record their health, keep the values picked, and
    ingest one reading per value for each store window that has ended.

    None when the source is gone or disabled. A run that finds the source's previous run still
    going does nothing (`skipped`), so slow runs never pile up. Safe to repeat: a window is
    ingested once. `timeout` (per appliance) defaults to what the monitoring period allows.
    """
    source = PollSource.objects.filter(pk=source_id, enabled=True).first()
    if source is None:
        return None
    limits = run_limits(source.monitoring_period_s)
    lock = sync_client().lock(lock_key(source.pk), timeout=limits.hard_s, blocking=False)
    if not lock.acquire():
        logger.info("poll of source %s skipped: its previous run is still going", source.pk)
        return PollRun(skipped=True)
    try:
        return _run(source, now or timezone.now(), timeout or limits.timeout_s)
    finally:
        try:
            lock.release()
        except LockError:  # it expired: the run overran its hard limit, the lock is gone anyway
            logger.warning("poll of source %s outlived its lock", source.pk)


def _run(source: PollSource, now: datetime, timeout: float) -> PollRun:
    appliances = list(source.appliances.select_related("device"))
    outcomes = asyncio.run(poll_appliances(appliances, timeout=timeout))
    _record_health(outcomes, now)
    _keep_samples(appliances, outcomes, now)
    readings = _ingest_ended_windows(appliances, now)
    failed = sum(not outcome.ok for outcome in outcomes)
    return PollRun(polled=len(outcomes), failed=failed, readings=readings)


def _record_health(outcomes: list[PollOutcome], now: datetime) -> None:
    """Count each poll; a full success clears `last_error` (`failures` keeps the history)."""
    for outcome in outcomes:
        fields = {
            "polls": F("polls") + 1,
            "last_error": outcome.error,
            "last_latency_ms": outcome.latency_ms,
            "last_polled_at": now,
        }
        if outcome.ok:
            fields |= {"consecutive_failures": 0, "last_success_at": now}
        else:
            fields |= {
                "failures": F("failures") + 1,
                "consecutive_failures": F("consecutive_failures") + 1,
            }
        # An update naming its fields: the row may have been re-imported or removed meanwhile.
        PolledAppliance.objects.filter(pk=outcome.appliance_id).update(**fields)


def _keep_samples(
    appliances: list[PolledAppliance], outcomes: list[PollOutcome], now: datetime
) -> None:
    pipe = sync_client().pipeline(transaction=False)
    for appliance, outcome in zip(appliances, outcomes, strict=True):
        if not outcome.samples:
            continue
        window, ttl = _window(now.timestamp(), appliance.store_period_s), _ttl(appliance)
        for key, value in outcome.samples.items():
            pipe.rpush(samples_key(appliance.pk, key, window), repr(value))
            pipe.expire(samples_key(appliance.pk, key, window), ttl)
        pipe.zadd(_open_key(appliance.pk), {str(window): window})
        pipe.expire(_open_key(appliance.pk), ttl)
    pipe.execute()


def _ingest_ended_windows(appliances: list[PolledAppliance], now: datetime) -> int:
    """Fold each ended window's samples into one reading per value and ingest them together."""
    client = sync_client()
    at = now.timestamp()
    pipe = client.pipeline(transaction=False)
    for appliance in appliances:
        current = _window(at, appliance.store_period_s)
        pipe.zrangebyscore(_open_key(appliance.pk), "-inf", current - appliance.store_period_s)
    ended = [
        (appliance, int(window))
        for appliance, windows in zip(appliances, pipe.execute(), strict=True)
        for window in windows
    ]
    if not ended:
        return 0
    # Claim each window first: of two runs closing the same window, only one ingests it.
    for appliance, window in ended:
        pipe.set(_done_key(appliance.pk, window), 1, nx=True, ex=_ttl(appliance))
    claimed = [claim for claim, won in zip(ended, pipe.execute(), strict=True) if won]
    try:
        items = _window_items(claimed)
        result = readings_validate(
            items=items,
            sensors=sensor_refs_by_public_id(public_ids={item.ref for item in items}),
            ref_name="sensor_id",
            now=now,
        )
        readings_ingest(result=result, source="poll")
    except Exception:
        if claimed:  # give the windows back so the next run ingests them
            client.delete(*(_done_key(appliance.pk, window) for appliance, window in claimed))
        raise
    for rejected in result.rejected:
        logger.warning("polled reading refused: %s", rejected)
    for appliance, window in ended:
        pipe.zrem(_open_key(appliance.pk), str(window))
    pipe.execute()
    per_device = Counter(reading.sensor.device_id for reading in result.readings)
    for appliance in appliances:
        if per_device[appliance.device_id]:
            PolledAppliance.objects.filter(pk=appliance.pk).update(
                rows_ingested=F("rows_ingested") + per_device[appliance.device_id]
            )
    return result.accepted


def _window_items(windows: list[tuple[PolledAppliance, int]]) -> list[Item]:
    """One item per value of each window, its samples aggregated as the appliance's store type
    says. A counter's consumption starts from the previous window's last sample, so the use
    between two windows is counted too (and a store period of one poll still works)."""
    pipe = sync_client().pipeline(transaction=False)
    wanted = []
    for appliance, window in windows:
        for spec in appliance.values:
            key = spec["sensor_key"]
            pipe.lrange(samples_key(appliance.pk, key, window), 0, -1)
            previous = samples_key(appliance.pk, key, window - appliance.store_period_s)
            pipe.lindex(previous, -1)
            wanted.append((appliance, window, key))
    answers = pipe.execute()
    items = []
    for number, (appliance, window, key) in enumerate(wanted):
        samples = [float(raw) for raw in answers[2 * number]]
        before = answers[2 * number + 1]
        if appliance.store_type == "consumption" and before is not None and samples:
            samples.insert(0, float(before))
        value = aggregate(appliance.store_type, samples)
        if value is not None:
            ts = datetime.fromtimestamp(window, UTC).isoformat()
            items.append(Item(ref=f"{appliance.device.uid}.{key}", ts=ts, value=value))
    return items
