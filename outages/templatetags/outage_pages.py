"""Outage panels on pages other apps own (the dashboard, the fleet page): devices never import
outages, so their templates ask here. Each tag reads through `outages.views`' selectors once for
the whole page, never once per row."""

from zoneinfo import ZoneInfo

from django import template
from django.utils import timezone

from outages import views

register = template.Library()

SYMBOLS = {"GBP": "£", "USD": "$", "EUR": "€", "INR": "₹"}


@register.simple_tag
def site_outage_panels(sites) -> dict:
    """Site id → its outage panel, for all the dashboard's sites at once."""
    return views.site_panels([site.pk for site in sites], now=timezone.now())


@register.filter
def panel_of(panels: dict, site_id: int):
    return panels.get(site_id)


@register.inclusion_tag("outages/_open_outages.html")
def open_outages_panel() -> dict:
    return views.open_outages(now=timezone.now())


@register.filter
def money(amount, currency: str) -> str:
    """£95.00, ₹200.00, $25.00; other currencies as "CHF 12.00"."""
    symbol = SYMBOLS.get(currency)
    return f"{symbol}{amount}" if symbol else f"{currency} {amount}"


@register.filter
def currency_symbol(currency: str) -> str:
    return SYMBOLS.get(currency, currency + " ")


@register.filter
def span(seconds) -> str:
    """A duration for people: "45 s", "12 min", "1 h 12 min", "2 d 3 h"."""
    seconds = int(seconds.total_seconds() if hasattr(seconds, "total_seconds") else seconds)
    days, rest = divmod(max(seconds, 0), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s" if minutes < 10 and secs else f"{minutes} min"
    return f"{secs} s"


@register.filter
def site_local(instant, tz_name: str):
    """`instant` in the site's own time zone (what the resident's clock says)."""
    try:
        zone = ZoneInfo(tz_name)
    except (KeyError, ValueError):
        zone = timezone.get_current_timezone()
    return timezone.localtime(instant, zone)


@register.filter
def add_delta(instant, delta):
    return instant + delta


@register.filter
def timeuntil_span(later, earlier) -> str:
    """The time from `earlier` to `later`, as `span` says it."""
    return span(later - earlier)
