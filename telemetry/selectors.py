"""Reads for the telemetry side."""

import calendar
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from devices.models import Device, Sensor, SensorKind, Site
from telemetry import queries
from telemetry.models import FtpSource, PollSource
from telemetry.validation import SensorRef


def sensor_refs_by_public_id(*, public_ids: set[str], device: Device | None = None) -> dict:
    """Sensors named `<uid>.<key>`, limited to one device's when a device token is writing."""
    wanted: dict[str, set[str]] = {}
    for public_id in public_ids:
        uid, _, key = public_id.rpartition(".")
        if uid and key:
            wanted.setdefault(uid, set()).add(key)
    if device is not None:
        wanted = {device.uid: wanted[device.uid]} if device.uid in wanted else {}
    if not wanted:
        return {}
    rows = Sensor.objects.filter(
        device__uid__in=list(wanted), key__in={k for keys in wanted.values() for k in keys}
    ).values_list("id", "key", "device_id", "device__uid", "device__site_id")
    return {
        f"{uid}.{key}": SensorRef(
            sensor_id=sensor_id, key=key, device_id=device_id, device_uid=uid, site_id=site_id
        )
        for sensor_id, key, device_id, uid, site_id in rows
        if key in wanted.get(uid, ())
    }


def ingestion_sources() -> dict:
    """FTP sources and HTTP pollers with their health, for `GET /api/v1/sources/`."""
    ftp = list(FtpSource.objects.order_by("name"))
    polls = list(
        PollSource.objects.select_related("site")
        .prefetch_related("appliances__device")
        .order_by("site_id", "name")
    )
    return {"ftp": ftp, "http": polls}


@dataclass(frozen=True)
class Usage:
    """Energy and cost over a stretch of time, and the same for the stretch it is compared with."""

    kwh: float
    cost: Decimal
    before_kwh: float
    before_cost: Decimal

    @property
    def change_pct(self) -> int | None:
        """Percent change against the earlier stretch, None when that had nothing."""
        if self.before_kwh <= 0:
            return None
        return round((self.kwh - self.before_kwh) / self.before_kwh * 100)


@dataclass(frozen=True)
class SiteFigures:
    """What a resident's dashboard shows of one site when the page loads (then live)."""

    as_of: datetime
    currency: str
    power_w: float | None  # the sum of its devices' latest power readings
    today: Usage  # since local midnight, against yesterday until the same local time
    month: Usage  # since the 1st, against last month until the same day and time
    latest: dict[int, tuple[datetime, float]]  # sensor id -> latest (time, value)
    series: dict[int, tuple[list[float], list[float]]]  # power sensor id -> ([unix s], [W])


CHART_WINDOW = timedelta(hours=1)
# What a device's card shows: power, voltage and temperature (a heat pump's outdoor probe), and
# generation in a power unit (an inverter's output; its kWh counter is for history).
SHOWN_KINDS = (SensorKind.POWER, SensorKind.VOLTAGE, SensorKind.TEMPERATURE)


def charted(sensor: Sensor) -> bool:
    """Whether the last hour of a sensor is charted: power, or generation in a power unit."""
    return sensor.kind == SensorKind.POWER or (
        sensor.kind == SensorKind.GENERATION
        and sensor.unit.strip().lower() in queries.POWER_FACTORS
    )


def shown(sensor: Sensor) -> bool:
    """Whether a device's card shows a sensor's latest value (SHOWN_KINDS, or charted)."""
    return sensor.kind in SHOWN_KINDS or charted(sensor)


def _same_local_time(now_local: datetime, *, days: int = 0, months: int = 0) -> datetime:
    """The same wall-clock time `days` or `months` earlier (the day clamped to the month's end)."""
    if months:
        year, month = divmod(now_local.year * 12 + now_local.month - 1 - months, 12)
        month += 1
        last_day = calendar.monthrange(year, month)[1]
        earlier = now_local.replace(year=year, month=month, day=min(now_local.day, last_day))
    else:
        earlier = now_local - timedelta(days=days)  # wall-clock arithmetic within one zone
    return earlier.astimezone(UTC)


@dataclass(frozen=True)
class SensorFigures:
    """Latest readings (under 15 minutes old) and the last hour of the charted sensors."""

    latest: dict[int, tuple[datetime, float]]  # sensor id -> latest (time, value)
    series: dict[int, tuple[list[float], list[float]]]  # charted sensor id -> ([unix s], [values])


def sensor_figures(*, sensors: list[Sensor], now: datetime) -> SensorFigures:
    """The latest reading of each sensor and the per-minute means of the last hour of each
    charted one: one round trip however many sensors."""
    series: dict[int, tuple[list[float], list[float]]] = {
        s.id: ([], []) for s in sensors if charted(s)
    }
    latest, means = queries.latest_and_minute_means(
        sensor_ids=[s.id for s in sensors], series_ids=list(series), lo=now - CHART_WINDOW, now=now
    )
    for sensor_id, minute, mean in means:
        xs, ys = series[sensor_id]
        xs.append(minute)
        ys.append(mean)
    return SensorFigures(latest=latest, series=series)


@dataclass(frozen=True)
class FleetRow:
    """A fleet page's row, made once so that the row only prints: the device, the power sensor
    its live figure follows (its first by key), and that sensor's latest value (under 15 minutes
    old) in the sensor's own unit, as the live feed writes it."""

    device: Device
    power_key: str | None
    power_unit: str
    power: float | None


def fleet_rows(*, devices: list[Device], now: datetime) -> list[FleetRow]:
    """The rows of a page of the fleet: one round trip for the power sensors and their latest
    readings."""
    power = queries.latest_power_by_device(device_ids=[d.id for d in devices], now=now)
    rows = []
    for device in devices:
        key, unit, value = power.get(device.id, (None, "", None))
        rows.append(FleetRow(device=device, power_key=key, power_unit=unit, power=value))
    return rows


def dashboard_figures(*, sites: list[Site], now: datetime) -> dict[int, SiteFigures]:
    """Site id -> its figures, for a resident's dashboard: latest readings and the last hour of
    each power sensor, today's and this month's energy against the same time yesterday and last
    month (from the rollups and stored site days): a fixed number of round trips however many
    devices."""
    sensors = [
        sensor
        for site in sites
        for device in site.devices.all()
        for sensor in device.sensors.all()
        if shown(sensor)
    ]
    readings = sensor_figures(sensors=sensors, now=now)
    latest, series = readings.latest, readings.series
    factors = {
        s.id: queries.POWER_FACTORS.get(s.unit.strip().lower(), 1.0)
        for s in sensors
        if s.kind == SensorKind.POWER
    }
    spans, stretches = [], {}
    for site in sites:
        local = now.astimezone(zoneinfo.ZoneInfo(site.timezone))
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        first = midnight.replace(day=1)
        stretches[site.id] = len(spans)
        spans += [
            (site, midnight.astimezone(UTC), now),  # today
            (site, _same_local_time(midnight, days=1), _same_local_time(local, days=1)),
            (site, first.astimezone(UTC), now),  # this month
            (site, _same_local_time(first, months=1), _same_local_time(local, months=1)),
        ]
    energy = queries.sites_energy_between(spans=spans)
    figures = {}
    for site in sites:
        today, yesterday, month, last_month = energy[stretches[site.id] : stretches[site.id] + 4]
        site_power = [
            latest[s.id][1] * factors[s.id]
            for device in site.devices.all()
            for s in device.sensors.all()
            if s.id in factors and s.id in latest
        ]
        figures[site.id] = SiteFigures(
            as_of=now,
            currency=site.currency,
            power_w=sum(site_power) if site_power else None,
            today=Usage(*today, *yesterday),
            month=Usage(*month, *last_month),
            latest={s.id: latest[s.id] for s in sensors if s.id in latest},
            series=series,
        )
    return figures
