"""Settlement through the real stores: the site's energy as telemetry counts it, its outages as
the outages app derives them, and the reward paid into the credit ledger exactly once.

The worked example, by hand. Alice's home (Lisbon) is called on Monday 2 November 2026 from 18:00
to 19:00 local (WET, UTC+0); summer time (UTC+1) ended on Sunday 25 October. Her meter reads
0.5 kWh a quarter-hour (2 kW) from 18:00 to 19:00 local every day and 0.25 (1 kW) at other
times; on the event day 0.2 kWh a quarter-hour during the event (0.8 kWh). On Wednesday 28
October her power was cut at 12:00 for 40 minutes, and on Wednesday 21 October she took part in
another event: both days used little in the window (0.1 kWh a quarter-hour) and must be skipped.
The baseline days are then 30, 29, 27, 26, 23, 22, 20, 19, 16 and 15 October (weekends
skipped), each 2 kW over 18:00-19:00 local: a baseline of 2 kW x 1 h = 2.0 kWh. The 14:00-17:00
adjustment window is 1 kW on every day: factor 1. Delivered 2.0 - 0.8 = 1.2 kWh, at 0.2375
EUR/kWh = 0.285, paid 0.29 EUR (rounded half up once). Had the windows been kept in UTC, the
summer-time days would have read 19:00-20:00 local (1 kW) instead.
"""

import zoneinfo
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django.core.exceptions import ValidationError

from demand_response import services
from demand_response.models import Invitation, SettlementResult
from demand_response.rewards import reward_for
from devices import services as device_services
from outages import services as outage_services
from outages.models import CreditEntry, Outage
from outages.selectors import credit_balance
from telemetry.services import readings_insert
from tests.demand_response.conftest import at_once

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
EVENT_DAY = date(2026, 11, 2)
START = datetime(2026, 11, 2, 18, 0, tzinfo=LISBON)
END = datetime(2026, 11, 2, 19, 0, tzinfo=LISBON)
EARLIER_EVENT_DAY = date(2026, 10, 21)
OUTAGE_DAY = date(2026, 10, 28)
DAYS_USED = [date(2026, 10, d).isoformat() for d in (30, 29, 27, 26, 23, 22, 20, 19, 16, 15)]


def alice_kwh(at: datetime) -> float:
    """Alice's meter: kWh in the quarter-hour starting at local `at` (see the module docstring)."""
    if at.hour != 18:
        return 0.25
    if at.date() == EVENT_DAY:
        return 0.2
    if at.date() in (EARLIER_EVENT_DAY, OUTAGE_DAY):
        return 0.1
    return 0.5


def meter_of(home) -> int:
    """A utility meter (kWh per quarter-hour) at the home; its sensor id."""
    site = home["site"]
    meter, _ = device_services.device_create(
        uid=f"meter-{site.pk}",
        site=site,
        kind="meter",
        sensors=[{"key": "energy_kwh", "kind": "energy", "unit": "kWh"}],
    )
    return meter.sensors.get().pk


def read(sensor_id: int, first: date, last: date, kwh, until: datetime = END) -> None:
    """Meter readings for each local quarter-hour from `first` to `last` (inclusive), up to
    `until`."""
    times, values = [], []
    t = datetime(first.year, first.month, first.day, tzinfo=LISBON).astimezone(UTC)
    end = min(until, datetime.combine(last + timedelta(days=1), datetime.min.time(), LISBON))
    while t < end:
        times.append(int(t.timestamp() * 1_000_000))
        values.append(kwh(t.astimezone(LISBON)))
        t += timedelta(minutes=15)
    readings_insert(sensor_ids=[sensor_id] * len(times), times_us=times, values=values)


def completed_event(schedule, start: datetime, end: datetime):
    event = schedule(start=start, end=end, now=start - timedelta(days=1))
    services.event_transition(event_id=event.pk, now=end)
    return event


@pytest.fixture
def world(history, schedule):
    """The worked example's event, completed."""
    return completed_event(schedule, START, END)


@pytest.fixture
def history(schedule, alice_home, bob_home):
    worked_history(schedule, alice_home, bob_home)


def worked_example(schedule, alice_home, bob_home):
    """The worked example's event, completed after its history (the pages' tests use it too)."""
    worked_history(schedule, alice_home, bob_home)
    return completed_event(schedule, START, END)


def worked_history(schedule, alice_home, bob_home):
    """The worked example before its event: Alice's history, outage and earlier event; Bob
    (opted in too) with only three days of data."""
    for home in (alice_home, bob_home):
        services.site_auto_response_set(site_id=home["site"].pk, mode="accept_all")
    alice_meter, bob_meter = meter_of(alice_home), meter_of(bob_home)
    read(alice_meter, date(2026, 9, 10), EVENT_DAY, alice_kwh)
    read(bob_meter, date(2026, 10, 28), EVENT_DAY, lambda at: 0.25)
    # the outage on 28 October, as Alice's Pi reports it
    pi = alice_home["device"]
    for state, at in (
        ("lost", datetime(2026, 10, 28, 12, 0, tzinfo=UTC)),
        ("restored", datetime(2026, 10, 28, 12, 40, tzinfo=UTC)),
    ):
        outage_services.power_event_record(
            device_id=pi.pk, site_id=pi.site_id, device_uid=pi.uid, state=state, at=at
        )
    outage_services.site_outages_reconcile(site_id=pi.site_id)
    assert Outage.objects.filter(site=pi.site_id, status="ended").count() == 1
    # the earlier event on 21 October, in which both took part
    completed_event(
        schedule,
        datetime(2026, 10, 21, 18, 0, tzinfo=LISBON),
        datetime(2026, 10, 21, 19, 0, tzinfo=LISBON),
    )


def settled(event) -> dict[str, SettlementResult]:
    return {
        r.site.name: r for r in SettlementResult.objects.filter(event=event).select_related("site")
    }


@pytest.mark.django_db
def test_settlement_pays_the_hand_computed_reward_across_a_dst_change_skipping_outage_days(
    world, alice_home, bob_home
):
    # when
    services.event_settle(event_id=world.pk)
    # then
    results = settled(world)
    alice = results["Alice home"]
    assert alice.status == "ok"
    assert alice.days_used == DAYS_USED
    assert (alice.baseline_kwh, alice.adjustment, alice.actual_kwh, alice.delivered_kwh) == (
        Decimal("2.0000"),
        Decimal("1.0000"),
        Decimal("0.8000"),
        Decimal("1.2000"),
    )
    assert (alice.reward, alice.currency) == (Decimal("0.29"), "EUR")
    [entry] = CreditEntry.objects.filter(site=alice_home["site"])
    assert (entry.amount, entry.currency, entry.dr_event_id, entry.revision) == (
        Decimal("0.29"),
        "EUR",
        world.pk,
        1,
    )
    assert "1.2000 kWh delivered" in entry.memo
    assert credit_balance([alice_home["site"].pk]) == {"EUR": Decimal("0.29")}
    # Bob has three clean days (28, 29, 30 October; the 21st had no data): no baseline, no pay
    bob = results["Bob home"]
    assert (bob.status, bob.reward, bob.baseline_kwh, bob.delivered_kwh) == (
        "insufficient_baseline",
        0,
        None,
        0,
    )
    assert bob.days_used == ["2026-10-30", "2026-10-29", "2026-10-28"]
    assert bob.actual_kwh == Decimal("1.0000")
    assert not CreditEntry.objects.filter(site=bob_home["site"]).exists()


@pytest.mark.django_db
def test_settling_again_pays_nothing_more(world, alice_home):
    services.event_settle(event_id=world.pk)
    services.event_settle(event_id=world.pk)
    assert CreditEntry.objects.filter(site=alice_home["site"]).count() == 1
    assert SettlementResult.objects.filter(event=world).count() == 2
    assert credit_balance([alice_home["site"].pk]) == {"EUR": Decimal("0.29")}


@pytest.mark.django_db(transaction=True)
def test_two_workers_settling_at_once_pay_once(world, alice_home):
    results = at_once(
        lambda: services.event_settle(event_id=world.pk),
        lambda: services.event_settle(event_id=world.pk),
    )
    assert [type(r) for r in results] == [list, list]
    assert CreditEntry.objects.filter(site=alice_home["site"]).count() == 1
    assert credit_balance([alice_home["site"].pk]) == {"EUR": Decimal("0.29")}
    assert SettlementResult.objects.filter(event=world).count() == 2


@pytest.mark.django_db
def test_a_site_that_opted_out_is_not_settled(world, bob, bob_home, schedule):
    # given Bob opts out of a new event before it starts
    start, end = START + timedelta(days=1), END + timedelta(days=1)
    event = schedule(start=start, end=end, now=start - timedelta(days=1))
    invitation = Invitation.objects.get(event=event, site=bob_home["site"])
    services.invitation_respond(
        invitation_id=invitation.pk, response="opt_out", by="resident", user=bob, now=start
    )
    services.event_transition(event_id=event.pk, now=end)
    # when
    services.event_settle(event_id=event.pk)
    # then
    assert set(settled(event)) == {"Alice home"}


@pytest.mark.django_db
def test_missing_data_during_the_event_pays_nothing_rather_than_too_much(schedule, alice_home):
    # given a full history but the meter silent from 18:30 on the event day
    services.site_auto_response_set(site_id=alice_home["site"].pk, mode="accept_all")
    read(
        meter_of(alice_home),
        date(2026, 9, 10),
        EVENT_DAY,
        alice_kwh,
        until=END - timedelta(minutes=30),
    )
    event = completed_event(schedule, START, END)
    # when
    services.event_settle(event_id=event.pk)
    # then
    alice = settled(event)["Alice home"]
    assert (alice.status, alice.actual_kwh, alice.reward) == ("insufficient_actual", None, 0)
    assert alice.baseline_kwh is not None
    assert not CreditEntry.objects.exists()


@pytest.mark.django_db
def test_only_a_completed_event_is_settled(schedule, alice_home):
    event = schedule()
    with pytest.raises(ValidationError) as raised:
        services.event_settle(event_id=event.pk)
    assert set(raised.value.message_dict) == {"status"}


@pytest.mark.django_db
def test_set_based_settlement_equals_the_rule_on_each_quarter_hour_off_quarter_windows(
    schedule, alice_home
):
    """The windows summed in SQL give what `ten_in_ten` gives from the site's energy per
    quarter-hour (the reference), also for a window cutting quarter-hours and irregular load."""
    from demand_response import selectors
    from demand_response.baseline import ten_in_ten, window_energy

    site = alice_home["site"]
    services.site_auto_response_set(site_id=site.pk, mode="accept_all")
    start = datetime(2026, 11, 2, 18, 5, tzinfo=LISBON)
    end = datetime(2026, 11, 2, 19, 10, tzinfo=LISBON)

    def kwh(at: datetime) -> float:
        return round(0.1 + (at.day * 7 + at.hour * 3 + at.minute) % 13 / 37, 6)

    read(meter_of(alice_home), date(2026, 9, 10), EVENT_DAY, kwh, until=end)
    event = completed_event(schedule, start, end)
    # when
    services.event_settle(event_id=event.pk)
    # then
    result = SettlementResult.objects.get(event=event, site=site)
    lo = datetime(2026, 9, 10, tzinfo=UTC)
    energy = selectors.site_quarter_energy(site_ids=[site.pk], lo=lo, hi=end)[site.pk]
    reference = ten_in_ten(energy=energy, start=start, end=end, tz=LISBON, excluded=set())
    assert result.status == "ok"
    assert result.baseline_kwh == reference.kwh.quantize(Decimal("0.0001"))
    assert result.adjustment == reference.adjustment.quantize(Decimal("0.0001"))
    assert result.actual_kwh == window_energy(energy, start, end).quantize(Decimal("0.0001"))
    assert result.days_used == [day.isoformat() for day in reference.days_used]


def cancelled_event(schedule, *, after: timedelta):
    """The worked example's event, active from its start and cancelled `after` it."""
    event = schedule(start=START, end=END, now=START - timedelta(days=1))
    services.event_transition(event_id=event.pk, now=START)
    services.event_cancel(event_id=event.pk, now=START + after)
    return event


@pytest.mark.django_db
def test_an_event_cancelled_mid_way_is_settled_over_the_part_that_ran(history, schedule):
    # given the event cancelled at 18:20, a third of an hour after its start. By hand: Alice's
    # baseline is 2 kW x 1/3 h = 0.6667 kWh (factor 1, as before); she used 0.2 kWh in 18:00-18:15
    # and a third of 0.2 in 18:15-18:30, 0.2667 kWh; delivered 0.4000 kWh x 0.2375 = 0.095,
    # paid 0.10 EUR (half up). Over the whole hour it would have been 1.2 kWh and 0.29 EUR.
    event = cancelled_event(schedule, after=timedelta(minutes=20))
    # when
    services.event_settle(event_id=event.pk)
    # then
    alice = settled(event)["Alice home"]
    assert (alice.status, alice.days_used) == ("ok", DAYS_USED)
    assert (alice.baseline_kwh, alice.adjustment, alice.actual_kwh, alice.delivered_kwh) == (
        Decimal("0.6667"),
        Decimal("1.0000"),
        Decimal("0.2667"),
        Decimal("0.4000"),
    )
    assert alice.reward == Decimal("0.10")
    [entry] = CreditEntry.objects.filter(site=alice.site)
    assert (entry.amount, entry.dr_event_id) == (Decimal("0.10"), event.pk)
    assert "cancelled at 2026-11-02 18:20:00 UTC" in entry.memo
    # Bob still has too few days; his actual is over the 20 minutes too: 0.25 + 0.25 / 3
    bob = settled(event)["Bob home"]
    assert (bob.status, bob.actual_kwh, bob.reward) == (
        "insufficient_baseline",
        Decimal("0.3333"),
        0,
    )


@pytest.mark.django_db
def test_an_event_cancelled_mid_way_settled_again_pays_nothing_more(history, schedule):
    event = cancelled_event(schedule, after=timedelta(minutes=20))
    services.event_settle(event_id=event.pk)
    services.event_settle(event_id=event.pk)
    assert credit_balance([history_site(event, "Alice home")]) == {"EUR": Decimal("0.10")}
    assert CreditEntry.objects.filter(dr_event_id=event.pk).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_workers_settling_a_cancelled_event_at_once_pay_once(history, schedule):
    event = cancelled_event(schedule, after=timedelta(minutes=20))
    results = at_once(
        lambda: services.event_settle(event_id=event.pk),
        lambda: services.event_settle(event_id=event.pk),
    )
    assert [type(r) for r in results] == [list, list]
    assert CreditEntry.objects.filter(dr_event_id=event.pk).count() == 1
    assert credit_balance([history_site(event, "Alice home")]) == {"EUR": Decimal("0.10")}


@pytest.mark.django_db
def test_an_event_cancelled_after_its_end_but_before_completing_is_settled_whole(history, schedule):
    # the end's transition had not run yet when the operator cancelled: it ran to its end
    event = cancelled_event(schedule, after=timedelta(hours=2))
    services.event_settle(event_id=event.pk)
    alice = settled(event)["Alice home"]
    assert (alice.baseline_kwh, alice.actual_kwh, alice.reward) == (
        Decimal("2.0000"),
        Decimal("0.8000"),
        Decimal("0.29"),
    )


@pytest.mark.django_db
def test_an_event_cancelled_before_it_became_active_is_not_settled(history, schedule):
    # given cancelled before its start, and one whose start passed without it becoming active
    early = schedule(start=START, end=END, now=START - timedelta(days=1))
    services.event_cancel(event_id=early.pk, now=START - timedelta(minutes=5))
    late = schedule(
        start=START + timedelta(days=1), end=END + timedelta(days=1), now=START - timedelta(days=1)
    )
    services.event_cancel(event_id=late.pk, now=START + timedelta(days=1, minutes=5))
    for event in (early, late):
        # when / then
        with pytest.raises(ValidationError) as raised:
            services.event_settle(event_id=event.pk)
        assert set(raised.value.message_dict) == {"status"}
    assert not SettlementResult.objects.exists()
    assert not CreditEntry.objects.exists()


def history_site(event, name: str) -> int:
    return Invitation.objects.get(event=event, site__name=name).site_id


@pytest.mark.django_db
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(minutes=st.integers(min_value=1, max_value=59), runs=st.integers(min_value=1, max_value=3))
def test_whenever_it_is_cancelled_and_however_often_settled_it_pays_the_part_that_ran_once(
    history, schedule, minutes, runs
):
    # given the event cancelled `minutes` after its start: by hand, Alice's baseline is 2 kW and
    # her use 0.8 kW over that part (see the module docstring)
    event = cancelled_event(schedule, after=timedelta(minutes=minutes))
    hours = Decimal(minutes) / 60
    baseline = (2 * hours).quantize(Decimal("0.0001"))
    actual = (Decimal("0.8") * hours).quantize(Decimal("0.0001"))
    expected = reward_for(delivered_kwh=baseline - actual, rate=Decimal("0.2375"), currency="EUR")
    # when it is settled once or more
    for _ in range(runs):
        services.event_settle(event_id=event.pk)
    # then
    alice = settled(event)["Alice home"]
    assert (alice.baseline_kwh, alice.actual_kwh, alice.reward) == (baseline, actual, expected)
    paid = CreditEntry.objects.filter(dr_event_id=event.pk).values_list("amount", flat=True)
    assert sum(paid, Decimal(0)) == expected
    assert len(paid) == (1 if expected else 0)
