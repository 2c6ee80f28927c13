"""The three credit policies PRODUCT.md names, as data (worked examples in outages.credit_rules).

None is the default: an admin picks one, or assigns them per site.
"""

from datetime import timedelta
from decimal import Decimal

from django.db import migrations

SHIPPED = [
    {
        "name": "Ofgem normal weather",
        "currency": "GBP",
        "threshold": timedelta(hours=12),
        "base_amount": Decimal("95.00"),
        "tiers": [{"after": "PT12H", "period": "PT12H", "amount": "45.00"}],
        "count_started_periods": False,
        "cap": None,
        "min_sites_affected": 1,
    },
    {
        # "Over 1 h": a cut of exactly one hour pays nothing, one a microsecond longer pays two
        # started hours.
        "name": "Delhi",
        "currency": "INR",
        "threshold": timedelta(hours=1, microseconds=1),
        "base_amount": Decimal("0.00"),
        "tiers": [
            {"after": "PT0S", "period": "PT1H", "amount": "50.00"},
            {"after": "PT2H", "period": "PT1H", "amount": "100.00"},
        ],
        "count_started_periods": True,
        "cap": None,
        "min_sites_affected": 1,
    },
    {
        "name": "New York",
        "currency": "USD",
        "threshold": timedelta(hours=72),
        "base_amount": Decimal("0.00"),
        "tiers": [{"after": "P3D", "period": "P1D", "amount": "25.00"}],
        "count_started_periods": False,
        "cap": None,
        "min_sites_affected": 20_000,
    },
]


def add_shipped(apps, schema_editor):
    CreditPolicy = apps.get_model("outages", "CreditPolicy")
    for policy in SHIPPED:
        CreditPolicy.objects.get_or_create(name=policy["name"], defaults=policy)


def remove_shipped(apps, schema_editor):
    CreditPolicy = apps.get_model("outages", "CreditPolicy")
    CreditPolicy.objects.filter(name__in=[p["name"] for p in SHIPPED]).delete()


class Migration(migrations.Migration):
    dependencies = [("outages", "0002_credit_policies_outages_ledger")]

    operations = [migrations.RunPython(add_shipped, remove_shipped)]
