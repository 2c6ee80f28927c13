"""The demo homes' load shapes: watts at an instant for a device, with no state.

Shared by the portal's seeded past (`telemetry/demo_history.py`, 90 days of readings) and the
simulated fleet that `make run` starts (`pi_agent/simulate.py`, live), so a demo device's live
readings continue the shape of its history: the heat pump follows the same synthetic weather,
the rooftop PV the same sun and clouds. Plain Python (no Django): the simulator imports it.

Deterministic: a value is a function of the device's seed and the instant (hashed noise), so
the same instant always gets the same value, whoever computes it.
"""

import math
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PV_PEAK_KW = 6.0  # the PV home's panels (kWp)
PORTO_LATITUDE = 41.15
SOLAR_NOON_UTC_H = 12 + 8.61 / 15  # Porto's longitude, 8.61 degrees west


def noise(seed: int, n: int) -> float:
    """A uniform number in [0, 1) for (seed, n): splitmix64's finalizer, no state."""
    x = (seed * 0x9E3779B97F4A7C15 + n * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) / 2**64


def _bell(hour: float, centre: float, width: float) -> float:
    return math.exp(-(((hour - centre) / width) ** 2))


@dataclass(slots=True)
class Instant:
    """What every profile needs of one instant, worked out once per time zone."""

    at: datetime
    us: int  # microseconds since the epoch
    minute: int  # minutes since the epoch: the noise index of readings
    hour: float  # local
    weekend: bool
    day: int  # local date's ordinal: the noise index of daily choices
    temp_c: float
    sun: float  # clear-sky PV output per kWp, kW


def _temperature(at: datetime, hour: float) -> float:
    """Outdoor temperature in Porto: a seasonal curve, a daily swing (coldest at 6, warmest at
    15) and weather fronts, the same for every site."""
    doy = at.timetuple().tm_yday
    season = 15.0 + 6.0 * math.cos(2 * math.pi * (doy - 205) / 365.25)
    swing = 4.0 * math.cos(2 * math.pi * (hour - 15.0) / 24.0)
    # Fronts: a value per UTC day, blended linearly into the next day's.
    days = (at - EPOCH).total_seconds() / 86_400
    whole = int(days)
    fraction = days - whole
    front = (1 - fraction) * noise(7, whole) + fraction * noise(7, whole + 1)
    return season + swing + 8.0 * (front - 0.5)


def _clear_sky_kw_per_kwp(at: datetime) -> float:
    doy = at.timetuple().tm_yday
    declination = 23.44 * math.sin(2 * math.pi * (doy - 80) / 365.25)
    day_length = 12.0 + 3.3 * math.sin(2 * math.pi * (doy - 80) / 365.25)
    utc_hour = at.hour + at.minute / 60
    x = (utc_hour - (SOLAR_NOON_UTC_H - day_length / 2)) / day_length
    if not 0.0 < x < 1.0:
        return 0.0
    noon_elevation = math.radians(90.0 - PORTO_LATITUDE + declination)
    return 0.85 * math.sin(noon_elevation) * math.sin(math.pi * x) ** 1.5


def instants(times: Sequence[datetime], tz: zoneinfo.ZoneInfo) -> list[Instant]:
    out = []
    for at in times:
        local = at.astimezone(tz)
        hour = local.hour + local.minute / 60
        us = (at - EPOCH) // timedelta(microseconds=1)
        out.append(
            Instant(
                at=at,
                us=us,
                minute=us // 60_000_000,
                hour=hour,
                weekend=local.weekday() >= 5,
                day=local.toordinal(),
                temp_c=_temperature(at, hour),
                sun=_clear_sky_kw_per_kwp(at),
            )
        )
    return out


# --- profiles: watts at an instant for a device seed --------------------------------------


def household_w(seed: int, i: Instant) -> float:
    base = 150.0 + 150.0 * noise(seed, 1)
    day = 0.8 + 0.4 * noise(seed, i.day)
    h = i.hour
    if i.weekend:  # up later, home all day
        activity = 500 * _bell(h, 9.5, 1.2) + 450 * _bell(h, 13.5, 1.6) + 850 * _bell(h, 20, 1.7)
    else:  # a morning peak, out at work, a large evening peak
        activity = 450 * _bell(h, 7.25, 0.8) + 120 * _bell(h, 13, 1.5) + 900 * _bell(h, 19.5, 1.6)
    # Lights and a heater more on cold dark evenings.
    activity *= 1.0 + 0.3 * min(max((16.0 - i.temp_c) / 10.0, 0.0), 1.0)
    spike = 0.0
    if noise(seed, i.minute) < 0.02 + 0.1 * activity / 1000:  # kettle, oven, washing machine
        spike = 1200.0 + 1000.0 * noise(seed + 1, i.minute)
    fridge = 60.0 + 40.0 * math.sin(i.minute / 7.0)
    return (base + activity * day + fridge + spike) * (0.95 + 0.1 * noise(seed + 2, i.minute))


def heat_pump_w(seed: int, i: Instant) -> float:
    demand = max(0.0, 17.0 - i.temp_c) * (230.0 + 60.0 * noise(seed, 1))
    if i.hour >= 23 or i.hour < 6:
        demand *= 0.65  # night setback
    elif 6 <= i.hour < 8:
        demand *= 1.3  # warming up for the morning
    if demand < 300.0:  # below its lowest modulation it cycles on and off
        return 300.0 if noise(seed, i.minute) < demand / 300.0 else 8.0
    return min(demand, 3500.0) * (0.88 + 0.24 * noise(seed + 2, i.minute))


def ev_w(seed: int, i: Instant) -> float:
    start, length = (11.0, 3.0) if i.weekend else (18.5, 2.5)
    charges = noise(seed, i.day) < (0.3 if i.weekend else 0.55)
    begin = start + length * noise(seed + 1, i.day)
    end = begin + 1.2 + 2.8 * noise(seed + 2, i.day)
    if charges and begin <= i.hour < end:
        return 7200.0 * (0.97 + 0.03 * noise(seed, i.minute))
    return 3.0 + 20.0 * _bell(i.hour, 20, 1.5)  # its standby and the garage light


def shop_w(seed: int, i: Instant) -> float:
    """A bakery: ovens before dawn, open all day Monday to Saturday, Sunday mornings only."""
    sunday = date.fromordinal(i.day).weekday() == 6
    h = i.hour
    watts = 600.0  # refrigeration, always
    if not sunday and 4.5 <= h < 7.5:
        watts += 6000.0 * (0.9 + 0.2 * noise(seed, i.minute))
    if 7 <= h < (13 if sunday else 19.5):
        watts += 1500.0 + (2000.0 if noise(seed + 1, i.minute) < 0.15 else 0.0)
    return watts * (0.95 + 0.1 * noise(seed + 2, i.minute))


def pv_w(seed: int, i: Instant) -> float:
    """The PV home's panels; clouds are per day and city-wide, so its two devices agree."""
    if i.sun == 0.0:
        return 0.0
    cloud = 0.45 + 0.55 * noise(11, i.day)
    return 1000.0 * PV_PEAK_KW * i.sun * cloud * (0.96 + 0.04 * noise(12, i.minute))


def household_pv_w(seed: int, i: Instant) -> float:
    return household_w(seed, i) - pv_w(seed, i)


PROFILES: dict[str, Callable[[int, Instant], float]] = {
    "household": household_w,
    "heat_pump": heat_pump_w,
    "ev": ev_w,
    "shop": shop_w,
    "pv": pv_w,
    "household_pv": household_pv_w,
}


def voltage_v(seed: int, i: Instant, watts: float) -> float:
    """230 V ± 2 %: a little high at night, sagging under the home's load, rising as it
    exports."""
    diurnal = 0.006 * math.cos(2 * math.pi * (i.hour - 3.0) / 24.0)
    volts = 230.0 * (1 + diurnal) - 0.0008 * watts + 0.8 * (noise(seed + 3, i.minute) - 0.5)
    return min(max(volts, 225.4), 234.6)
