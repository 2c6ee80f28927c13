"""Credit policies' validation and constraints, the shipped policies, and the ledger that the
database itself keeps append-only."""

from datetime import timedelta
from decimal import Decimal

import pytest

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.utils import ProgrammingError

from outages.credit_rules import credit_for
from outages.models import CreditEntry, CreditPolicy, Outage
from tests.outages.conftest import at
from tests.outages.test_credit_rules import DELHI_EXAMPLES, NEW_YORK_EXAMPLES, OFGEM_EXAMPLES

pytestmark = pytest.mark.django_db


def policy(**fields) -> CreditPolicy:
    values = {
        "name": "Test",
        "currency": "GBP",
        "threshold": timedelta(hours=12),
        "base_amount": Decimal("95.00"),
    }
    return CreditPolicy(**{**values, **fields})


@pytest.mark.parametrize(
    ("name", "examples"),
    [
        ("Ofgem normal weather", OFGEM_EXAMPLES),
        ("Delhi", DELHI_EXAMPLES),
        ("New York", NEW_YORK_EXAMPLES),
    ],
)
def test_shipped_policy_rows_price_the_worked_examples(name, examples):
    shipped = CreditPolicy.objects.get(name=name)

    assert [credit_for(shipped, duration) for duration, _ in examples] == [
        Decimal(expected) for _, expected in examples
    ]
    shipped.full_clean()  # the shipped data passes the admin's own checks


def test_shipped_policies_are_none_of_them_the_default():
    assert set(CreditPolicy.objects.values_list("name", "min_sites_affected", "is_default")) == {
        ("Ofgem normal weather", 1, False),
        ("Delhi", 1, False),
        ("New York", 20_000, False),
    }


def test_clean_normalises_tiers_to_iso_8601():
    candidate = policy(tiers=[{"after": "12:00:00", "period": "PT12H", "amount": "45"}])

    candidate.full_clean()

    assert candidate.tiers == [{"after": "PT12H", "period": "PT12H", "amount": "45"}]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"tiers": [{"after": "PT1H"}]}, "tiers", "missing"),
        ({"currency": "gbp"}, "currency", "no ISO 4217 currency"),
        ({"cap": Decimal("10.005")}, "cap", "whole number of 0.01"),
        ({"threshold": timedelta(hours=-1)}, "threshold", "must not be negative"),
        ({"min_sites_affected": 0}, "min_sites_affected", "greater than or equal to 1"),
        ({"base_amount": Decimal("-1")}, "base_amount", "greater than or equal to 0"),
    ],
)
def test_invalid_policy_is_refused_with_the_field_and_reason(fields, field, message):
    with pytest.raises(ValidationError) as error:
        policy(**fields).full_clean()

    assert message in " ".join(error.value.message_dict[field])


def test_at_most_one_policy_is_the_default():
    policy(name="First", is_default=True).save()
    second = policy(name="Second", is_default=True)

    with pytest.raises(ValidationError, match="already the default"):
        second.full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        second.save()
    policy(name="Third").save()  # any number of non-default policies


@pytest.fixture
def entry(alice_home):
    outage = Outage.objects.create(
        site=alice_home["site"], started_at=at(0), ended_at=at(720), status="ended"
    )
    return CreditEntry.objects.create(
        site=alice_home["site"],
        outage=outage,
        amount=Decimal("95.00"),
        currency="GBP",
        revision=1,
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE outages_creditentry SET amount = 1000 WHERE id = %s",
        "DELETE FROM outages_creditentry WHERE id = %s",
    ],
)
def test_database_refuses_to_change_or_delete_a_ledger_entry(entry, statement):
    with (
        pytest.raises(ProgrammingError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, [entry.id])

    entry.refresh_from_db()
    assert entry.amount == Decimal("95.00")


def test_orm_update_of_a_ledger_entry_is_refused_too(entry):
    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic():
        CreditEntry.objects.filter(pk=entry.pk).update(memo="edited")


def test_a_ledger_entry_pays_for_exactly_one_reason(alice_home):
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditEntry.objects.create(
            site=alice_home["site"], amount=Decimal(1), currency="GBP", revision=1
        )
