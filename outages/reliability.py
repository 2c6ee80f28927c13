"""Reliability indices of IEEE 1366 from site outages: a pure function, no ORM, no clock.

Each site outage is one customer interruption (a site is one customer). Sustained interruptions
count in SAIFI and SAIDI, momentary ones (shorter than the momentary threshold) only in MAIFI:

- SAIFI = sustained customer interruptions / customers served
- SAIDI = sustained customer minutes of interruption / customers served
- CAIDI = SAIDI / SAIFI, the average minutes of a sustained interruption (None without one)
- MAIFI = momentary customer interruptions / customers served
"""

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Interruption:
    site: Hashable
    started_at: datetime
    ended_at: datetime  # an open outage is given the instant it is looked at
    momentary: bool


@dataclass(frozen=True)
class Indices:
    customers_served: int
    sustained_interruptions: int
    momentary_interruptions: int
    customer_minutes: float
    saifi: float | None  # None: no customers served, nothing to divide by
    saidi: float | None
    caidi: float | None  # None also without a sustained interruption
    maifi: float | None


def reliability_indices(
    interruptions: Iterable[Interruption],
    *,
    customers_served: int,
    start: datetime,
    end: datetime,
) -> Indices:
    """SAIFI, SAIDI (minutes), CAIDI (minutes) and MAIFI over [start, end).

    Interruptions are clipped to the period: one that overlaps it counts once, for its minutes
    inside it; one outside it does not count. Whether one is momentary is given (decided on the
    whole outage, not on the clipped part), so a long cut seen for a minute of the period is
    still sustained.
    """
    sustained = momentary = 0
    minutes = 0.0
    for item in interruptions:
        lo, hi = max(item.started_at, start), min(item.ended_at, end)
        if hi <= lo and not (item.started_at == item.ended_at and start <= lo < end):
            continue
        if item.momentary:
            momentary += 1
        else:
            sustained += 1
            minutes += (hi - lo) / timedelta(minutes=1)
    if customers_served <= 0:
        return Indices(customers_served, sustained, momentary, minutes, None, None, None, None)
    saifi = sustained / customers_served
    saidi = minutes / customers_served
    return Indices(
        customers_served=customers_served,
        sustained_interruptions=sustained,
        momentary_interruptions=momentary,
        customer_minutes=minutes,
        saifi=saifi,
        saidi=saidi,
        caidi=saidi / saifi if sustained else None,
        maifi=momentary / customers_served,
    )
