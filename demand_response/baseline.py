"""The default demand-response baseline, "10 in 10" with a day-of adjustment (CAISO/ISO style):
what a site would have used over an event's window had there been no event. Pure: no ORM, no
clock; the caller brings the site's energy per interval and the dates to leave out.

The rule, as PRODUCT.md defines it, and how each part is read:

- **Baseline days**: the 10 most recent weekdays (Monday to Friday in the site's time zone)
  before the event's local day that had no event and no outage at the site (`excluded`), looking
  back at most `LOOKBACK_DAYS` calendar days. There is no holiday calendar: a public holiday on a
  weekday counts as a weekday unless the caller excludes it. A day whose data does not cover
  every interval of its windows (below) is skipped too, as a gap would understate the baseline.
  Fewer than 10 such days: the result says how many were found and no baseline is given.
- **Windows on earlier days** are the event's windows at the same local wall-clock times, so an
  event from 18:00 to 20:00 is compared with 18:00-20:00 on each baseline day even when a
  daylight-saving change lies between them. A window may span midnight; it is shifted whole.
- **Average load**: each day's energy over its window divided by that window's real length (a
  window across a DST change on a baseline day is an hour longer or shorter), averaged over the
  days; the unadjusted baseline is that average load times the event's length.
- **Day-of adjustment**: the ratio of the site's actual average load on the event day over the 3
  hours ending 1 hour before the start to the baseline days' average load over the same local
  times, clamped to 0.8-1.2. When the event day's data does not cover that window, or the
  baseline days used nothing there (no ratio to take), no adjustment is made (factor 1) and
  `adjusted` says so.

Energy is in kWh per interval, keyed by the interval's start (aware datetimes; intervals are cut
from midnight UTC, as telemetry's quarter-hours are). An interval partly inside a window counts
pro rata, so a window need not fall on interval boundaries.
"""

import functools
import zoneinfo
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

BASELINE_DAYS = 10
LOOKBACK_DAYS = 45  # as CAISO's 10-in-10: a site that had many events still finds its days
ADJUSTMENT_SPAN = timedelta(hours=3)
ADJUSTMENT_GAP = timedelta(hours=1)  # the adjustment window ends this long before the start
ADJUSTMENT_MIN = Decimal("0.8")
ADJUSTMENT_MAX = Decimal("1.2")
INTERVAL = timedelta(minutes=15)
ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)


@dataclass(frozen=True)
class Baseline:
    """A site's baseline for one event. `kwh` is None when fewer than `BASELINE_DAYS` clean days
    were found (`days_used` then lists those that were)."""

    kwh: Decimal | None
    unadjusted_kwh: Decimal | None
    adjustment: Decimal
    adjusted: bool
    days_used: tuple[date, ...]

    @property
    def sufficient(self) -> bool:
        return self.kwh is not None


def window_energy(
    energy: Mapping[datetime, Decimal],
    lo: datetime,
    hi: datetime,
    interval: timedelta = INTERVAL,
) -> Decimal | None:
    """The energy over [lo, hi): each interval's kWh times the share of it inside the window.
    None when an interval overlapping the window has no data."""
    first = lo - (lo - ORIGIN) % interval
    total = Decimal(0)
    t = first
    while t < hi:
        kwh = energy.get(t)
        if kwh is None:
            return None
        inside = min(t + interval, hi) - max(t, lo)
        total += kwh if inside == interval else kwh * _ratio(inside, interval)
        t += interval
    return total


def _ratio(a: timedelta, b: timedelta) -> Decimal:
    """a / b exactly as far as Decimal goes (a float quotient would leak binary error)."""
    return Decimal(a // timedelta.resolution) / Decimal(b // timedelta.resolution)


def share(inside: timedelta, interval: timedelta = INTERVAL) -> Decimal:
    """The share of an interval that `inside` of it is (1 for the whole), as `window_energy`
    weighs an interval partly inside a window."""
    return Decimal(1) if inside == interval else _ratio(inside, interval)


def _hours(lo: datetime, hi: datetime) -> Decimal:
    return _ratio(hi - lo, timedelta(hours=1))


def _shifted(instant: datetime, tz: zoneinfo.ZoneInfo, days: int) -> datetime:
    """The instant `days` local days from `instant` at the same local wall-clock time (a time
    a DST change skips is read with the offset before the change)."""
    wall = instant.astimezone(tz).replace(tzinfo=None) + timedelta(days=days)
    return wall.replace(tzinfo=tz).astimezone(UTC)


def local_dates(lo: datetime, hi: datetime, tz: zoneinfo.ZoneInfo) -> set[date]:
    """The local dates [lo, hi) touches."""
    first, last = lo.astimezone(tz).date(), (hi - timedelta.resolution).astimezone(tz).date()
    return {first + timedelta(days=n) for n in range((last - first).days + 1)}


def ten_in_ten(
    *,
    energy: Mapping[datetime, Decimal],
    start: datetime,
    end: datetime,
    tz: zoneinfo.ZoneInfo,
    excluded: Collection[date],
    interval: timedelta = INTERVAL,
) -> Baseline:
    """The "10 in 10" baseline (module docstring) of the event window [start, end) for a site in
    zone `tz` whose energy per interval is `energy`; `excluded` holds the site's local dates with
    an event or an outage."""
    return ten_in_ten_of_windows(
        window=lambda lo, hi: window_energy(energy, lo, hi, interval),
        start=start,
        end=end,
        tz=tz,
        excluded=excluded,
    )


def baseline_windows(
    start: datetime, end: datetime, tz: zoneinfo.ZoneInfo
) -> tuple[tuple[int, tuple[datetime, datetime], tuple[datetime, datetime]], ...]:
    """(days back, event window, adjustment window) of the event day (0 back) and of each
    weekday `ten_in_ten` may look at, at the same local wall-clock times: the windows whose
    energy it asks for, for a caller that sums them beforehand."""
    adj = (start - ADJUSTMENT_SPAN - ADJUSTMENT_GAP, start - ADJUSTMENT_GAP)
    earlier = ((back, window, adj_) for back, _, window, adj_, _ in _days(start, end, tz))
    return ((0, (start, end), adj), *earlier)


@functools.lru_cache(maxsize=64)
def _days(start: datetime, end: datetime, tz: zoneinfo.ZoneInfo) -> tuple[tuple, ...]:
    """(days back, local day, event window, adjustment window, local dates they touch) of each
    weekday in the look-back, most recent first; the same for every site of a zone (cached)."""
    adj_lo, adj_hi = start - ADJUSTMENT_SPAN - ADJUSTMENT_GAP, start - ADJUSTMENT_GAP
    event_day = start.astimezone(tz).date()
    days = []
    for back in range(1, LOOKBACK_DAYS + 1):
        day = event_day - timedelta(days=back)
        if day.weekday() >= 5:
            continue
        lo, hi = _shifted(start, tz, -back), _shifted(end, tz, -back)
        a_lo, a_hi = _shifted(adj_lo, tz, -back), _shifted(adj_hi, tz, -back)
        touched = frozenset(local_dates(min(lo, a_lo), hi, tz))
        days.append((back, day, (lo, hi), (a_lo, a_hi), touched))
    return tuple(days)


def ten_in_ten_of_windows(
    *,
    window: Callable[[datetime, datetime], Decimal | None],
    start: datetime,
    end: datetime,
    tz: zoneinfo.ZoneInfo,
    excluded: Collection[date],
) -> Baseline:
    """`ten_in_ten` with the site's energy over a window [lo, hi) given by `window` (None when
    data is missing in it): the rule itself, whatever sums the windows."""
    adj_lo, adj_hi = start - ADJUSTMENT_SPAN - ADJUSTMENT_GAP, start - ADJUSTMENT_GAP
    excluded = set(excluded)
    days: list[tuple[date, Decimal, Decimal]] = []  # (day, event-window kW, adjustment kW)
    for _, day, (lo, hi), (a_lo, a_hi), touched in _days(start, end, tz):
        if touched & excluded:
            continue
        in_window, adjustment = window(lo, hi), None
        if in_window is not None:
            adjustment = window(a_lo, a_hi)
        if in_window is None or adjustment is None:
            continue
        days.append((day, in_window / _hours(lo, hi), adjustment / _hours(a_lo, a_hi)))
        if len(days) == BASELINE_DAYS:
            break
    used = tuple(day for day, _, _ in days)
    if len(days) < BASELINE_DAYS:
        return Baseline(None, None, Decimal(1), False, used)
    load = sum(kw for _, kw, _ in days) / len(days)
    unadjusted = load * _hours(start, end)
    factor, adjusted = _adjustment(
        today=window(adj_lo, adj_hi),
        usual_kw=sum(kw for _, _, kw in days) / len(days),
    )
    return Baseline(unadjusted * factor, unadjusted, factor, adjusted, used)


def _adjustment(*, today: Decimal | None, usual_kw: Decimal) -> tuple[Decimal, bool]:
    if today is None or usual_kw == 0:
        return Decimal(1), False
    ratio = today / _ratio(ADJUSTMENT_SPAN, timedelta(hours=1)) / usual_kw
    return min(max(ratio, ADJUSTMENT_MIN), ADJUSTMENT_MAX), True


def lookback_start(start: datetime, tz: zoneinfo.ZoneInfo) -> datetime:
    """Midnight UTC before the site's earliest possible baseline window for an event starting
    at `start` (a day's margin covers windows across midnight and the adjustment window)."""
    first = start.astimezone(tz).date() - timedelta(days=LOOKBACK_DAYS + 1)
    return datetime.combine(first, datetime.min.time(), UTC)


def ten_in_ten_curve(
    *,
    energy: Mapping[datetime, Decimal],
    start: datetime,
    end: datetime,
    tz: zoneinfo.ZoneInfo,
    base: Baseline,
    interval: timedelta = INTERVAL,
) -> dict[datetime, Decimal]:
    """`base` (a sufficient baseline of [start, end)) spread over the window's intervals: for
    each interval (keyed by its start, clipped to the window) the average energy of the same
    local wall-clock span on `base.days_used`, times `base.adjustment`. For pages: the curve
    sums to `base.kwh` except when a baseline day's window crosses a DST change (the total
    averages loads over each day's real length, the curve averages energies)."""
    if not base.sufficient:
        return {}
    event_day = start.astimezone(tz).date()
    backs = [(event_day - day).days for day in base.days_used]
    curve: dict[datetime, Decimal] = {}
    t = start - (start - ORIGIN) % interval
    while t < end:
        lo, hi = max(t, start), min(t + interval, end)
        days = [
            kwh
            for back in backs
            if (kwh := window_energy(energy, _shifted(lo, tz, -back), _shifted(hi, tz, -back)))
            is not None
        ]
        if days:
            curve[t] = sum(days) / len(days) * base.adjustment
        t += interval
    return curve
