"""What a suspected outage is now: a pure function of instants, no ORM, no clock of its own.

A suspected outage (sites of one feeder whose device sockets dropped together, with no report of
a cut) is confirmed when a site outage of the feeder, derived from replayed `lost` reports,
starts within the correlation window of it or spans its start; dismissed when every one of its
sites has had a device back for the grace period with no such outage; suspected until then. The
answer depends only on the instants, never on the order reports or reconnections arrived in.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class SiteCut:
    """A site outage (not void) of the feeder."""

    key: int  # its id: ties are broken by it
    started_at: datetime
    ended_at: datetime | None
    grid_outage: int | None  # its feeder outage's id


@dataclass(frozen=True)
class Verdict:
    status: str  # suspected | confirmed | dismissed
    resolved_at: datetime | None
    grid_outage: int | None


def cut_spans(cut: SiteCut, instant: datetime) -> bool:
    """Whether the site was reported without mains at `instant`."""
    return cut.started_at <= instant and (cut.ended_at is None or cut.ended_at >= instant)


def confirming_cuts(cuts: Iterable[SiteCut], *, started_at: datetime, window: timedelta):
    """The site outages that confirm a suspicion starting at `started_at`, earliest first."""
    return sorted(
        (
            cut
            for cut in cuts
            if abs(cut.started_at - started_at) <= window or cut_spans(cut, started_at)
        ),
        key=lambda cut: (cut.started_at, cut.key),
    )


def verdict(
    *,
    status: str,
    resolved_at: datetime | None,
    started_at: datetime,
    back_at: list[datetime | None],
    cuts: Iterable[SiteCut],
    window: timedelta,
    grace: timedelta,
    now: datetime,
) -> Verdict:
    """The status of a suspected outage (now `status`, resolved at `resolved_at`) at `now`,
    from its start, when each of its sites came back (None: not yet), and the feeder's site
    outages. Confirmed whenever a site outage confirms it, linked to the first such one's feeder
    outage if any; else dismissed once every site has been back for `grace`, at that instant;
    else suspected. A confirmation that stays keeps its `resolved_at`."""
    confirming = confirming_cuts(cuts, started_at=started_at, window=window)
    if confirming:
        grid = next((cut.grid_outage for cut in confirming if cut.grid_outage), None)
        return Verdict("confirmed", resolved_at if status == "confirmed" else now, grid)
    if back_at and None not in back_at and max(back_at) + grace <= now:
        return Verdict("dismissed", max(back_at) + grace, None)
    return Verdict("suspected", None, None)
