"""Settlement of a completed event, set-based: every opted-in site's energy over its baseline
windows is summed in one statement, the baselines are computed from those sums (the rule is
`baseline.ten_in_ten_of_windows`, the same as for a site's energy per quarter-hour), and the
results and the ledger's entries are written in bulk.

What is read: for each time zone of the sites, the event's window and its adjustment window on
the event day and on each weekday of the look-back (`baseline.baseline_windows`), each as the
quarter-hours it overlaps with the share of each inside it. A site's quarter-hour counts as
telemetry counts the site's energy (`telemetry.queries.site_energy_in_windows`: the meter where
it reported, else the devices), so the figures are those `selectors.site_quarter_energy` and
`baseline.ten_in_ten` give, without bringing 46 days of quarter-hours per site into Python.
"""

import zoneinfo
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

from demand_response import baseline, selectors
from demand_response.models import Event, SettlementResult, SettlementStatus
from demand_response.rewards import reward_for
from devices.models import Site
from outages.services import credits_settle_dr_event
from telemetry import queries

KWH = Decimal("0.0001")  # kWh are kept to a tenth of a Wh
FACTOR = Decimal("0.0001")  # the day-of adjustment, as stored

Window = tuple[datetime, datetime]


def event_sites_settle(
    *, event: Event, sites: list[Site], start: datetime, end: datetime, now: datetime
) -> list[SettlementResult]:
    """Settle `sites` (opted in) for the event's window [start, end): replace their results and
    bring the ledger to their rewards (a difference, usually none). The caller holds the event's
    row locked and has checked it may be settled."""
    if not sites:
        return []
    zones = {site.timezone: zoneinfo.ZoneInfo(site.timezone) for site in sites}
    earliest = min(baseline.lookback_start(start, tz) for tz in zones.values())
    excluded = selectors.baseline_excluded_dates(
        sites=sites, start=earliest, end=start, event_id=event.pk
    )
    windows = _Windows(start, end, zones)
    sums = windows.sums(site_tz={site.pk: site.timezone for site in sites})
    results = []
    for site in sites:
        energy = windows.energy_of(site.timezone, sums.get(site.pk, {}))
        base = baseline.ten_in_ten_of_windows(
            window=energy, start=start, end=end, tz=zones[site.timezone], excluded=excluded[site.pk]
        )
        results.append(_result(event, site, base, energy(start, end), now))
    site_ids = [site.pk for site in sites]
    SettlementResult.objects.filter(event=event, site_id__in=site_ids).delete()
    SettlementResult.objects.bulk_create(results, batch_size=2000)
    credits_settle_dr_event(
        dr_event_id=event.pk,
        payments={r.site_id: (r.reward, r.currency, _memo(event, end, r)) for r in results},
    )
    return results


class _Windows:
    """The windows each time zone's sites are read over, numbered, with their quarter-hours."""

    def __init__(self, start: datetime, end: datetime, zones: dict[str, zoneinfo.ZoneInfo]):
        self.ids: dict[str, dict[Window, int]] = {}  # zone: window: id
        self.quarters: list[int] = []  # id: how many quarter-hours the window overlaps
        self.weights: list[tuple[int, int, datetime, Decimal]] = []
        self.groups = {name: n for n, name in enumerate(sorted(zones))}
        for name, tz in zones.items():
            own = self.ids[name] = {}
            for _, window, adjustment in baseline.baseline_windows(start, end, tz):
                for lo, hi in (window, adjustment):
                    if (lo, hi) not in own:
                        own[lo, hi] = len(self.quarters)
                        self._weigh(self.groups[name], own[lo, hi], lo, hi)

    def _weigh(self, group: int, window_id: int, lo: datetime, hi: datetime) -> None:
        """The quarter-hours of [lo, hi) with the share of each inside it, as `window_energy`
        counts them."""
        t = lo - (lo - baseline.ORIGIN) % baseline.INTERVAL
        n = 0
        while t < hi:
            inside = min(t + baseline.INTERVAL, hi) - max(t, lo)
            self.weights.append((group, window_id, t, baseline.share(inside)))
            t += baseline.INTERVAL
            n += 1
        self.quarters.append(n)

    def spans(self) -> list[Window]:
        """The quarter-hours weighted, as few [lo, hi) runs as they make."""
        spans: list[list[datetime]] = []
        for t in sorted({t for _, _, t, _ in self.weights}):
            if spans and spans[-1][1] == t:
                spans[-1][1] = t + baseline.INTERVAL
            else:
                spans.append([t, t + baseline.INTERVAL])
        return [(lo, hi) for lo, hi in spans]

    def sums(self, site_tz: dict[int, str]) -> dict[int, dict[int, tuple[Decimal, int]]]:
        """Each site's (kWh, quarter-hours with data) per window id, in one statement."""
        rows = queries.site_energy_in_windows(
            site_groups={site_id: self.groups[tz] for site_id, tz in site_tz.items()},
            spans=self.spans(),
            weights=self.weights,
        )
        sums: dict[int, dict[int, tuple[Decimal, int]]] = defaultdict(dict)
        for site_id, window_id, kwh, count in rows:
            sums[site_id][window_id] = (kwh, count)
        return sums

    def energy_of(self, zone: str, sums: dict[int, tuple[Decimal, int]]):
        """A site's energy over [lo, hi) as `baseline.window_energy` gives it: None unless every
        quarter-hour the window overlaps has data."""
        ids = self.ids[zone]

        def energy(lo: datetime, hi: datetime) -> Decimal | None:
            window_id = ids[lo, hi]
            kwh, count = sums.get(window_id, (None, 0))
            return kwh if count == self.quarters[window_id] else None

        return energy


def _result(
    event: Event, site: Site, base: baseline.Baseline, actual: Decimal | None, now: datetime
) -> SettlementResult:
    program = event.program
    result = SettlementResult(
        event=event,
        site=site,
        currency=program.currency,
        days_used=[day.isoformat() for day in base.days_used],
        adjustment=base.adjustment.quantize(FACTOR) if base.sufficient else None,
        actual_kwh=None if actual is None else actual.quantize(KWH),
        baseline_kwh=None if base.kwh is None else base.kwh.quantize(KWH),
        settled_at=now,
    )
    if not base.sufficient:
        result.status = SettlementStatus.INSUFFICIENT_BASELINE
    elif actual is None:
        result.status = SettlementStatus.INSUFFICIENT_ACTUAL
    else:
        result.status = SettlementStatus.OK
        result.delivered_kwh = max(Decimal(0), result.baseline_kwh - result.actual_kwh)
        result.reward = reward_for(
            delivered_kwh=result.delivered_kwh,
            rate=program.reward_per_kwh,
            currency=program.currency,
        )
    return result


def _memo(event: Event, end: datetime, result: SettlementResult) -> str:
    what = f"demand response event {event.pk} ({event.program.name})"
    if end != event.end:
        what += f", cancelled at {end.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    if result.status != SettlementStatus.OK:
        return f"{what}: {result.get_status_display().lower()}, not paid"
    return (
        f"{what}: {result.delivered_kwh} kWh delivered at "
        f"{event.program.reward_per_kwh} {result.currency}/kWh"
    )
