"""Grid outages from site outages: a pure function, no ORM, no clock.

Site outages on one feeder that start within the correlation window of each other make one feeder
outage; feeder outages of one transformer that start within the window of each other make one
transformer outage. The grouping depends only on the members' instants (and ids to break ties),
never on the order they arrived in, so the same site outages always give the same grid outages.
"""

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from outages.site_outages import overlaps

# Transformer outages need feeders of the transformer going out together: one feeder alone is a
# feeder outage, however many sites it has.
MIN_TRANSFORMER_FEEDERS = 2


@dataclass(frozen=True)
class Member:
    """A site outage (or, for a transformer, a feeder outage) that may join a grid outage."""

    key: Hashable  # the outage's id: ties of instants are broken by it
    unit: Hashable  # the site (or feeder) it is of: what "sites" / "feeders" count
    started_at: datetime
    ended_at: datetime | None
    momentary: bool
    sites_affected: int = 1
    customer_minutes: Decimal = Decimal(0)


@dataclass(frozen=True)
class GridOutage:
    started_at: datetime  # the earliest member's start
    ended_at: datetime | None  # the latest member's end; None while any member is open
    momentary: bool  # every member momentary
    sites_affected: int
    customer_minutes: Decimal
    members: tuple[Hashable, ...]  # member keys, in start order


def site_customer_minutes(
    started_at: datetime, ended_at: datetime | None, momentary: bool
) -> Decimal:
    """The customer-minutes one site outage adds (IEEE 1366 CMI): its length in minutes if it is
    sustained and has ended; a momentary cut adds none (it counts in MAIFI, not SAIDI), and an
    open one adds nothing until it ends. To the millisecond, so sums are exact."""
    if momentary or ended_at is None:
        return Decimal(0)
    return (Decimal((ended_at - started_at) // timedelta(milliseconds=1)) / 60_000).quantize(
        Decimal("0.001")
    )


def _clusters(members: Sequence[Member], window: timedelta) -> list[list[Member]]:
    """Members grouped so that every two in a group start within `window` of each other: each
    group is anchored at its earliest start and takes every member starting up to `window` after
    it (chaining would let a slow rolling cut grow one group without end)."""
    clusters: list[list[Member]] = []
    for member in sorted(members, key=lambda m: (m.started_at, repr(m.key))):
        if clusters and member.started_at - clusters[-1][0].started_at <= window:
            clusters[-1].append(member)
        else:
            clusters.append([member])
    return clusters


def grid_outages(
    members: Iterable[Member], *, window: timedelta, min_units: int
) -> list[GridOutage]:
    """The grid outages these members make, in time order: groups of members starting within
    `window` of each other with at least `min_units` distinct units (sites of a feeder, or
    feeders of a transformer). Sites affected and customer-minutes are the members' sums (a
    site with two cuts in one group counts once among the sites)."""
    found = []
    for cluster in _clusters(list(members), window):
        units = {m.unit for m in cluster}
        if len(units) < min_units:
            continue
        ends = [m.ended_at for m in cluster]
        found.append(
            GridOutage(
                started_at=cluster[0].started_at,
                ended_at=None if None in ends else max(ends),
                momentary=all(m.momentary for m in cluster),
                sites_affected=_sites(cluster),
                customer_minutes=sum((m.customer_minutes for m in cluster), Decimal(0)),
                members=tuple(m.key for m in cluster),
            )
        )
    return found


def _sites(cluster: list[Member]) -> int:
    # Site members count their distinct sites; feeder members bring their own site counts.
    per_unit: dict[Hashable, int] = {}
    for member in cluster:
        per_unit[member.unit] = max(per_unit.get(member.unit, 0), member.sites_affected)
    return sum(per_unit.values())


def chain_span(
    starts: Iterable[datetime], lo: datetime, hi: datetime, window: timedelta
) -> tuple[datetime, datetime]:
    """Widen [lo, hi] over every start that chains to it, one start within `window` of the next.

    Grouping restarts at every gap longer than the window (the member after it starts more than a
    window after any anchor before it), so the grid outages of the members inside the returned
    span depend on those members alone: it is all a change at instants in [lo, hi] can regroup.
    """
    for start in sorted(starts):
        if start > hi + window:
            break
        if start >= lo - window:
            lo, hi = min(lo, start), max(hi, start)
    for start in sorted(starts, reverse=True):
        if start < lo - window:
            break
        if start <= hi + window:
            lo, hi = min(lo, start), max(hi, start)
    return lo, hi


def match_by_members(
    derived: Sequence[GridOutage], stored: Sequence, parent_of: dict[Hashable, Hashable]
) -> tuple[list[tuple[GridOutage, object | None]], list]:
    """Pair each derived grid outage with a stored one (objects with `pk`, `started_at` and
    `ended_at`) so a grid outage keeps its id while late reports regroup it: first by the members
    they share (`parent_of`: member key -> the stored grid outage's pk it is linked to; most
    shared wins, the earlier start breaks a tie), then a derived outage sharing none takes the
    earliest free stored one it overlaps in time. Returns the pairs, in the derived order (None:
    a new grid outage), and the stored ones no derived outage took (no longer grid outages)."""
    free = sorted(stored, key=lambda s: (s.started_at, s.pk))
    by_pk = {s.pk: s for s in free}
    shared: dict[tuple[int, Hashable], int] = {}
    for index, found in enumerate(derived):
        for key in found.members:
            parent = parent_of.get(key)
            if parent in by_pk:
                shared[index, parent] = shared.get((index, parent), 0) + 1
    chosen: dict[int, object] = {}
    for index, pk in sorted(
        shared, key=lambda ip: (-shared[ip], by_pk[ip[1]].started_at, ip[1], ip[0])
    ):
        if index not in chosen and pk in by_pk:
            chosen[index] = by_pk.pop(pk)
    for index, found in enumerate(derived):
        if index not in chosen:
            match = next((s for s in by_pk.values() if overlaps(found, s)), None)
            if match is not None:
                chosen[index] = by_pk.pop(match.pk)
    pairs = [(found, chosen.get(index)) for index, found in enumerate(derived)]
    taken = {id(s) for s in chosen.values()}
    return pairs, [s for s in free if id(s) not in taken]
