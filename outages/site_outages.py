"""Site outages from a site's power reports: a pure function, no ORM, no clock.

Everything is decided from the instants the devices saw, never from arrival order, so the same set
of reports gives the same outages however it arrived: late, reordered, repeated or in pieces.
"""

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    derived: Sequence[T], stored: Sequence[S]
) -> tuple[list[tuple[T, S | None]], list[S]]:
    """Pair each derived outage (in time order) with the earliest stored one it overlaps that no
    earlier derived outage took, so a cut keeps its identity when late reports move its start or
    end; returns the pairs (None: a new cut) and the stored outages no derived one took (no longer
    cuts, or merged into an earlier one). Both sides have `started_at` and `ended_at` (None:
    open) and each side's outages are disjoint, so the pairing keeps their order."""
    free = sorted(stored, key=lambda s: s.started_at)
    pairs: list[tuple[T, S | None]] = []
    for interval in sorted(derived, key=lambda d: d.started_at):
        match = next((s for s in free if overlaps(interval, s)), None)
        if match is not None:
            free.remove(match)
        pairs.append((interval, match))
    return pairs, free
