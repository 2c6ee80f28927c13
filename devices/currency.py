"""Currencies' minor units (ISO 4217) and rounding to them: one rule for the energy history's
costs, the credit ledger and demand-response rewards alike."""

from decimal import ROUND_HALF_UP, Decimal

import pycountry

from django.core.exceptions import ValidationError

# Digits after the decimal point of each currency's minor unit (ISO 4217) where it is not 2.
MINOR_UNIT_DIGITS = {
    "BHD": 3,
    "CLP": 0,
    "IQD": 3,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
    "VND": 0,
}
DEFAULT_MINOR_UNIT_DIGITS = 2


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of `currency`: Decimal("0.01") for GBP, USD, EUR, INR."""
    return Decimal(1).scaleb(-MINOR_UNIT_DIGITS.get(currency, DEFAULT_MINOR_UNIT_DIGITS))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """`amount` rounded half up to the minor unit of `currency`."""
    return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)


def validate_currency(code: str) -> None:
    """Refuse anything but a currency code of ISO 4217 (pycountry's list), in capitals."""
    if not (
        isinstance(code, str)
        and len(code) == 3
        and code.isupper()
        and pycountry.currencies.get(alpha_3=code) is not None
    ):
        raise ValidationError(
            "%(code)r is no ISO 4217 currency: use its three-letter code in capitals, e.g. GBP.",
            code="invalid_currency",
            params={"code": code},
        )
