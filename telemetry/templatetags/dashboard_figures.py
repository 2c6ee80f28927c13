"""The resident dashboard's figures (a devices page): devices never import telemetry, so the
template asks here, once for all its sites (`selectors.dashboard_figures`)."""

from html import escape

from django import template
from django.template.defaultfilters import timesince
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.utils.timezone import template_localtime

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
def chart_sensor(device):
    """The sensor a device's chart shows (from its prefetched sensors): its first power sensor,
    else its first charted one (an inverter's output)."""
    sensors = device.sensors.all()
    return next((s for s in sensors if s.kind == SensorKind.POWER), None) or next(
        (s for s in sensors if selectors.charted(s)), None
    )


# The order of a card's figures: what the device draws or makes first, then the supply, then the
# weather.
CARD_ORDER = {SensorKind.POWER: 0, SensorKind.GENERATION: 1, SensorKind.VOLTAGE: 2}


@register.filter
def shown_sensors(device) -> list:
    """The sensors whose latest values a device's card shows: power, generation, voltage, then
    the rest, each kind in key order."""
    shown = [s for s in device.sensors.all() if selectors.shown(s)]
    return sorted(shown, key=lambda s: (CARD_ORDER.get(s.kind, 3), s.key))


@register.simple_tag
def device_figures(device):
    """The latest readings and the last hour of power of one device (its device page)."""
    return selectors.sensor_figures(sensors=list(device.sensors.all()), now=timezone.now())


@register.simple_tag
def device_series(figures) -> dict:
    """{power sensor id: [[unix s], [values]]} of one device's figures, for the page's JSON."""
    return {str(sensor_id): [xs, ys] for sensor_id, (xs, ys) in figures.series.items()}


# A fleet page's 100 rows are made here rather than by the template language, where each
# row's 20-odd variables, filters and tags were most of the page's template time (cProfile,
# bench/pages); here the rows take ~3.5 ms, `timesince` 1.2 of them. Every value is escaped as
# the template escapes it (`html.escape` is what Django's `escape` does to a string, without
# its lazy-string wrapper, whose cost showed: `format_html` a row cost more than the row);
# `data-ts` is the `date:"c"` filter's ISO form, in the current zone.
_NO_POWER = '<span class="muted">\N{EN DASH}</span>'


@register.simple_tag
def fleet_rows(devices) -> str:
    """The table rows of a page of the fleet (empty without devices), each device with its
    latest power (one round trip for them all), linked to its page and its site's history."""
    device_url = reverse("device-page", args=["UID"]).removesuffix("UID/")
    site_url = reverse("site-history", args=[0]).removesuffix("0/history/")
    rows = []
    for row in selectors.fleet_rows(devices=list(devices), now=timezone.now()):
        device, site = row.device, row.device.site
        uid = escape(device.uid)
        power = _NO_POWER
        if row.power_key:
            power = (
                f'<span data-metric-for="{uid}:{escape(row.power_key)}">{reading(row.power)}'
                f'</span> <span class="muted small">{escape(row.power_unit)}</span>'
            )
        room = f" / {escape(device.room.name)}" if device.room else ""
        feeder = escape((site.feeder.code if site.feeder else "") or "\N{EM DASH}")
        status = "online" if device.online else "offline"
        seen_at, seen = "", "never"
        if device.last_seen:
            seen_at = template_localtime(device.last_seen).isoformat()
            seen = escape(f"{timesince(device.last_seen)} ago")
        rows.append(f"""
    <tr data-device="{uid}">
      <td><a href="{escape(device_url)}{uid}/"><code>{uid}</code> {escape(device.name)}</a></td>
      <td class="num">{power}</td>
      <td><a href="{escape(site_url)}{device.site_id}/history/">{escape(site.name)}</a>{room}</td>
      <td>{feeder}</td>
      <td><span class="badge {status}" data-status-for="{uid}">{status}</span></td>
      <td><span data-last-seen-for="{uid}" data-ts="{seen_at}">{seen}</span></td>
      <td class="hide-phone">{escape(str(device.get_kind_display()))}</td>
    </tr>""")
    return mark_safe("".join(rows))  # noqa: S308 (every value escaped above)
