"""Site outages from a site's power reports: a pure function, no ORM, no clock.

Everything is decided from the instants the devices saw, never from arrival order, so the same set
of reports gives the same outages however it arrived: late, reordered, repeated or in pieces.
"""

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import TypeVar

T = TypeVar("T")
S = TypeVar("S")

LOST = "lost"
RESTORED = "restored"


@dataclass(frozen=True)
class PowerReport:
    device: Hashable
    state: str  # "lost" or "restored"
    at: datetime


@dataclass(frozen=True)
class OutageInterval:
    started_at: datetime
    ended_at: datetime | None  # None while some reporting device is still without mains
    momentary: bool  # ended, and shorter than the momentary threshold

    @property
    def duration(self) -> timedelta | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


def _order(report: PowerReport) -> tuple:
    # At one instant a `lost` goes first: a device losing mains as another gets it back keeps
    # the site out (one outage, not two), and a device reporting both at one instant had a cut
    # of no length rather than a restore with nothing to restore. The device breaks the last tie
    # so the result never depends on arrival order.
    return (report.at, report.state != LOST, repr(report.device))


def site_outage_intervals(
    reports: Iterable[PowerReport], *, momentary_threshold: timedelta
) -> list[OutageInterval]:
    """The site's outages, in time order, as PRODUCT.md defines them.

    An outage runs from the first `lost` of any of the site's devices to the `restored` that
    leaves none of its reporting devices without mains. A `restored` from a device that has mains
    (no `lost` before it), or a `lost` from a device already without mains (no `restored`
    between), is a report that changes nothing. Repeats of one report are one report. An outage
    some device has not yet reported the end of is open (`ended_at` None). One that ended sooner
    than `momentary_threshold` after it started is momentary.
    """
    intervals = []
    without_mains: set[Hashable] = set()
    started_at = None
    for report in sorted(set(reports), key=_order):
        if report.state == LOST:
            if not without_mains:
                started_at = report.at
            without_mains.add(report.device)
        elif report.device in without_mains:
            without_mains.discard(report.device)
            if not without_mains:
                duration = report.at - started_at
                intervals.append(
                    OutageInterval(started_at, report.at, momentary=duration < momentary_threshold)
                )
        # else: a `restored` with no `lost` before it: kept as a report, nothing to end.
    if without_mains:
        intervals.append(OutageInterval(started_at, None, momentary=False))
    return intervals


def overlaps(a, b) -> bool:
    # Closed intervals; an end of None runs on for ever. Touching counts: a derived outage that
    # ends at the instant a stored one starts is the same cut seen from another device.
    return (b.ended_at is None or a.started_at <= b.ended_at) and (
        a.ended_at is None or b.started_at <= a.ended_at
    )


def match_by_overlap(
    derived: Sequence[T], stored: Sequence[S], void: Sequence[S] = ()
) -> tuple[list[tuple[T, S | None]], list[S]]:
    """Pair derived outages with stored ones they overlap, so a cut keeps its identity (its row,
    its ledger entries, the policy it was first paid by) when late reports move its start or
    end; returns the pairs in time order (None: a new cut) and the stored outages no derived one
    took (no longer cuts, or merged into another). Both sides have `started_at` and `ended_at`
    (None: open) and each side's outages are disjoint, so the pairing keeps their order.

    Where one cut split into several (a late pair of reports inside it) or several merged, the
    pairing covers as much of the stored outages as it can (`coverage`), then keeps the most
    identities: a stored cut stays with the piece that holds most of it, not with a few minutes
    a late report showed before it, and cuts merged into one all count whole, so the earliest
    keeps its row. Ties go to the earliest.

    `void` holds outages voided before (merged into another, or no cut after all): a derived
    outage starting exactly where one of them did is that cut derived again and takes its row
    back (`_revive`), as a merge undone by a later report gives each cut its own row again."""
    free = sorted(stored, key=lambda s: s.started_at)
    ordered = sorted(derived, key=lambda d: d.started_at)
    pairs: list[tuple[T, S | None]] = []
    for group_derived, group_stored in _overlap_groups(ordered, free):
        if len(group_derived) * len(group_stored) > MAX_TABLE:
            matched = dict(_earliest_pairing(group_derived, group_stored))
        else:
            matched = dict(_best_pairing(group_derived, group_stored))
        pairs += [(interval, matched.get(id(interval))) for interval in group_derived]
    if void:
        _revive(pairs, {outage.started_at: outage for outage in void})
    taken = {id(outage) for _, outage in pairs if outage is not None}
    return pairs, [s for s in free if id(s) not in taken]


# The largest group (derived x stored outages overlapping in one chain) paired by the table of
# `_best_pairing`; past it, each derived outage takes the earliest it overlaps (linear). A chain
# that long takes years of flapping reports at one site: a chain of 64 x 64 took ~7 ms here.
MAX_TABLE = 4096


def _revive(pairs: list[tuple[T, S | None]], void_at: dict[datetime, S]) -> None:
    """Give a void outage back its row where a derived one starts exactly where it did: a
    derived outage with no row takes it; one paired with a live row that starts elsewhere takes
    it when that live row can go to another derived outage it overlaps that has no row (the
    one it covers most), so no live row is given up for a void one. In place."""
    for k, (interval, outage) in enumerate(pairs):
        again = void_at.get(interval.started_at)
        if again is None or (outage is not None and outage.started_at == interval.started_at):
            continue
        if outage is None:
            pairs[k] = (interval, again)
            continue
        free = [
            (coverage(other, outage), -j)
            for j, (other, row) in enumerate(pairs)
            if row is None and other.started_at not in void_at and overlaps(other, outage)
        ]
        if free:
            _, minus_j = max(free)
            pairs[-minus_j] = (pairs[-minus_j][0], outage)
            pairs[k] = (interval, again)


def _earliest_pairing(derived: list[T], stored: list[S]) -> list[tuple[int, S]]:
    """Each derived outage (in time order) with the earliest stored one it overlaps that no
    earlier one took."""
    chosen, free = [], list(stored)
    for interval in derived:
        match = next((outage for outage in free if overlaps(interval, outage)), None)
        if match is not None:
            free.remove(match)
            chosen.append((id(interval), match))
    return chosen


def coverage(derived, stored) -> Fraction:
    """The share of a stored outage that a derived one overlapping it covers, 0 to 1: where
    late reports split a cut, each piece covers part of it; where they merge cuts, each is
    covered whole. An open stored outage is covered whole by an open derived one and not at all
    by an ended one; one of no length, whole by any that overlaps it."""
    if stored.ended_at is None:
        return Fraction(derived.ended_at is None)
    length = stored.ended_at - stored.started_at
    if not length:
        return Fraction(1)
    end = stored.ended_at if derived.ended_at is None else min(derived.ended_at, stored.ended_at)
    shared = max(end - max(derived.started_at, stored.started_at), timedelta(0))
    return Fraction(shared // _MICROSECOND, length // _MICROSECOND)


_MICROSECOND = timedelta(microseconds=1)


def _overlap_groups(derived: list[T], stored: list[S]) -> list[tuple[list[T], list[S]]]:
    """The derived outages (in time order) in groups that overlap stored ones (in time order)
    only within the group, each with those stored ones; a derived outage overlapping none is a
    group alone. One pass over both: each side is disjoint, so the stored ones a derived outage
    overlaps follow on from those of the one before."""
    groups: list[tuple[list[T], list[S]]] = []
    first = 0  # the first stored outage that may still overlap a derived one
    in_group: set[int] = set()  # ids of the stored outages of the group being built
    for interval in derived:
        while (
            first < len(stored)
            and stored[first].ended_at is not None
            and stored[first].ended_at < interval.started_at
        ):
            first += 1
        touching = []
        for k in range(first, len(stored)):
            if not overlaps(interval, stored[k]):
                break
            touching.append(stored[k])
        if any(id(outage) in in_group for outage in touching):
            group_derived, group_stored = groups[-1]
            group_derived.append(interval)
            group_stored.extend(o for o in touching if id(o) not in in_group)
        else:
            groups.append(([interval], touching))
            in_group = set()
        in_group.update(map(id, touching))
    return groups


def _best_pairing(derived: list[T], stored: list[S]) -> list[tuple[int, S]]:
    """Order-keeping pairs of overlapping outages, as `id(derived)` and the stored one: the most
    coverage, then the most pairs (outages that only touch cover nothing), ties to the
    earliest. Groups are small (a cut and the few pieces late reports split it into): a table
    of |derived| x |stored| scores."""
    # best[i][j]: (coverage, pairs) of the first i derived with the first j stored
    zero = (Fraction(0), 0)
    best = [[zero] * (len(stored) + 1) for _ in range(len(derived) + 1)]
    for i, interval in enumerate(derived, 1):
        for j, outage in enumerate(stored, 1):
            score = max(best[i][j - 1], best[i - 1][j])  # leave the later one out: ties
            if overlaps(interval, outage):
                covered, pairs = best[i - 1][j - 1]
                score = max(score, (covered + coverage(interval, outage), pairs + 1))
            best[i][j] = score
    chosen = []
    i, j = len(derived), len(stored)
    while i and j:
        if best[i][j] == best[i][j - 1]:
            j -= 1
        elif best[i][j] == best[i - 1][j]:
            i -= 1
        else:
            chosen.append((id(derived[i - 1]), stored[j - 1]))
            i, j = i - 1, j - 1
    return chosen
