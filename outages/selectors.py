"""Reads of outages and credits."""

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from django.db.models import Sum

from devices.models import Site
from outages.credit_rules import round_money
from outages.models import CreditEntry, CreditPolicy, SitePolicy


def credit_policy_for_site(site: Site | int) -> CreditPolicy | None:
    """The policy that prices `site`'s cuts: its own, else the default, else None (no credit)."""
    site_id = site if isinstance(site, int) else site.pk
    choice = SitePolicy.objects.select_related("policy").filter(site_id=site_id).first()
    if choice is not None:
        return choice.policy
    return CreditPolicy.objects.filter(is_default=True).first()


def site_grid(site_id: int) -> tuple[int, int] | None:
    """The (feeder id, transformer id) the site hangs from; None for a site on no feeder."""
    row = (
        Site.objects.filter(pk=site_id, feeder__isnull=False)
        .values_list("feeder_id", "feeder__transformer_id")
        .first()
    )
    return None if row is None else (row[0], row[1])


def credit_balance(site_ids: Iterable[int]) -> dict[str, Decimal]:
    """What the ledger holds for these sites, per currency: `{"GBP": Decimal("140.00")}`.

    Currencies whose entries sum to zero (a credit later voided) are left out."""
    totals = (
        CreditEntry.objects.filter(site_id__in=list(site_ids))
        .values("currency")
        .annotate(total=Sum("amount"))
        .order_by("currency")
    )
    return {
        row["currency"]: round_money(row["total"], row["currency"])
        for row in totals
        if row["total"] != 0
    }


def outage_credit_totals(*, site_id: int) -> dict[int, dict[str, Decimal]]:
    """For each of the site's outages with ledger entries: the sum of its entries per currency."""
    totals: dict[int, dict[str, Decimal]] = defaultdict(dict)
    rows = (
        CreditEntry.objects.filter(site_id=site_id, outage__isnull=False)
        .values("outage_id", "currency")
        .annotate(total=Sum("amount"))
        .order_by()
    )
    for row in rows:
        totals[row["outage_id"]][row["currency"]] = row["total"]
    return dict(totals)


def credit_paid(
    *, site_id: int, outage_id: int | None = None, dr_event_id: int | None = None
) -> dict[str, Decimal]:
    """What the ledger has paid the site for one reason, per currency."""
    reason = {"outage_id": outage_id} if outage_id is not None else {"dr_event_id": dr_event_id}
    return dict(
        CreditEntry.objects.filter(site_id=site_id, **reason)
        .values("currency")
        .annotate(total=Sum("amount"))
        .order_by()
        .values_list("currency", "total")
    )
