"""The measured queries: what each kind asks, with random sensors, sites and dates inside the
data loaded so far, and how the API is asked the same over HTTP.

Each kind calls the function the API (or the page) calls, in-process, and the time measured is
that call: SQL building, the database round trip(s) and turning rows into Python values.
"""

import inspect
import random
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
UTC_ZONE = zoneinfo.ZoneInfo("UTC")
DAY = timedelta(days=1)


@dataclass
class Span:
    """The data loaded: [start, end)."""

    start: datetime
    end: datetime

    def random_end(self, rng: random.Random, window: timedelta) -> datetime:
        """A random instant (whole seconds) such that [it - window, it) lies in the data; the
        data's end when the data is shorter than the window."""
        lo = self.start + window
        if lo >= self.end:
            return self.end
        seconds = int((self.end - lo).total_seconds())
        return lo + timedelta(seconds=rng.randint(0, seconds))

    def random_local_day(self, rng: random.Random, tz=LISBON, skip: int = 0) -> date:
        """A random local day wholly inside the data (`skip` more whole days before it)."""
        first = (self.start.astimezone(tz) + DAY * (1 + skip)).date()
        last = (self.end.astimezone(tz) - DAY).date()  # last whole local day
        if last < first:
            return first
        return first + timedelta(days=rng.randint(0, (last - first).days))


@dataclass
class Kind:
    name: str
    label: str
    target: bool  # one of the five (p95 <= 20 ms); else a diagnostic extra
    params: Callable[[random.Random], dict]
    call: Callable[[dict], Any]
    count: Callable[[Any], int]  # rows / buckets / periods returned
    http: Callable[[dict], str] | None = None  # URL of the same question, if the API has one
    note: str = ""
    func: str = ""  # what is called


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(data: dict, span: Span) -> list[Kind]:
    """The kinds for the data loaded so far. Imports the project lazily (Django is set up)."""
    from bench.query import fleet
    from devices.models import Site
    from telemetry import queries
    from telemetry.query_apis import DEFAULT_PAGE_SIZE

    sensors = data["sensors"]
    sites = {s.id: s for s in Site.objects.filter(id__in=[s["id"] for s in data["sites"]])}
    site_ids = list(sites)

    def sensor(rng: random.Random) -> dict:
        return rng.choice(sensors)

    # 1. last 24 h raw of one sensor: the readings/ API's first page (page_size 1000 -> 1001 asked)
    def raw_params(rng):
        end = span.random_end(rng, DAY)
        return {"sensor": sensor(rng), "start": end - DAY, "end": end}

    def raw_call(p):
        return queries.readings_page(
            sensor_id=p["sensor"]["id"], start=p["start"], end=p["end"], limit=DEFAULT_PAGE_SIZE + 1
        )

    def raw_url(p):
        return (f"/api/v1/readings/?sensor={p['sensor']['public_id']}"
                f"&start={_iso(p['start'])}&end={_iso(p['end'])}")  # fmt: skip

    # 2./3. aggregates of one sensor (aggregates/ API), hours / days of Europe/Lisbon
    def agg_params(window: timedelta):
        def params(rng):
            end = span.random_end(rng, window)
            return {"sensor": sensor(rng), "start": end - window, "end": end}

        return params

    def agg_call(bucket: str, tz):
        def call(p):
            return queries.aggregates(
                sensor_id=p["sensor"]["id"], start=p["start"], end=p["end"], bucket=bucket, tz=tz
            )

        return call

    def agg_url(bucket: str, tz):
        def url(p):
            return (f"/api/v1/aggregates/?sensor={p['sensor']['public_id']}&bucket={bucket}"
                    f"&tz={tz.key}&start={_iso(p['start'])}&end={_iso(p['end'])}")  # fmt: skip

        return url

    # 4. a site's energy for one local day: the site energy API's function (site_history: the
    #    day by hour, the day before, the breakdown by device and room) when the project has it,
    #    else site_energy by hour
    def site_params(rng):
        return {"site": sites[rng.choice(site_ids)], "day": span.random_local_day(rng, skip=1)}

    def site_energy_call(p):
        return queries.site_energy(site=p["site"], start=p["day"], end=p["day"] + DAY, unit="hour")

    def site_history_call(p):
        period = queries.period_containing(kind="day", day=p["day"])
        return queries.site_history(site=p["site"], period=period, now=span.end)

    def site_url(p):
        return f"{_reverse('api-site-energy', p['site'].id)}?period=day&date={p['day'].isoformat()}"

    # 5. the fleet by feeder for one local day: the analytics API's function (grid_energy) when
    #    the project has it, else the set-based stand-in of bench/query/fleet.py
    def fleet_params(rng):
        return {"day": span.random_local_day(rng)}

    def grid_call(p):
        return queries.grid_energy(period_kind="day", day=p["day"], **grid_now)

    def grid_url(p):
        return f"{_reverse('api-analytics-energy')}?period=day&date={p['day'].isoformat()}"

    # the day in progress at the data's end, as a live dashboard asks it (extras: `now` is the
    # data's end, so the readings of "today" so far are all there is)
    today = (span.end - timedelta(microseconds=1)).astimezone(LISBON).date()

    def today_params(rng):
        return {"day": today}

    def site_today_params(rng):
        return {"site": sites[rng.choice(site_ids)], "day": today}

    def fleet_sql_call(p):
        return fleet.fleet_by_feeder(day=p["day"])

    def fleet_product_call(p):
        return fleet.fleet_by_feeder_product_code(day=p["day"])

    has_history = hasattr(queries, "site_history") and hasattr(queries, "period_containing")
    # The project's functions are being written while this runs: pass `now` when they take it
    # (the data's end, so the day asked is a finished one).
    grid_now = (
        {"now": span.end}
        if hasattr(queries, "grid_energy")
        and "now" in inspect.signature(queries.grid_energy).parameters
        else {}
    )
    has_grid = hasattr(queries, "grid_energy")
    site_http = site_url if has_history and _reverse("api-site-energy", 1) else None
    grid_http = grid_url if has_grid and _reverse("api-analytics-energy") else None
    kinds = [
        Kind(
            "raw_24h",
            "last 24 h raw, one sensor (readings_page)",
            True,
            raw_params,
            raw_call,
            len,
            raw_url,
            func="queries.readings_page",
        ),
        Kind(
            "hourly_30d",
            "30 days hourly, one sensor (aggregates 1h, Lisbon)",
            True,
            agg_params(30 * DAY),
            agg_call("1h", LISBON),
            len,
            agg_url("1h", LISBON),
            func="queries.aggregates",
        ),
        Kind(
            "daily_1y",
            "1 year daily, one sensor (aggregates 1d, Lisbon)",
            True,
            agg_params(365 * DAY),
            agg_call("1d", LISBON),
            len,
            agg_url("1d", LISBON),
            "Lisbon's UTC offset is not a whole day, so local days are read from rollup_1h",
            func="queries.aggregates",
        ),
    ]
    if has_history:
        kinds.append(
            Kind(
                "site_day",
                "a site's energy, one local day (site_history, period=day)",
                True,
                site_params,
                site_history_call,
                lambda r: len(r["slots"]),
                site_http,
                func="queries.site_history",
            )
        )
    else:
        kinds.append(
            Kind(
                "site_day",
                "a site's energy, one local day (site_energy by hour)",
                True,
                site_params,
                site_energy_call,
                len,
                None,
                "no HTTP endpoint for site energy",
                func="queries.site_energy",
            )
        )
    if has_grid:
        kinds.append(
            Kind(
                "fleet_day",
                "fleet by feeder, one local day (grid_energy, period=day)",
                True,
                fleet_params,
                grid_call,
                lambda r: len(r["feeders"]),
                grid_http,
                func="queries.grid_energy",
            )
        )
    else:
        kinds.append(
            Kind(
                "fleet_day",
                "fleet by feeder, one local day (bench/query/fleet.py SQL)",
                True,
                fleet_params,
                fleet_sql_call,
                len,
                None,
                "no fleet-by-feeder function in the project: equivalent set-based SQL",
                func="bench.query.fleet.fleet_by_feeder",
            )
        )
    # The same questions over a window every size holds (the 1M data spans 10.4 days): the
    # target kinds return fewer buckets at the small sizes, so their growth mixes table size
    # with work; these compare equal work.
    kinds += [
        Kind(
            "hourly_10d",
            "extra: 10 days hourly, one sensor (equal work at every size)",
            False,
            agg_params(10 * DAY),
            agg_call("1h", LISBON),
            len,
            None,
            func="queries.aggregates",
        ),
        Kind(
            "daily_10d",
            "extra: 10 days daily, one sensor (equal work at every size)",
            False,
            agg_params(10 * DAY),
            agg_call("1d", LISBON),
            len,
            None,
            func="queries.aggregates",
        ),
    ]
    kinds.append(
        Kind(
            "daily_1y_utc",
            "extra: 1 year daily in UTC (rollup_1d)",
            False,
            agg_params(365 * DAY),
            agg_call("1d", UTC_ZONE),
            len,
            agg_url("1d", UTC_ZONE),
            func="queries.aggregates",
        )
    )
    if has_history:
        kinds.append(
            Kind(
                "site_energy_day",
                "extra: site_energy by hour, one local day",
                False,
                site_params,
                site_energy_call,
                len,
                None,
                "no endpoint of its own",
                func="queries.site_energy",
            )
        )
    if has_history:
        kinds.append(
            Kind(
                "site_today",
                "extra: site_day for the day in progress",
                False,
                site_today_params,
                site_history_call,
                lambda r: len(r["slots"]),
                site_http,
                "the local day containing the data's end",
                func="queries.site_history",
            )
        )
    if has_grid:
        kinds.append(
            Kind(
                "fleet_today",
                "extra: fleet_day for the day in progress",
                False,
                today_params,
                grid_call,
                lambda r: len(r["feeders"]),
                grid_http,
                "the local day containing the data's end",
                func="queries.grid_energy",
            )
        )
    if has_grid:
        kinds.append(
            Kind(
                "fleet_day_tuned",
                "what-if: grid_energy, no parallel/JIT, work_mem 64MB",
                False,
                fleet_params,
                lambda p: fleet.grid_energy_tuned(day=p["day"], **grid_now),
                lambda r: len(r["feeders"]),
                None,
                "session settings only",
                func="queries.grid_energy under SET LOCAL",
            )
        )
    if has_grid:
        kinds.append(
            Kind(
                "fleet_day_sql",
                "extra: fleet by feeder, set-based SQL stand-in",
                False,
                fleet_params,
                fleet_sql_call,
                len,
                None,
                "bench/query/fleet.py: one plan query + one set-based statement",
                func="bench.query.fleet.fleet_by_feeder",
            )
        )
    else:
        kinds.append(
            Kind(
                "fleet_day_product",
                "extra: fleet by feeder via energy_by_device",
                False,
                fleet_params,
                fleet_product_call,
                len,
                None,
                "the project's per-quarter-hour site-energy code over every site",
                func="bench.query.fleet.fleet_by_feeder_product_code",
            )
        )
    return kinds  # fmt: skip


def _reverse(name: str, *args) -> str | None:
    from django.urls import NoReverseMatch, reverse

    try:
        return reverse(name, args=args or None)
    except NoReverseMatch:
        return None
