"""The resident dashboard's figures (a devices page): devices never import telemetry, so the
template asks here, once for all its sites (`selectors.dashboard_figures`)."""

from django import template
from django.utils import timezone

from devices.models import SensorKind
from telemetry import selectors

register = template.Library()
NO_READING = "\N{EN DASH}"  # what the live page shows until a reading comes


@register.simple_tag
def site_figures(sites) -> dict:
    """Site id -> its `SiteFigures`, for all the dashboard's sites at once."""
    return selectors.dashboard_figures(sites=list(sites), now=timezone.now())


@register.filter
def figures_of(figures: dict, site_id: int):
    return figures.get(site_id)


@register.filter
def latest_value(figures, sensor_id: int) -> float | None:
    """A sensor's latest value, or None when it has none under 15 minutes old."""
    latest = figures.latest.get(sensor_id) if figures else None
    return None if latest is None else latest[1]


@register.filter
def reading(value: float | None) -> str:
    """A reading as the live page writes it (live.js formatNumber): whole numbers from 1,000,
    else one decimal."""
    if value is None:
        return NO_READING
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.1f}"


@register.filter
def kwh(value: float) -> str:
    """kWh to a precision that fits: 0.04, 3.2, 41, 1,204."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@register.filter
def power(value: float | None) -> str:
    """Watts as a person reads them: 850 W, 1.25 kW."""
    if value is None:
        return NO_READING
    return f"{value / 1000:.2f} kW" if abs(value) >= 1000 else f"{value:.0f} W"


@register.simple_tag
def chart_series(figures: dict) -> dict:
    """{power sensor id: [[unix s], [values as stored]]}: the last hour of every site's charts,
    for the page's JSON."""
    return {
        str(sensor_id): [xs, ys]
        for site_figures in figures.values()
        for sensor_id, (xs, ys) in site_figures.series.items()
    }


@register.filter
def power_sensor(device):
    """The device's first power sensor (from its prefetched sensors): the one its chart shows."""
    return next((s for s in device.sensors.all() if s.kind == SensorKind.POWER), None)


@register.simple_tag
def device_figures(device):
    """The latest readings and the last hour of power of one device (its device page)."""
    return selectors.sensor_figures(sensors=list(device.sensors.all()), now=timezone.now())


@register.simple_tag
def device_series(figures) -> dict:
    """{power sensor id: [[unix s], [values]]} of one device's figures, for the page's JSON."""
    return {str(sensor_id): [xs, ys] for sensor_id, (xs, ys) in figures.series.items()}


@register.simple_tag
def fleet_rows(devices) -> list:
    """The rows of a page of the fleet, with each device's latest power (one round trip)."""
    return selectors.fleet_rows(devices=list(devices), now=timezone.now())
