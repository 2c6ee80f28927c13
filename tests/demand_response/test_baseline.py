"""The "10 in 10" baseline: worked examples computed by hand, and properties over random loads."""

import zoneinfo
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from demand_response.baseline import ten_in_ten, window_energy

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
QUARTER = timedelta(minutes=15)


def local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=LISBON)


def quarters(
    first: date, last: date, kwh: Callable[[datetime], Decimal | None]
) -> dict[datetime, Decimal]:
    """kWh per quarter-hour (keyed in UTC) of the local days [first, last], from `kwh(local
    start of the quarter)`; None leaves the quarter without data."""
    energy = {}
    t = local(first, 0).astimezone(UTC)
    end = local(last + timedelta(days=1), 0).astimezone(UTC)
    while t < end:
        value = kwh(t.astimezone(LISBON))
        if value is not None:
            energy[t] = value
        t += QUARTER
    return energy


# Wednesday 17 June 2026, 18:00-20:00 in Lisbon (WEST); the adjustment window is 14:00-17:00.
EVENT_DAY = date(2026, 6, 17)
START, END = local(EVENT_DAY, 18), local(EVENT_DAY, 20)
# The 10 weekdays before it, most recent first.
WEEKDAYS = [date(2026, 6, d) for d in (16, 15, 12, 11, 10, 9, 8, 5, 4, 3)]


def day_rank_load(event_day_kwh: Decimal) -> Callable[[datetime], Decimal]:
    """0.1 kWh per quarter (0.4 kW) on the most recent weekday before the event, 0.2 on the one
    before, ... 1.0 on the 10th; `event_day_kwh` per quarter on the event day."""

    def kwh(at: datetime) -> Decimal:
        if at.date() == EVENT_DAY:
            return event_day_kwh
        if at.date() in WEEKDAYS:
            return Decimal("0.1") * (WEEKDAYS.index(at.date()) + 1)
        return Decimal("5")  # weekends and older days: must not be used

    return kwh


def test_ten_in_ten_averages_the_ten_weekdays_and_adjusts_by_the_ratio_before_the_start():
    # given days averaging (0.4 + 0.8 + ... + 4.0) / 10 = 2.2 kW; 2.4 kW on the event day's
    # 14:00-17:00 (0.6 kWh per quarter)
    energy = quarters(date(2026, 5, 1), EVENT_DAY, day_rank_load(Decimal("0.6")))
    # when
    result = ten_in_ten(energy=energy, start=START, end=END, tz=LISBON, excluded=set())
    # then: 2.2 kW x 2 h = 4.4 kWh, times 2.4 / 2.2 = 12/11, makes 4.8 kWh
    assert result.days_used == tuple(WEEKDAYS)
    assert result.unadjusted_kwh == Decimal("4.4")
    assert result.adjustment == Decimal(12) / Decimal(11)
    assert result.adjusted
    assert result.kwh.quantize(Decimal("0.0001")) == Decimal("4.8000")


def test_the_adjustment_is_clamped_to_0_8_and_1_2():
    high = quarters(date(2026, 5, 1), EVENT_DAY, day_rank_load(Decimal("0.9")))  # 3.6 / 2.2
    low = quarters(date(2026, 5, 1), EVENT_DAY, day_rank_load(Decimal("0.1")))  # 0.4 / 2.2
    up = ten_in_ten(energy=high, start=START, end=END, tz=LISBON, excluded=set())
    down = ten_in_ten(energy=low, start=START, end=END, tz=LISBON, excluded=set())
    assert (up.adjustment, up.kwh) == (Decimal("1.2"), Decimal("5.28"))
    assert (down.adjustment, down.kwh) == (Decimal("0.8"), Decimal("3.52"))


def test_event_and_outage_days_and_days_with_gaps_are_skipped_for_older_weekdays():
    # given 10 June excluded (an outage), and 4 June missing one quarter-hour of its window
    def kwh(at: datetime) -> Decimal | None:
        if at.date() == date(2026, 6, 4) and at.hour == 19:
            return None
        return Decimal("0.25")

    energy = quarters(date(2026, 5, 1), EVENT_DAY, kwh)
    # when
    result = ten_in_ten(
        energy=energy, start=START, end=END, tz=LISBON, excluded={date(2026, 6, 10)}
    )
    # then the two are replaced by 2 and 1 June (the 13th-14th and 6th-7th are weekends)
    assert result.days_used == tuple(date(2026, 6, d) for d in (16, 15, 12, 11, 9, 8, 5, 3, 2, 1))
    assert result.kwh == Decimal("2.00")  # 1 kW all along, adjustment 1


def test_too_few_clean_days_give_no_baseline_and_say_how_many_were_found():
    # given data only from Monday 8 June on: 7 weekdays before the event
    energy = quarters(date(2026, 6, 8), EVENT_DAY, lambda at: Decimal("0.25"))
    result = ten_in_ten(energy=energy, start=START, end=END, tz=LISBON, excluded=set())
    assert not result.sufficient
    assert result.kwh is None
    assert result.days_used == tuple(WEEKDAYS[:7])


def test_baseline_days_use_the_same_local_hours_across_a_dst_change():
    # given an event on Monday 2 November 2026 18:00-20:00 WET (UTC+0); summer time ended on
    # 25 October, so 5 of the 10 weekdays were on WEST (UTC+1). The site uses 3 kW from 18:00 to
    # 20:00 local every day, 1 kW otherwise.
    event_day = date(2026, 11, 2)

    def kwh(at: datetime) -> Decimal:
        return Decimal("0.75") if 18 <= at.hour < 20 else Decimal("0.25")

    energy = quarters(date(2026, 9, 1), event_day, kwh)
    # when
    result = ten_in_ten(
        energy=energy,
        # in UTC, as the database gives them (aware arithmetic in a local zone is wall-clock
        # arithmetic already, which would hide a window kept in UTC)
        start=local(event_day, 18).astimezone(UTC),
        end=local(event_day, 20).astimezone(UTC),
        tz=LISBON,
        excluded=set(),
    )
    # then every day's 18:00-20:00 local is compared: 3 kW x 2 h. Windows kept in UTC would have
    # read 19:00-21:00 local on the summer-time days: (3 + 1) / 2 kW there, 5 kWh in all.
    assert result.days_used == tuple(
        date(2026, 10, d) for d in (30, 29, 28, 27, 26, 23, 22, 21, 20, 19)
    )
    assert result.adjustment == 1
    assert result.kwh == Decimal("6")


def test_window_energy_counts_partial_intervals_pro_rata_and_none_for_a_gap():
    t = datetime(2026, 6, 17, 17, 0, tzinfo=UTC)
    energy = {t: Decimal("0.3"), t + QUARTER: Decimal("0.6")}
    five = timedelta(minutes=5)
    # 0.3 x 10/15 + 0.6 x 5/15
    assert window_energy(energy, t + five, t + QUARTER + five) == Decimal("0.4")
    assert window_energy(energy, t, t + 2 * QUARTER) == Decimal("0.9")
    assert window_energy(energy, t, t + 3 * QUARTER) is None


# --- properties ---------------------------------------------------------------------------------

day_levels = st.lists(st.decimals(min_value=0, max_value=5, places=2), min_size=30, max_size=30)
hour_shape = st.lists(st.decimals(min_value=0, max_value=2, places=2), min_size=24, max_size=24)


def shaped(levels: list[Decimal], shape: list[Decimal]) -> dict[datetime, Decimal]:
    """kWh per quarter: a level per day (the 30 days before the event) times a shape per hour."""
    first = EVENT_DAY - timedelta(days=29)
    return quarters(first, EVENT_DAY, lambda at: levels[(at.date() - first).days] * shape[at.hour])


@settings(max_examples=40, deadline=None)
@given(
    levels=day_levels,
    shape=hour_shape,
    k=st.decimals(min_value=Decimal("0.01"), max_value=100, places=2),
)
def test_scaling_all_load_by_k_scales_the_baseline_by_k(levels, shape, k):
    energy = shaped(levels, shape)
    scaled = {t: kwh * k for t, kwh in energy.items()}
    base = ten_in_ten(energy=energy, start=START, end=END, tz=LISBON, excluded=set())
    times_k = ten_in_ten(energy=scaled, start=START, end=END, tz=LISBON, excluded=set())
    assert times_k.days_used == base.days_used
    assert abs(times_k.adjustment - base.adjustment) <= Decimal("1e-20")
    assert abs(times_k.kwh - base.kwh * k) <= Decimal("1e-18") * (1 + base.kwh * k)


@settings(max_examples=40, deadline=None)
@given(
    levels=day_levels,
    shape=hour_shape,
    excluded=st.sets(st.integers(min_value=1, max_value=29), max_size=12),
)
def test_the_adjustment_stays_within_0_8_and_1_2_and_days_are_clean_weekdays_most_recent_first(
    levels, shape, excluded
):
    excluded_days = {EVENT_DAY - timedelta(days=n) for n in excluded}
    energy = shaped(levels, shape)
    result = ten_in_ten(energy=energy, start=START, end=END, tz=LISBON, excluded=excluded_days)
    assert Decimal("0.8") <= result.adjustment <= Decimal("1.2")
    assert list(result.days_used) == sorted(result.days_used, reverse=True)
    assert all(d.weekday() < 5 and d < EVENT_DAY for d in result.days_used)
    assert not set(result.days_used) & excluded_days
    clean = [
        EVENT_DAY - timedelta(days=n)
        for n in range(1, 30)
        if (EVENT_DAY - timedelta(days=n)).weekday() < 5 and n not in excluded
    ]
    assert list(result.days_used) == clean[:10]
    assert result.sufficient == (len(clean) >= 10)
    if result.sufficient:
        assert result.kwh >= 0
