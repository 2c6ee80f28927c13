"""Which policy prices a site's cuts, and what the ledger holds per currency."""

from datetime import timedelta
from decimal import Decimal

import pytest

from outages import services
from outages.models import CreditPolicy
from outages.selectors import credit_balance, credit_policy_for_site

pytestmark = pytest.mark.django_db


def test_site_policy_else_default_else_none(alice_home, bob_home):
    alice, bob = alice_home["site"], bob_home["site"]
    delhi = CreditPolicy.objects.get(name="Delhi")

    assert credit_policy_for_site(alice) is None  # no default, no policy of its own

    default = CreditPolicy.objects.create(
        name="House", currency="EUR", threshold=timedelta(hours=1), base_amount=1, is_default=True
    )
    services.site_credit_policy_set(site_id=alice.id, policy_id=delhi.id)

    assert credit_policy_for_site(alice) == delhi
    assert credit_policy_for_site(bob.id) == default

    services.site_credit_policy_set(site_id=alice.id, policy_id=None)

    assert credit_policy_for_site(alice) == default


def test_balance_sums_entries_per_currency_over_the_sites_asked(alice_home, bob_home):
    alice, bob = alice_home["site"].id, bob_home["site"].id
    for site_id, event, amount, currency in [
        (alice, 1, "95.00", "GBP"),
        (alice, 2, "45.00", "GBP"),
        (alice, 3, "200.00", "INR"),
        (bob, 4, "7.00", "GBP"),
        (bob, 5, "3.00", "EUR"),
    ]:
        services.credit_settle(
            site_id=site_id, amount=Decimal(amount), currency=currency, memo="", dr_event_id=event
        )
    services.credit_settle(
        site_id=bob, amount=Decimal(0), currency="EUR", memo="taken back", dr_event_id=5
    )

    assert credit_balance([alice]) == {"GBP": Decimal("140.00"), "INR": Decimal("200.00")}
    assert credit_balance([bob]) == {"GBP": Decimal("7.00")}  # EUR back to 0: left out
    assert credit_balance([alice, bob]) == {"GBP": Decimal("147.00"), "INR": Decimal("200.00")}
    assert credit_balance([]) == {}
