"""Currencies' minor units (ISO 4217) and rounding to them: one rule for the energy history's
costs, the credit ledger and demand-response rewards alike."""

from decimal import ROUND_HALF_UP, Decimal

import pycountry

from django.core.exceptions import ValidationError

# Digits after the decimal point of each currency's minor unit (ISO 4217's list one) where it is
# not 2: a credit in Ugandan shillings or CFA francs is paid in whole units.
MINOR_UNIT_DIGITS = {
    "BHD": 3,
    "BIF": 0,
    "CLF": 4,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "IQD": 3,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "PYG": 0,
    "RWF": 0,
    "TND": 3,
    "UGX": 0,
    "UYI": 0,
    "UYW": 4,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
}
DEFAULT_MINOR_UNIT_DIGITS = 2
# Codes of ISO 4217 that name no money a resident is paid in (its minor unit is "N.A."):
# precious metals, bond-market and accounting units, special drawing rights, the testing code
# and "no currency".
NOT_MONEY = frozenset(
    {
        "XAD",
        "XAG",
        "XAU",
        "XBA",
        "XBB",
        "XBC",
        "XBD",
        "XDR",
        "XPD",
        "XPT",
        "XSU",
        "XTS",
        "XUA",
        "XXX",
    }
)


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of `currency`: Decimal("0.01") for GBP, USD, EUR, INR."""
    return Decimal(1).scaleb(-MINOR_UNIT_DIGITS.get(currency, DEFAULT_MINOR_UNIT_DIGITS))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """`amount` rounded half up to the minor unit of `currency`."""
    return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)


def validate_currency(code: str) -> None:
    """Refuse anything but a currency code of ISO 4217 (pycountry's list), in capitals, that
    names money (not gold, nor the testing code)."""
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
    if code in NOT_MONEY:
        raise ValidationError(
            "%(code)r is an ISO 4217 code, but not of a currency anyone is paid in (a metal, a "
            "unit of account or a test code): use the currency's code, e.g. GBP.",
            code="invalid_currency",
            params={"code": code},
        )
