"""The fleet-by-feeder view for one local day, as set-based SQL over the rollups — the stand-in
measured while the project has no fleet-by-feeder query function of its own.

Two statements:

1. the plan: every energy/power sensor of a site on a feeder, joined devices_sensor ->
   devices_device -> devices_site (-> telemetry_polledappliance for interval appliances), with the
   mode and unit factor of `telemetry.queries.energy_plan`'s rule (meter / interval / counter /
   power-only-if-the-device-has-no-energy-sensor; Wh, kWh, MWh; W, kW, MW);
2. the energy: the rollup rows of those sensors over [local midnight, next local midnight) from
   `telemetry.queries._union` at levels (1h, 15m) — the project's own rollup reader, so dirty
   marks are merged from raw data exactly as the API's aggregates do — re-cut to hours, energy per
   sensor and hour by the rule, per site the meter when it has data that day else the devices,
   then per feeder (and its transformer): kWh, cost (site kWh x site tariff, to 0.0001), sites.

Differences from `queries.energy_by_device` (which works per quarter-hour): power is integrated
per hour (mean W of the hour x 1 h) and a counter reset is detected per hour; both give the same
figures when every quarter-hour has readings and no counter resets, as in the benchmark's data.
"""

# ruff: noqa: S608  (constant SQL fragments; every value is a bound parameter)

import zoneinfo
from datetime import UTC, date, datetime, timedelta

from django.db import connection

from telemetry import queries

_PLAN = """
SELECT se.id, st.id,
       CASE WHEN se.kind = 'power' THEN 'power'
            WHEN d.kind = 'meter' THEN 'meter'
            WHEN EXISTS (SELECT 1 FROM telemetry_polledappliance pa WHERE pa.device_id = d.id
                           AND pa.store_type IN ('sum', 'consumption')) THEN 'interval'
            ELSE 'counter' END,
       CASE WHEN se.kind = 'power' THEN
              CASE lower(trim(se.unit)) WHEN 'kw' THEN 1000.0 WHEN 'mw' THEN 1000000.0 ELSE 1.0 END
            ELSE CASE lower(trim(se.unit)) WHEN 'wh' THEN 0.001 WHEN 'mwh' THEN 1000.0 ELSE 1.0 END
       END::float8
FROM devices_sensor se
JOIN devices_device d ON d.id = se.device_id
JOIN devices_site st ON st.id = d.site_id
WHERE st.feeder_id IS NOT NULL AND st.timezone = %(tz)s
  AND (se.kind = 'energy' OR (se.kind = 'power' AND NOT EXISTS (
        SELECT 1 FROM devices_sensor e WHERE e.device_id = d.id AND e.kind = 'energy')))
"""


def fleet_by_feeder(*, day: date, tz: str = "Europe/Lisbon") -> list[tuple]:
    """(feeder id, feeder code, transformer code, sites, kWh, cost) for the local `day` of the
    sites in zone `tz` (the view groups sites by zone; the benchmark's are all Europe/Lisbon)."""
    zone = zoneinfo.ZoneInfo(tz)
    lo = datetime.combine(day, datetime.min.time(), zone).astimezone(UTC)
    hi = datetime.combine(day + timedelta(days=1), datetime.min.time(), zone).astimezone(UTC)
    with connection.cursor() as cursor:
        cursor.execute(_PLAN, {"tz": tz})
        plan = cursor.fetchall()
    if not plan:
        return []
    ids = [p[0] for p in plan]
    q = queries._Sql()
    union = queries._union(q, ids, lo, hi, ("1h", "15m"))
    m = (
        f"SELECT * FROM unnest({q.p(ids)}::bigint[], {q.p([p[1] for p in plan])}::bigint[], "
        f"{q.p([p[2] for p in plan])}::text[], {q.p([p[3] for p in plan])}::float8[]) "
        "AS m(sensor_id, site_id, mode, factor)"
    )
    lo_p = q.p(lo)
    sql = f"""
    WITH m AS ({m}),
    h AS (
        SELECT u.sensor_id, date_bin(interval '1 hour', u.bucket, {queries.ORIGIN_SQL}) AS bucket,
               sum(u.sum) AS sum, sum(u.count) AS count, min(u.min) AS min,
               (array_agg(u.last ORDER BY u.bucket DESC))[1] AS last
        FROM ({union}) u GROUP BY 1, 2
    ),
    x AS (
        SELECT h.*, m.site_id, m.mode, m.factor,
               coalesce(lag(h.last) OVER (PARTITION BY h.sensor_id ORDER BY h.bucket),
                        CASE WHEN m.mode = 'counter' THEN
                            (SELECT e.value FROM energy_readings e
                             WHERE e.sensor_id = h.sensor_id AND e.time < {lo_p}
                             ORDER BY e.time DESC LIMIT 1) END) AS prev
        FROM h JOIN m ON m.sensor_id = h.sensor_id
    ),
    site AS (
        SELECT site_id,
               sum(kwh) FILTER (WHERE mode = 'meter') AS meter_kwh,
               sum(kwh) FILTER (WHERE mode <> 'meter') AS devices_kwh
        FROM (SELECT site_id, mode, factor * CASE mode
                  WHEN 'counter' THEN CASE WHEN prev IS NOT NULL AND last >= prev THEN last - prev
                                           ELSE last - min END
                  WHEN 'power' THEN sum / count / 1000.0
                  ELSE sum END AS kwh
              FROM x) y
        GROUP BY site_id
    )
    SELECT f.id, f.code, t.code, count(*) AS sites,
           sum(coalesce(s.meter_kwh, s.devices_kwh)) AS kwh,
           sum(round((coalesce(s.meter_kwh, s.devices_kwh) * st.tariff_per_kwh)::numeric, 4))
               AS cost
    FROM site s
    JOIN devices_site st ON st.id = s.site_id
    JOIN devices_feeder f ON f.id = st.feeder_id
    JOIN devices_transformer t ON t.id = f.transformer_id
    GROUP BY f.id, f.code, t.code ORDER BY f.code"""
    with connection.cursor() as cursor:
        cursor.execute(sql, q.params)
        return cursor.fetchall()


def fleet_by_feeder_product_code(*, day: date, tz: str = "Europe/Lisbon") -> dict:
    """Reference: the same view built from the project's own site-energy machinery
    (`energy_plan` + `energy_by_device` over every site of the zone, per quarter-hour, as the
    dashboards' metrics job does 200 sites at a time), summed per feeder in Python."""
    from devices.models import Site

    zone = zoneinfo.ZoneInfo(tz)
    lo = datetime.combine(day, datetime.min.time(), zone).astimezone(UTC)
    hi = datetime.combine(day + timedelta(days=1), datetime.min.time(), zone).astimezone(UTC)
    sites = {
        s["id"]: s
        for s in Site.objects.filter(feeder__isnull=False, timezone=tz).values(
            "id", "feeder_id", "tariff_per_kwh"
        )
    }
    plan = queries.energy_plan(site_ids=list(sites))
    per_site: dict[int, dict[str, float]] = {}
    for _period, device_id, mode, kwh in queries.energy_by_device(
        plan=plan, lo=lo, hi=hi, tz=tz, unit="day"
    ):
        site_id = plan.devices[device_id][0]
        entry = per_site.setdefault(site_id, {})
        key = "meter" if mode == "meter" else "devices"
        entry[key] = entry.get(key, 0.0) + kwh
    feeders: dict[int, dict] = {}
    for site_id, entry in per_site.items():
        kwh = entry.get("meter", entry.get("devices", 0.0))
        site = sites[site_id]
        f = feeders.setdefault(site["feeder_id"], {"sites": 0, "kwh": 0.0, "cost": 0})
        f["sites"] += 1
        f["kwh"] += kwh
        f["cost"] += queries.money(kwh, site["tariff_per_kwh"])
    return feeders


# -- what-ifs for the proposals ----------------------------------------------------------------


def grid_energy_tuned(*, day: date, **extra) -> dict:
    """The project's `grid_energy` with session settings suited to short queries on a small
    machine: no parallel workers (their start-up costs more than they save here, on 2 cores),
    sorts in memory (work_mem 64 MB instead of 4 MB) and no JIT."""
    from django.db import transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute("SET LOCAL jit = off")
        return queries.grid_energy(period_kind="day", day=day, **extra)
