"""The resident dashboard's figures, worked out by hand: power now, today's and this month's
energy and cost against the same time yesterday and last month, the latest readings and the
last hour of each power chart."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django.db import connection, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from devices.models import Command, CommandStatus
from devices.selectors import relay_states, resident_sites_with_devices
from telemetry import queries, rollups
from telemetry.selectors import dashboard_figures
from tests.telemetry import test_rollups
from tests.telemetry.test_rollups import LISBON, insert

pytestmark = pytest.mark.django_db
lisbon_site = test_rollups.lisbon_site  # a site with a meter, a counter and power

NOW = datetime(2026, 7, 15, 14, 7, tzinfo=UTC)  # 15:07 in Lisbon (summer time)


def _quarters(first: datetime, last: datetime):
    t = first
    while t <= last:
        yield t
        t += timedelta(minutes=15)


def _local(*args) -> datetime:
    return datetime(*args, tzinfo=LISBON).astimezone(UTC)


def _figures(user, site_id):
    sites = list(resident_sites_with_devices(user=user))
    return dashboard_figures(sites=sites, now=NOW)[site_id]


def test_today_and_this_month_against_the_same_time_before(alice, lisbon_site):
    meter = lisbon_site["meter"]
    rows = [(meter, t, 0.25) for t in _quarters(_local(2026, 7, 15), _local(2026, 7, 15, 15))]
    rows += [(meter, t, 0.5) for t in _quarters(_local(2026, 7, 14), _local(2026, 7, 14, 23, 45))]
    rows += [(meter, _local(2026, 6, 10, 12), 2.0), (meter, _local(2026, 6, 20, 12), 5.0)]
    insert(rows)

    f = _figures(alice, lisbon_site["site"].id)

    # today: 00:00 to 15:00 local, 61 quarters of 0.25 kWh; yesterday to 15:07: 61 of 0.5
    assert f.today.kwh == pytest.approx(15.25)
    assert f.today.before_kwh == pytest.approx(30.5)
    assert f.today.cost == Decimal("3.0500")  # at 0.2 a kWh
    assert f.today.change_pct == -50
    # this month: all of yesterday (96 x 0.5) and today; last month to 15 June: the 10th only
    assert f.month.kwh == pytest.approx(63.25)
    assert f.month.before_kwh == pytest.approx(2.0)
    assert f.month.before_cost == Decimal("0.4000")
    assert f.currency == lisbon_site["site"].currency


def test_power_now_latest_readings_and_the_last_hour(alice, alice_home, lisbon_site):
    power = lisbon_site["power"]
    voltage = alice_home["device"].sensors.get(key="voltage_v").id
    insert(
        [
            (power, NOW - timedelta(minutes=70), 999.0),  # before the hour: not charted
            (power, datetime(2026, 7, 15, 13, 30, 10, tzinfo=UTC), 400.0),
            (power, datetime(2026, 7, 15, 13, 30, 40, tzinfo=UTC), 600.0),  # same minute: 500
            (power, NOW - timedelta(minutes=2), 850.0),
            (voltage, NOW - timedelta(minutes=20), 231.0),  # too old to show as "now"
        ]
    )

    f = _figures(alice, lisbon_site["site"].id)

    assert f.power_w == 850.0
    assert f.latest[power][1] == 850.0
    assert voltage not in f.latest
    xs, ys = f.series[power]
    assert ys == [500.0, 850.0]
    assert xs == [
        datetime(2026, 7, 15, 13, 30, tzinfo=UTC).timestamp(),
        (NOW - timedelta(minutes=2)).replace(second=0).timestamp(),
    ]


def test_a_site_without_readings_has_no_power_and_zero_energy(alice, alice_home):
    f = _figures(alice, alice_home["site"].id)
    assert f.power_w is None
    assert (f.today.kwh, f.month.kwh, f.today.change_pct) == (0, 0, None)


def test_last_month_is_clamped_to_its_last_day(alice, lisbon_site):
    # on 31 March at noon, "last month by this day" runs to 28 February (2026) at noon
    meter = lisbon_site["meter"]
    insert([(meter, _local(2026, 2, 28, 11), 1.0), (meter, _local(2026, 2, 28, 13), 4.0)])
    sites = list(resident_sites_with_devices(user=alice))
    now = _local(2026, 3, 31, 12)
    f = dashboard_figures(sites=sites, now=now)[lisbon_site["site"].id]
    assert f.month.before_kwh == pytest.approx(1.0)


def test_the_relay_shows_the_last_state_the_device_carried_out(alice_home):
    device = alice_home["device"]
    at = NOW - timedelta(hours=1)
    for state, status, done_at in (
        ("off", CommandStatus.DONE, at),
        ("on", CommandStatus.DONE, at + timedelta(minutes=5)),
        ("off", CommandStatus.FAILED, at + timedelta(minutes=9)),  # not carried out
    ):
        Command.objects.create(
            device=device, name="relay", args={"state": state}, status=status,
            expires_at=NOW, completed_at=done_at,
        )  # fmt: skip
    assert relay_states(device_ids=[device.id]) == {device.id: ("on", at + timedelta(minutes=5))}


def _month_rows(lisbon_site):
    """Meter, power and counter readings over June and July to NOW, every 15 minutes on some
    days, with gaps: whole days the store holds and partial ones it does not."""
    meter, power, counter = (lisbon_site[k] for k in ("meter", "power", "counter"))
    rows, total = [], 0.0
    for day in (1, 2, 9, 14, 15):
        for t in _quarters(_local(2026, 7, day), min(_local(2026, 7, day, 23, 45), NOW)):
            rows += [(meter, t, 0.1 * (day % 4 + 1)), (power, t, 200.0 + day)]
            total += 0.5
            rows.append((counter, t, total))
    for day in (3, 10, 15):
        for t in _quarters(_local(2026, 6, day, 6), _local(2026, 6, day, 18)):
            rows += [(power, t, 300.0), (counter, t, total)]
            total += 0.25
    return rows


def test_stored_site_days_give_the_same_figures_as_the_quarter_hours(alice, lisbon_site):
    from telemetry import rollups
    from telemetry.models import SiteDay

    insert(_month_rows(lisbon_site))
    computed = _figures(alice, lisbon_site["site"].id)  # nothing rolled up: all computed
    rollups.rollups_refresh(now=NOW)
    assert SiteDay.objects.filter(site=lisbon_site["site"], day__lt="2026-07-15").count() >= 5
    stored = _figures(alice, lisbon_site["site"].id)
    for name in ("today", "month"):
        a, b = getattr(computed, name), getattr(stored, name)
        assert b.kwh == pytest.approx(a.kwh, abs=1e-9)
        assert b.before_kwh == pytest.approx(a.before_kwh, abs=1e-9)
        assert (b.cost, b.before_cost) == (a.cost, a.before_cost)
    assert computed.month.kwh > computed.today.kwh > 0
    assert computed.month.before_kwh > 0


def test_the_energy_statement_is_prepared_once_a_connection_and_answers_the_same(
    alice, lisbon_site
):
    # given a meter, a counter and power over June and July, nothing rolled up
    insert(_month_rows(lisbon_site))
    with CaptureQueriesContext(connection) as logged:  # queries logged: sent unprepared
        unprepared = _figures(alice, lisbon_site["site"].id)
    assert all(query["sql"] for query in logged.captured_queries)

    # when the dashboard's figures are asked for again and again (queries not logged)
    answers = [_figures(alice, lisbon_site["site"].id) for _ in range(3)]

    # then the energy statement was prepared on this connection once, and answers the same
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
        prepared = [row[0] for row in cursor.fetchall() if "WITH ss AS" in row[0]]
    assert len(prepared) == 1
    for prepared_answer in answers:
        for name in ("today", "month"):
            a, b = getattr(unprepared, name), getattr(prepared_answer, name)
            assert (b.kwh, b.before_kwh) == pytest.approx((a.kwh, a.before_kwh), abs=1e-9)
            assert (b.cost, b.before_cost) == (a.cost, a.before_cost)
    assert unprepared.month.kwh > 0 and unprepared.today.before_kwh > 0


def test_stored_site_days_are_read_and_a_late_reading_is_not_missed(alice, lisbon_site):
    from telemetry import rollups
    from telemetry.models import SiteDay

    insert(_month_rows(lisbon_site))
    rollups.rollups_refresh(now=NOW)
    before = _figures(alice, lisbon_site["site"].id)
    # The store is what this month's whole days are read from: a row changed shows.
    SiteDay.objects.filter(site=lisbon_site["site"], day="2026-07-09").update(
        energy_kwh=F("energy_kwh") + 100
    )
    assert _figures(alice, lisbon_site["site"].id).month.kwh == pytest.approx(
        before.month.kwh + 100
    )
    # A reading that arrives late for a stored day: that day and the rest are computed again
    # (the changed row above is no longer read), the late reading included.
    insert([(lisbon_site["meter"], _local(2026, 7, 9, 12, 7), 7.0)])
    late = _figures(alice, lisbon_site["site"].id)
    assert late.month.kwh == pytest.approx(before.month.kwh + 7.0)
    assert late.today.kwh == pytest.approx(before.today.kwh)


reading = st.tuples(
    st.sampled_from(["meter", "power", "counter"]),
    st.integers(0, 45 * 96 - 1),  # quarter-hours from 1 June to NOW
    st.sampled_from([0, 7 * 60, 14 * 60 + 59]),  # seconds into the quarter-hour
    st.integers(0, 400),
)
batches = st.lists(
    st.tuples(st.lists(reading, min_size=1, max_size=30), st.booleans()), min_size=1, max_size=4
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=batches)
def test_figures_are_the_same_whatever_the_store_holds(alice, lisbon_site, batches, monkeypatch):
    # given readings arriving in batches (late, repeated), the refresh storing site days between
    # some of them, the figures equal those summed from the quarter-hours alone
    first = _local(2026, 6, 1)
    with transaction.atomic():
        for batch, refresh_after in batches:
            insert(
                [
                    (lisbon_site[kind], first + timedelta(minutes=15 * q, seconds=sec), v / 8)
                    for kind, q, sec, v in batch
                    if first + timedelta(minutes=15 * q, seconds=sec) < NOW
                ]
            )
            if refresh_after:
                rollups.rollups_refresh(now=NOW)
            with_store = _figures(alice, lisbon_site["site"].id)
            with monkeypatch.context() as m:
                m.setattr(
                    queries,
                    "_stored_span_starts",
                    lambda spans: ([lo for _, lo, _ in spans], [0.0] * len(spans)),
                )
                without = _figures(alice, lisbon_site["site"].id)
            for name in ("today", "month"):
                a, b = getattr(without, name), getattr(with_store, name)
                assert b.kwh == pytest.approx(a.kwh, abs=1e-9), name
                assert b.before_kwh == pytest.approx(a.before_kwh, abs=1e-9), name
                # the same kWh summed in another order may differ in the last bit: a cent's
                # hundredth at most, at an exact tie of the rounding
                assert abs(b.cost - a.cost) <= Decimal("0.0001"), name
                assert abs(b.before_cost - a.before_cost) <= Decimal("0.0001"), name
        transaction.set_rollback(True)
