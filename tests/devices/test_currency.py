"""Currencies: which codes name money, and each one's minor unit (ISO 4217)."""

from decimal import Decimal

import pytest

from django.core.exceptions import ValidationError

from devices.currency import minor_unit, round_money, validate_currency


@pytest.mark.parametrize(
    ("currency", "unit"),
    [
        ("GBP", "0.01"),
        ("INR", "0.01"),
        ("XCD", "0.01"),
        ("JPY", "1"),
        ("UGX", "1"),
        ("XOF", "1"),
        ("XAF", "1"),
        ("PYG", "1"),
        ("KWD", "0.001"),
        ("CLF", "0.0001"),
    ],
)
def test_minor_units_are_iso_4217s(currency, unit):
    assert minor_unit(currency) == Decimal(unit)


def test_amounts_in_a_currency_without_minor_unit_round_to_whole_units():
    assert round_money(Decimal("1234.5"), "UGX") == Decimal("1235")
    assert round_money(Decimal("1234.49"), "XOF") == Decimal("1234")


@pytest.mark.parametrize("code", ["GBP", "USD", "INR", "XOF", "XCD", "CLF"])
def test_currencies_are_accepted(code):
    validate_currency(code)


@pytest.mark.parametrize("code", ["XAU", "XAG", "XDR", "XTS", "XXX"])
def test_codes_that_name_no_money_are_refused(code):
    with pytest.raises(ValidationError, match="not of a currency anyone is paid in"):
        validate_currency(code)


@pytest.mark.parametrize("code", ["gbp", "XYZ", "GB", "", None, 12])
def test_what_is_no_iso_4217_code_is_refused(code):
    with pytest.raises(ValidationError, match="is no ISO 4217 currency"):
        validate_currency(code)
