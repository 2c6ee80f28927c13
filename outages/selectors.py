"""Reads of outages and credits."""

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from django.db.models import Q, Sum

from devices.models import Site
from outages import reliability as reliability_rules
from outages.credit_rules import round_money
from outages.models import CreditEntry, CreditPolicy, Outage, OutageKind, OutageStatus, SitePolicy


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


def reliability(
    *, feeder_id: int | None, start: datetime, end: datetime, now: datetime
) -> reliability_rules.Indices:
    """IEEE 1366 indices of one feeder (None: every site) over [start, end).

    Customers served are the sites on the feeder now (a site is one customer); the interruptions
    are their site outages (not void) that overlap the period, clipped to it, an open one lasting
    until `now`. Momentary as stored (OUTAGE_MOMENTARY_S, decided on the whole outage)."""
    sites = Site.objects.all() if feeder_id is None else Site.objects.filter(feeder_id=feeder_id)
    rows = (
        Outage.objects.filter(kind=OutageKind.SITE, site__in=sites, started_at__lt=end)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gte=start))
        .exclude(status=OutageStatus.VOID)
        .values_list("site_id", "started_at", "ended_at", "momentary")
    )
    return reliability_rules.reliability_indices(
        [
            reliability_rules.Interruption(site, started, ended or max(now, started), momentary)
            for site, started, ended, momentary in rows
        ],
        customers_served=sites.count(),
        start=start,
        end=end,
    )
