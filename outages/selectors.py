"""Reads of outages and credits."""

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection
from django.db.models import Count, F, Prefetch, Q, QuerySet, Sum

from devices.models import Device, Site
from devices.selectors import user_is_operator
from outages import reliability as reliability_rules
from outages.credit_rules import CreditQuote, credit_quote, round_money
from outages.models import (
    CreditEntry,
    CreditPolicy,
    Outage,
    OutageKind,
    OutageStatus,
    PowerEvent,
    SitePolicy,
    SiteReconcile,
    SuspectedOutage,
    SuspectedSite,
    SuspectedStatus,
)
from outages.suspected_outages import SiteCut


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


def feeders_site_ids(feeder_ids: Iterable[int]) -> dict[int, list[int]]:
    """The ids of each feeder's sites, in one query (a feeder with no site is left out).
    Outages are read by these ids rather than joined to the sites: in a storm the outage table
    grows faster than its statistics, and the join planned for a table of a few rows scanned
    the feeder's sites once per outage (130 ms a query at 2,500 outages, bench/outages); by
    site id it is an index scan whatever the statistics."""
    sites: dict[int, list[int]] = defaultdict(list)
    for site_id, feeder_id in Site.objects.filter(feeder_id__in=list(feeder_ids)).values_list(
        "pk", "feeder_id"
    ):
        sites[feeder_id].append(site_id)
    return dict(sites)


@dataclass(frozen=True, slots=True)
class GridRow:
    """An outage as the grid regrouping reads it: plain values, no model (a storm's drain reads
    thousands of them, and building models was most of its reading)."""

    pk: int
    unit: int | None  # a site outage's site, a feeder outage's feeder; None for a transformer's
    started_at: datetime
    ended_at: datetime | None
    momentary: bool
    sites_affected: int
    customer_minutes: Decimal | None
    grid_outage_id: int | None
    status: str


_GRID_ROW_FIELDS = (
    "pk",
    "started_at",
    "ended_at",
    "momentary",
    "sites_affected",
    "customer_minutes",
    "grid_outage_id",
    "status",
)


# The live site outages of some sites starting in a span, one such (sites, first, last) per
# feeder OR-ed: each site array is one parameter (as `IN` lists, the storm's 2,500 placeholders
# took psycopg longer to parse than PostgreSQL to run), and whatever the table's statistics say
# the plan is index scans or one scan of the table, never a loop per site.
_SITE_MEMBERS_NEAR = """
SELECT o.site_id, o.id, o.started_at, o.ended_at, o.momentary, o.sites_affected,
    o.customer_minutes, o.grid_outage_id, o.status
FROM outages_outage o
WHERE o.kind = 'site' AND o.status <> 'void' AND ({spans})
ORDER BY o.started_at, o.id
"""
_SITE_SPAN = "(o.site_id = ANY(%s::bigint[]) AND o.started_at BETWEEN %s AND %s)"


def grid_members_near(
    *, kind: str, spans: dict[int, tuple[datetime, datetime]], sites_of: dict[int, list[int]]
) -> dict[int, list[GridRow]]:
    """The live outages that make the grid outages of each group of `spans`, starting within
    the group's (first, last), in one query for all the groups: for `kind` "site", a feeder's
    site outages (the feeder's sites given by `sites_of`: read by site id, see
    `feeders_site_ids`); for "feeder", a transformer's feeder outages. By group, in start order."""
    if not spans:
        return {}
    if kind == OutageKind.SITE:
        group_of = {site: feeder for feeder in spans for site in sites_of.get(feeder, [])}
        sql = _SITE_MEMBERS_NEAR.format(spans=" OR ".join([_SITE_SPAN] * len(spans)))
        params = [
            v for f, (first, last) in spans.items() for v in (sites_of.get(f, []), first, last)
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = [(group_of[row[0]], *row) for row in cursor.fetchall()]
    else:
        condition = Q()
        for transformer_id, (first, last) in spans.items():
            condition |= Q(feeder__transformer_id=transformer_id, started_at__range=(first, last))
        rows = (
            Outage.objects.filter(condition, kind=kind)
            .exclude(status=OutageStatus.VOID)
            .order_by("started_at", "pk")
            .values_list("feeder__transformer_id", "feeder_id", *_GRID_ROW_FIELDS)
        )
    found: dict[int, list[GridRow]] = defaultdict(list)
    for group, unit, *values in rows:
        found[group].append(GridRow(values[0], unit, *values[1:]))
    return dict(found)


def grid_outages_near(
    *, kind: str, near: dict[int, tuple[datetime, datetime, list[int]]]
) -> dict[int, list[GridRow]]:
    """The stored grid outages of `kind` ("feeder" or "transformer"), void ones too, that each
    group's (first, last, linked) may regroup: of the group (feeder or transformer) and starting
    within (first, last), or one of `linked`. In one query for all the groups; by group."""
    if not near:
        return {}
    group = "feeder_id" if kind == OutageKind.FEEDER else "transformer_id"
    condition = Q()
    for group_id, (first, last, linked) in near.items():
        condition |= Q(**{group: group_id}) & (
            Q(started_at__range=(first, last)) | Q(pk__in=linked)
        )
    found: dict[int, list[GridRow]] = defaultdict(list)
    for group_id, *values in (
        Outage.objects.filter(condition, kind=kind)
        .order_by("started_at", "pk")
        .values_list(group, *_GRID_ROW_FIELDS)
    ):
        unit = group_id if kind == OutageKind.FEEDER else None
        found[group_id].append(GridRow(values[0], unit, *values[1:]))
    return dict(found)


def site_cuts(*, site_ids: list[int], since: datetime) -> dict[int, list[SiteCut]]:
    """The live outages of these sites not ended before `since`, by site, as the suspected
    outages read them: in one query, the sites as one array parameter."""
    cuts: dict[int, list[SiteCut]] = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, site_id, started_at, ended_at, grid_outage_id FROM outages_outage "
            "WHERE kind = 'site' AND status <> 'void' AND site_id = ANY(%s::bigint[]) "
            "AND (ended_at IS NULL OR ended_at >= %s)",
            [site_ids, since],
        )
        for key, site_id, start, end, grid in cursor.fetchall():
            cuts[site_id].append(SiteCut(key, start, end, grid))
    return cuts


def suspected_outages_near(*, feeder_ids: list[int], since: datetime) -> list[SuspectedOutage]:
    """The feeders' suspected outages a sync may change (still suspected, or started since
    `since`), with their drops."""
    return list(
        SuspectedOutage.objects.filter(feeder_id__in=feeder_ids)
        .filter(Q(status=SuspectedStatus.SUSPECTED) | Q(started_at__gte=since))
        .prefetch_related("drops")
    )


def feeders_with_suspicions(feeder_ids: list[int], *, since: datetime) -> list[int]:
    """Those of the feeders that have a suspected outage still suspected or started since
    `since`: the ones whose suspected outages a reconcile must look at again (replayed reports
    confirm them, a voided cut unconfirms them). Feeders with only drops go to the suspected
    outages' own drain (`feeders_dropped`)."""
    if not feeder_ids:
        return []
    return sorted(
        set(
            SuspectedOutage.objects.filter(feeder_id__in=feeder_ids)
            .filter(Q(status=SuspectedStatus.SUSPECTED) | Q(started_at__gte=since))
            .values_list("feeder_id", flat=True)
        )
    )


def feeders_dropped(feeder_ids: list[int], *, since: datetime) -> list[int]:
    """Those of the feeders with a device whose socket dropped abruptly since `since`."""
    if not feeder_ids:
        return []
    return sorted(
        set(
            Device.objects.filter(
                site__feeder_id__in=feeder_ids, dropped_at__gte=since
            ).values_list("site__feeder_id", flat=True)
        )
    )


def sites_grid(site_ids: Iterable[int]) -> dict[int, tuple[int, int] | None]:
    """`site_grid` of many sites in one query: site id -> (feeder id, transformer id), or None
    for a site on no feeder; ids of no site (deleted since) are left out."""
    return {
        site_id: None if feeder_id is None else (feeder_id, transformer_id)
        for site_id, feeder_id, transformer_id in Site.objects.filter(
            pk__in=list(site_ids)
        ).values_list("pk", "feeder_id", "feeder__transformer_id")
    }


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


# --- reads of the outages API ------------------------------------------------------------------


def outage_list(*, user: AbstractBaseUser) -> QuerySet[Outage]:
    """The outages the user may see: all for operators, their own sites' for residents."""
    qs = Outage.objects.select_related("site", "credit_policy")
    return qs if user_is_operator(user) else qs.filter(site__residents=user)


def credit_entry_list(*, user: AbstractBaseUser) -> QuerySet[CreditEntry]:
    """The ledger entries the user may see: all for operators, their own sites' for residents."""
    qs = CreditEntry.objects.all()
    return qs if user_is_operator(user) else qs.filter(site__residents=user)


def sites_with_credit_policy(sites: QuerySet[Site]) -> QuerySet[Site]:
    """`sites`, each with `own_credit_policy_id`: the id of its own policy, None when the
    default applies; in the same query, so a list of sites costs nothing more."""
    return sites.annotate(own_credit_policy_id=F("credit_policy_choice__policy_id"))


@dataclass(frozen=True)
class OutageCredit:
    """What an outage has earned: the ledger's sums per currency, the policy that prices it, and
    while it is open the live quote (`credit_quote` for the time since it started)."""

    paid: dict[str, Decimal]
    policy: CreditPolicy | None
    quote: CreditQuote | None
    quoted_at: datetime


def outage_credits(outages: Sequence[Outage], *, now: datetime) -> dict[int, OutageCredit]:
    """Credit of each outage, in at most three queries whatever their number.

    An outage keeps the policy it was first settled under; one never settled (still open) is
    priced by its site's policy now. The quote mirrors the ledger's rule: a policy that needs
    more than one site affected pays a site outage nothing yet (see `site_outages_reconcile`).
    """
    ids = [outage.pk for outage in outages]
    paid: dict[int, dict[str, Decimal]] = defaultdict(dict)
    rows = (
        CreditEntry.objects.filter(outage_id__in=ids)
        .values("outage_id", "currency")
        .annotate(total=Sum("amount"))
        .order_by("currency")
    )
    for row in rows:
        if row["total"] != 0:
            paid[row["outage_id"]][row["currency"]] = round_money(row["total"], row["currency"])
    unsettled = {o.site_id for o in outages if o.settled_at is None and o.site_id is not None}
    current = credit_policies_for_sites(unsettled) if unsettled else {}
    credits = {}
    for outage in outages:
        if outage.settled_at is not None:
            policy = outage.credit_policy
        else:
            policy = current.get(outage.site_id)
        quote = None
        if outage.status == OutageStatus.OPEN and policy is not None:
            if policy.min_sites_affected > 1:
                quote = CreditQuote(
                    amount=round_money(Decimal(0), policy.currency),
                    next_step_after=None,
                    next_amount=None,
                )
            else:
                quote = credit_quote(policy, max(now - outage.started_at, timedelta(0)))
        credits[outage.pk] = OutageCredit(
            paid=paid.get(outage.pk, {}), policy=policy, quote=quote, quoted_at=now
        )
    return credits


def credit_policies_for_sites(site_ids: Iterable[int]) -> dict[int, CreditPolicy | None]:
    """`credit_policy_for_site` for many sites in two queries."""
    site_ids = list(site_ids)
    own = {
        choice.site_id: choice.policy
        for choice in SitePolicy.objects.select_related("policy").filter(site_id__in=site_ids)
    }
    default = CreditPolicy.objects.filter(is_default=True).first()
    return {site_id: own.get(site_id, default) for site_id in site_ids}


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


def sites_not_reconciled() -> list[int]:
    """Sites with power events their last reconcile did not read (or never reconciled), by id."""
    counts = dict(
        PowerEvent.objects.order_by()
        .values("site_id")
        .annotate(n=Count("id"))
        .values_list("site_id", "n")
    )
    marks = dict(SiteReconcile.objects.values_list("site_id", "events"))
    return sorted(site for site, n in counts.items() if marks.get(site) != n)


def suspected_outage_list() -> QuerySet[SuspectedOutage]:
    """Suspected outages, newest first, with their feeder, sites and drops in three queries
    whatever their number (operators only: the callers check)."""
    return (
        SuspectedOutage.objects.select_related("feeder")
        .annotate(sites_count=Count("drops"))
        .prefetch_related(Prefetch("drops", queryset=SuspectedSite.objects.select_related("site")))
        .order_by("-started_at", "-id")
    )


def suspected_outages_shown(*, now: datetime, recent: timedelta) -> list[SuspectedOutage]:
    """What the fleet page shows: the suspected outages still open, and those confirmed or
    dismissed within `recent` (so operators see what became of them), oldest first, each with
    the grid outage that confirmed it (the page says when that cut ended)."""
    return list(
        suspected_outage_list()
        .select_related("grid_outage")
        .prefetch_related(None)  # the page shows how many sites, not which: one query
        .filter(Q(status=SuspectedStatus.SUSPECTED) | Q(resolved_at__gte=now - recent))
        .order_by("started_at", "id")
    )
