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


# Imported here, not at the top, to keep this addition self-contained at the end of the module.
from datetime import datetime  # noqa: E402

from outages.models import Outage, OutageKind, OutageStatus  # noqa: E402


def site_outage_spans(
    *, site_ids: Iterable[int], start: datetime, end: datetime
) -> dict[int, list[tuple[datetime, datetime | None]]]:
    """The site outages (void ones left out, momentary ones kept) of these sites that overlap
    [start, end), by site: (started_at, ended_at, None while still open), earliest first."""
    spans: dict[int, list[tuple[datetime, datetime | None]]] = defaultdict(list)
    rows = (
        Outage.objects.filter(site_id__in=list(site_ids), kind=OutageKind.SITE, started_at__lt=end)
        .exclude(status=OutageStatus.VOID)
        .exclude(ended_at__lte=start)
        .order_by("started_at")
        .values_list("site_id", "started_at", "ended_at")
    )
    for site_id, started_at, ended_at in rows:
        spans[site_id].append((started_at, ended_at))
    return dict(spans)
