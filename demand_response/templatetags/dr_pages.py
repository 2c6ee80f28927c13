"""Demand-response panels on pages other apps own (the resident's dashboard): devices never
import demand_response, so their templates ask here, once for the whole page."""

from decimal import Decimal

from django import template
from django.utils import timezone

from demand_response import selectors
from demand_response.models import Event, SignalType
from outages.credit_rules import round_money
from outages.templatetags.outage_pages import money

register = template.Library()

CENT = Decimal("0.01")


@register.simple_tag
def site_dr_panels(sites) -> dict:
    """Site id → its invitations panel, for all the dashboard's sites at once."""
    return selectors.site_dr_panels(site_ids=[site.pk for site in sites], now=timezone.now())


@register.filter
def signal_text(event: Event) -> str:
    """What the event asks, in words: "level 2", "3 kW less", "price 0.45"."""
    value = event.signal_value.normalize()
    if event.signal_type == SignalType.LEVEL:
        return f"level {int(value)}"
    if event.signal_type == SignalType.TARGET_KW:
        return f"{value:f} kW less"
    return f"price {value:f} {event.program.currency}/kWh"


@register.filter
def reward_money(amount: Decimal, currency: str) -> str:
    """A reward as paid (rounded to the currency's minor unit), with its symbol."""
    return money(round_money(amount, currency), currency)


@register.filter
def rate_money(amount: Decimal, currency: str) -> str:
    """A rate per kWh as the program sets it: to the cent at least, more digits if it has
    them (0.2375, not 0.24)."""
    exact = amount.normalize()
    return money(exact if exact.as_tuple().exponent < -2 else amount.quantize(CENT), currency)


@register.filter
def kwh(amount: Decimal | None) -> str:
    """kWh for people: two decimals."""
    return "\N{EN DASH}" if amount is None else f"{amount.quantize(CENT)}"
