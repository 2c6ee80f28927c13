"""A past for the demo (`make run`): 90 days of synthetic readings for every demo device.

Every 15 minutes for 90 days, every minute for the last 2 days, per device profile
(devices/demo.py, shapes in pi_agent/demo_profiles.py, which the simulated fleet follows live
after): a household with weekday and weekend shapes, a heat pump that follows a
synthetic outdoor temperature, an EV charger's evening sessions, a bakery, rooftop PV and the
grid connection of the PV home (net import, below zero around noon on most days).

Deterministic: a reading is a function of its device and its instant (hashed noise, no state),
so the same instant always gets the same value however it is filled. Only the energy counters
carry state: each continues from the sensor's last stored value.

Idempotent: each sensor is filled from just after its last stored reading (live Pi readings
included) up to now, so a second run adds only the gap since the first. Written through the
ingest pipeline's set-based insert (`readings_insert_rows`, what the batch writer uses), whose
trigger marks the quarter-hours touched; `rollups_refresh` then brings the rollups and site
days current and `area_metrics_refresh` the dashboards, as the beat jobs would.
"""

import time
import zlib
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from devices.demo import DEMO_SITES
from devices.models import Device
from pi_agent.demo_profiles import PROFILES, Instant, instants, voltage_v
from telemetry.rollups import area_metrics_refresh, rollups_refresh
from telemetry.services import EPOCH, readings_insert_rows

HISTORY_DAYS = 90
FINE_DAYS = 2
COARSE = timedelta(minutes=15)
FINE = timedelta(minutes=1)
CHUNK_ROWS = 50_000
# Energy counters of devices without history start here: above any counter a simulated Pi
# starts from (pi_agent: below 20,000 kWh), so a Pi's first live reading reads as a counter
# reset (its quarter-hour counts from the lower value), never as thousands of kWh used at once.
COUNTER_START_KWH = 30_000.0

Dark = Mapping[int, Sequence[tuple[datetime, datetime | None]]]  # site id -> [(from, to)]
Progress = Callable[[str, int, int], None]  # phase, done, total


@dataclass
class HistoryResult:
    readings: int = 0  # new rows stored
    sensors: int = 0  # sensors that got at least one
    buckets: int = 0  # quarter-hours rolled up
    seconds: float = 0.0


# --- filling ------------------------------------------------------------------------------


def history_times(now: datetime, *, days: int = HISTORY_DAYS) -> list[datetime]:
    """The instants of the demo's past up to `now`: quarter-hours for `days`, then minutes for
    the last FINE_DAYS (both on the epoch's grid, as rollups cut buckets)."""
    quarter, minute = COARSE // timedelta(microseconds=1), FINE // timedelta(microseconds=1)
    now_us = (now - EPOCH) // timedelta(microseconds=1)
    first = (now_us - days * 86_400_000_000) // quarter * quarter + quarter
    fine = (now_us - int(FINE_DAYS * 86_400_000_000)) // quarter * quarter
    steps = [*range(first, fine, quarter), *range(fine, now_us // minute * minute + 1, minute)]
    return [EPOCH + timedelta(microseconds=us) for us in steps]


_LAST = """
SELECT s.id, r.time, r.value
FROM unnest(%s::bigint[]) AS s(id)
LEFT JOIN LATERAL (
    SELECT time, value FROM energy_readings WHERE sensor_id = s.id ORDER BY time DESC LIMIT 1
) r ON true
"""


def _last_readings(sensor_ids: list[int]) -> dict[int, tuple[datetime, float] | None]:
    with connection.cursor() as cursor:
        cursor.execute(_LAST, ["{" + ",".join(map(str, sensor_ids)) + "}"])
        return {sid: (at, value) if at is not None else None for sid, at, value in cursor}


@dataclass
class _Plan:
    device: Device
    profile: str
    sensors: dict[str, int]  # key -> id
    since: dict[int, datetime | None]  # sensor id -> its last stored reading's time
    counters: dict[int, float]  # energy sensor id -> its last stored value


def _plans() -> list[_Plan]:
    profiles = {spec[0]: spec[6] for site in DEMO_SITES for spec in site["devices"]}
    devices = list(
        Device.objects.filter(uid__in=profiles).prefetch_related("sensors").order_by("uid")
    )
    plans = [
        _Plan(device, profiles[device.uid], {s.key: s.pk for s in device.sensors.all()}, {}, {})
        for device in devices
    ]
    last = _last_readings([sid for plan in plans for sid in plan.sensors.values()])
    for plan in plans:
        seed = zlib.crc32(plan.device.uid.encode())
        for key, sid in plan.sensors.items():
            stored = last.get(sid)
            plan.since[sid] = stored[0] if stored else None
            if key.endswith("energy_kwh"):
                plan.counters[sid] = stored[1] if stored else COUNTER_START_KWH + seed % 5000
    return plans


def demo_counters() -> dict[str, dict[str, float]]:
    """Each demo device's energy counters as last stored (uid -> sensor key -> kWh), for the
    sensors that have readings: where the simulated fleet's live counters go on from, so the
    quarter-hour a run starts in is not read as a counter reset (which counts only what came
    after it)."""
    counters = {}
    for plan in _plans():
        keys = {sid: key for key, sid in plan.sensors.items()}
        counters[plan.device.uid] = {
            keys[sid]: value for sid, value in plan.counters.items() if plan.since[sid] is not None
        }
    return counters


def _device_rows(plan: _Plan, moments: list[Instant], dark: Sequence[tuple]) -> list[str]:
    """The array-literal rows `{sensor_id,epoch_us,value}` of one device's missing readings."""
    seed = zlib.crc32(plan.device.uid.encode())
    profile = PROFILES[plan.profile]
    ids = plan.sensors
    power, volts = ids.get("power_w"), ids.get("voltage_v")
    temp, pv = ids.get("outdoor_temp_c"), ids.get("pv_w")
    counters = set(plan.counters)
    prev = {sid: plan.since[sid] for sid in counters}
    rows = []
    for i in moments:
        watts = profile(seed, i)
        if any(lo <= i.at and (hi is None or i.at < hi) for lo, hi in dark):
            watts, mains = 0.0, False  # a cut: no power, no voltage, counters stand still
        else:
            mains = True
        for sid, since in plan.since.items():
            if since is not None and i.at <= since:
                continue
            if sid in counters:
                last = prev[sid]
                if last is not None and watts > 0:  # an import counter: export adds nothing
                    plan.counters[sid] += watts * (i.at - last).total_seconds() / 3_600_000
                prev[sid] = i.at
                rows.append(f"{{{sid},{i.us},{plan.counters[sid]:.5f}}}")
            elif sid in (power, pv):
                rows.append(f"{{{sid},{i.us},{watts:.1f}}}")
            elif sid == volts:
                value = voltage_v(seed, i, watts) if mains else 0.0
                rows.append(f"{{{sid},{i.us},{value:.1f}}}")
            elif sid == temp:
                rows.append(f"{{{sid},{i.us},{i.temp_c:.1f}}}")
    return rows


def _pending(plan: _Plan, times: list[datetime]) -> int:
    return sum(
        len(times) if since is None else sum(1 for at in times if at > since)
        for since in plan.since.values()
    )


def demo_history_fill(
    *,
    now: datetime | None = None,
    dark: Dark | None = None,
    progress: Progress | None = None,
    days: int = HISTORY_DAYS,
) -> HistoryResult:
    """Store what is missing of the demo devices' past up to `now` (module docstring) and bring
    rollups and dashboards current. `dark` holds each site's cuts (its recorded outages): no
    power there. `progress(phase, done, total)` is called as it goes."""
    started = time.monotonic()
    now = now or timezone.now()
    dark = dark or {}
    times = history_times(now, days=days)
    plans = _plans()
    total = sum(_pending(plan, times) for plan in plans)
    result = HistoryResult()
    by_zone: dict[str, list[Instant]] = {}
    buffer: list[str] = []
    written = 0

    def flush() -> None:
        nonlocal written
        with transaction.atomic():
            result.readings += readings_insert_rows(rows="{" + ",".join(buffer) + "}")
        written += len(buffer)
        buffer.clear()
        if progress:
            progress("readings", written, total)

    for plan in plans:
        zone = plan.device.site.timezone
        if zone not in by_zone:
            by_zone[zone] = instants(times, zoneinfo.ZoneInfo(zone))
        moments, sinces = by_zone[zone], list(plan.since.values())
        if sinces and None not in sinces:  # all have a past: start after the oldest's end
            moments = [i for i in moments if i.at > min(sinces)]
        rows = _device_rows(plan, moments, dark.get(plan.device.site_id, ()))
        result.sensors += sum(1 for s in sinces if s is None or (times and times[-1] > s))
        for start in range(0, len(rows), CHUNK_ROWS):
            buffer.extend(rows[start : start + CHUNK_ROWS])
            if len(buffer) >= CHUNK_ROWS:
                flush()
    if buffer:
        flush()
    result.buckets = _rollups_current(now=now, progress=progress)
    area_metrics_refresh(now=now)
    result.seconds = time.monotonic() - started
    return result


def _rollups_current(*, now: datetime, progress: Progress | None) -> int:
    """Run the rollup refresh until no marked quarter-hour is left (plain PostgreSQL; on
    TimescaleDB it does nothing and the continuous aggregates' policies refresh them)."""
    buckets = 0
    while True:
        # Batches ten times the beat job's: a backlog of 450,000 marks goes about a third faster.
        refreshed = rollups_refresh(now=now, batch=50_000, time_budget_s=5.0)
        buckets += refreshed.buckets
        if progress:
            progress("rollups", buckets, 0)
        if refreshed.skipped:  # another refresh holds the lock: let it finish
            time.sleep(0.5)
        elif not refreshed.more:
            return buckets
