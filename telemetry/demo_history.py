"""A past for the demo (`make run`): 90 days of synthetic readings for every demo device.

Every 15 minutes for 90 days, every minute for the last 2 days, per device profile
(devices/demo.py): a household with weekday and weekend shapes, a heat pump that follows a
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

import math
import time
import zlib
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from devices.demo import DEMO_SITES
from devices.models import Device
from telemetry.rollups import area_metrics_refresh, rollups_refresh
from telemetry.services import EPOCH, readings_insert_rows

HISTORY_DAYS = 90
FINE_DAYS = 2
COARSE = timedelta(minutes=15)
FINE = timedelta(minutes=1)
CHUNK_ROWS = 50_000
# Energy counters of devices without history start here: above any counter a simulated Pi
# starts from (pi_agent: at most 20,000 kWh), so a Pi's first live reading reads as a counter
# reset (its quarter-hour counts from the lower value), never as thousands of kWh used at once.
COUNTER_START_KWH = 30_000.0
PV_PEAK_KW = 6.0  # the PV home's panels (kWp)
PORTO_LATITUDE = 41.15
SOLAR_NOON_UTC_H = 12 + 8.61 / 15  # Porto's longitude, 8.61 degrees west

Dark = Mapping[int, Sequence[tuple[datetime, datetime | None]]]  # site id -> [(from, to)]
Progress = Callable[[str, int, int], None]  # phase, done, total


@dataclass
class HistoryResult:
    readings: int = 0  # new rows stored
    sensors: int = 0  # sensors that got at least one
    buckets: int = 0  # quarter-hours rolled up
    seconds: float = 0.0


def _noise(seed: int, n: int) -> float:
    """A uniform number in [0, 1) for (seed, n): splitmix64's finalizer, no state."""
    x = (seed * 0x9E3779B97F4A7C15 + n * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) / 2**64


def _bell(hour: float, centre: float, width: float) -> float:
    return math.exp(-(((hour - centre) / width) ** 2))


@dataclass(slots=True)
class Instant:
    """What every profile needs of one instant, worked out once per time zone."""

    at: datetime
    us: int  # microseconds since the epoch
    minute: int  # minutes since the epoch: the noise index of readings
    hour: float  # local
    weekend: bool
    day: int  # local date's ordinal: the noise index of daily choices
    temp_c: float
    sun: float  # clear-sky PV output per kWp, kW


def _temperature(at: datetime, hour: float) -> float:
    """Outdoor temperature in Porto: a seasonal curve, a daily swing (coldest at 6, warmest at
    15) and weather fronts, the same for every site."""
    doy = at.timetuple().tm_yday
    season = 15.0 + 6.0 * math.cos(2 * math.pi * (doy - 205) / 365.25)
    swing = 4.0 * math.cos(2 * math.pi * (hour - 15.0) / 24.0)
    # Fronts: a value per UTC day, blended linearly into the next day's.
    days = (at - EPOCH).total_seconds() / 86_400
    whole = int(days)
    fraction = days - whole
    front = (1 - fraction) * _noise(7, whole) + fraction * _noise(7, whole + 1)
    return season + swing + 8.0 * (front - 0.5)


def _clear_sky_kw_per_kwp(at: datetime) -> float:
    doy = at.timetuple().tm_yday
    declination = 23.44 * math.sin(2 * math.pi * (doy - 80) / 365.25)
    day_length = 12.0 + 3.3 * math.sin(2 * math.pi * (doy - 80) / 365.25)
    utc_hour = at.hour + at.minute / 60
    x = (utc_hour - (SOLAR_NOON_UTC_H - day_length / 2)) / day_length
    if not 0.0 < x < 1.0:
        return 0.0
    noon_elevation = math.radians(90.0 - PORTO_LATITUDE + declination)
    return 0.85 * math.sin(noon_elevation) * math.sin(math.pi * x) ** 1.5


def instants(times: Sequence[datetime], tz: zoneinfo.ZoneInfo) -> list[Instant]:
    out = []
    for at in times:
        local = at.astimezone(tz)
        hour = local.hour + local.minute / 60
        us = (at - EPOCH) // timedelta(microseconds=1)
        out.append(
            Instant(
                at=at,
                us=us,
                minute=us // 60_000_000,
                hour=hour,
                weekend=local.weekday() >= 5,
                day=local.toordinal(),
                temp_c=_temperature(at, hour),
                sun=_clear_sky_kw_per_kwp(at),
            )
        )
    return out


# --- profiles: watts at an instant for a device seed --------------------------------------


def household_w(seed: int, i: Instant) -> float:
    base = 150.0 + 150.0 * _noise(seed, 1)
    day = 0.8 + 0.4 * _noise(seed, i.day)
    h = i.hour
    if i.weekend:  # up later, home all day
        activity = 500 * _bell(h, 9.5, 1.2) + 450 * _bell(h, 13.5, 1.6) + 850 * _bell(h, 20, 1.7)
    else:  # a morning peak, out at work, a large evening peak
        activity = 450 * _bell(h, 7.25, 0.8) + 120 * _bell(h, 13, 1.5) + 900 * _bell(h, 19.5, 1.6)
    # Lights and a heater more on cold dark evenings.
    activity *= 1.0 + 0.3 * min(max((16.0 - i.temp_c) / 10.0, 0.0), 1.0)
    spike = 0.0
    if _noise(seed, i.minute) < 0.02 + 0.1 * activity / 1000:  # kettle, oven, washing machine
        spike = 1200.0 + 1000.0 * _noise(seed + 1, i.minute)
    fridge = 60.0 + 40.0 * math.sin(i.minute / 7.0)
    return (base + activity * day + fridge + spike) * (0.95 + 0.1 * _noise(seed + 2, i.minute))


def heat_pump_w(seed: int, i: Instant) -> float:
    demand = max(0.0, 17.0 - i.temp_c) * (230.0 + 60.0 * _noise(seed, 1))
    if i.hour >= 23 or i.hour < 6:
        demand *= 0.65  # night setback
    elif 6 <= i.hour < 8:
        demand *= 1.3  # warming up for the morning
    if demand < 300.0:  # below its lowest modulation it cycles on and off
        return 300.0 if _noise(seed, i.minute) < demand / 300.0 else 8.0
    return min(demand, 3500.0) * (0.88 + 0.24 * _noise(seed + 2, i.minute))


def ev_w(seed: int, i: Instant) -> float:
    start, length = (11.0, 3.0) if i.weekend else (18.5, 2.5)
    charges = _noise(seed, i.day) < (0.3 if i.weekend else 0.55)
    begin = start + length * _noise(seed + 1, i.day)
    end = begin + 1.2 + 2.8 * _noise(seed + 2, i.day)
    if charges and begin <= i.hour < end:
        return 7200.0 * (0.97 + 0.03 * _noise(seed, i.minute))
    return 3.0 + 20.0 * _bell(i.hour, 20, 1.5)  # its standby and the garage light


def shop_w(seed: int, i: Instant) -> float:
    """A bakery: ovens before dawn, open all day Monday to Saturday, Sunday mornings only."""
    sunday = date.fromordinal(i.day).weekday() == 6
    h = i.hour
    watts = 600.0  # refrigeration, always
    if not sunday and 4.5 <= h < 7.5:
        watts += 6000.0 * (0.9 + 0.2 * _noise(seed, i.minute))
    if 7 <= h < (13 if sunday else 19.5):
        watts += 1500.0 + (2000.0 if _noise(seed + 1, i.minute) < 0.15 else 0.0)
    return watts * (0.95 + 0.1 * _noise(seed + 2, i.minute))


def pv_w(seed: int, i: Instant) -> float:
    """The PV home's panels; clouds are per day and city-wide, so its two devices agree."""
    if i.sun == 0.0:
        return 0.0
    cloud = 0.45 + 0.55 * _noise(11, i.day)
    return 1000.0 * PV_PEAK_KW * i.sun * cloud * (0.96 + 0.04 * _noise(12, i.minute))


def household_pv_w(seed: int, i: Instant) -> float:
    return household_w(seed, i) - pv_w(seed, i)


PROFILES: dict[str, Callable[[int, Instant], float]] = {
    "household": household_w,
    "heat_pump": heat_pump_w,
    "ev": ev_w,
    "shop": shop_w,
    "pv": pv_w,
    "household_pv": household_pv_w,
}


def voltage_v(seed: int, i: Instant, watts: float) -> float:
    """230 V ± 2 %: a little high at night, sagging under the home's load, rising as it
    exports."""
    diurnal = 0.006 * math.cos(2 * math.pi * (i.hour - 3.0) / 24.0)
    volts = 230.0 * (1 + diurnal) - 0.0008 * watts + 0.8 * (_noise(seed + 3, i.minute) - 0.5)
    return min(max(volts, 225.4), 234.6)


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
