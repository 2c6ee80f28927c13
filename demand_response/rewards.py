"""What a site earns for the energy it delivered in an event: one rule for the page, the API and
the ledger alike (no ORM)."""

from decimal import Decimal

from outages.credit_rules import round_money


def reward_for(*, delivered_kwh: Decimal, rate: Decimal, currency: str) -> Decimal:
    """`delivered_kwh` times `rate` (per kWh) in `currency`, rounded once, half up, to its minor
    unit. Nothing delivered (or less than nothing) earns nothing."""
    return round_money(max(delivered_kwh, Decimal(0)) * rate, currency)
