"""Site outages derived from power reports, whatever order, repetition or batching they come in."""

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from outages.site_outages import OutageInterval, PowerReport, site_outage_intervals

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
MOMENTARY = timedelta(minutes=3)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def lost(device, minutes):
    return PowerReport(device, "lost", at(minutes))


def restored(device, minutes):
    return PowerReport(device, "restored", at(minutes))


def intervals(*reports):
    return site_outage_intervals(reports, momentary_threshold=MOMENTARY)


def test_one_device_cut_runs_from_lost_to_restored():
    assert intervals(lost("a", 0), restored("a", 30)) == [OutageInterval(at(0), at(30), False)]


def test_outage_runs_until_the_last_reporting_device_has_mains_again():
    # a loses mains first, b later; a is back first: the site is out until b is back
    result = intervals(lost("a", 0), lost("b", 1), restored("a", 10), restored("b", 20))

    assert result == [OutageInterval(at(0), at(20), False)]


def test_a_device_still_without_mains_keeps_the_outage_open():
    assert intervals(lost("a", 0), lost("b", 1), restored("a", 10)) == [
        OutageInterval(at(0), None, False)
    ]


def test_restored_without_lost_before_it_is_only_a_report():
    result = intervals(restored("a", -5), lost("a", 0), restored("a", 30), restored("a", 40))

    assert result == [OutageInterval(at(0), at(30), False)]


def test_lost_after_lost_of_the_same_device_opens_nothing():
    result = intervals(lost("a", 0), lost("a", 10), restored("a", 30))

    assert result == [OutageInterval(at(0), at(30), False)]


def test_cut_shorter_than_the_threshold_is_momentary_and_kept():
    result = intervals(lost("a", 0), restored("a", 2.99), lost("a", 10), restored("a", 13))

    assert result == [
        OutageInterval(at(0), at(2.99), True),
        OutageInterval(at(10), at(13), False),  # exactly the threshold is not momentary
    ]


def test_a_device_losing_mains_as_another_gets_it_back_keeps_one_outage():
    result = intervals(lost("a", 0), lost("b", 10), restored("a", 10), restored("b", 20))

    assert result == [OutageInterval(at(0), at(20), False)]


def test_arrival_order_and_repeats_change_nothing():
    reports = [lost("a", 0), restored("a", 30), lost("b", 50), restored("b", 70)]
    replayed = [reports[3], reports[1], reports[1], reports[0], reports[2], reports[3]]

    assert (
        intervals(*replayed)
        == intervals(*reports)
        == [
            OutageInterval(at(0), at(30), False),
            OutageInterval(at(50), at(70), False),
        ]
    )


def test_no_reports_no_outages():
    assert intervals() == []


reports = st.lists(
    st.builds(
        PowerReport,
        device=st.sampled_from(["a", "b", "c"]),
        state=st.sampled_from(["lost", "restored"]),
        at=st.integers(0, 240).map(lambda m: at(m)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(reports=reports, data=st.data())
def test_outages_depend_only_on_the_set_of_reports(reports, data):
    # some reports resent, then everything replayed in any order
    resent = data.draw(st.lists(st.sampled_from(reports))) if reports else []
    shuffled = data.draw(st.permutations(reports + resent))

    assert intervals(*shuffled) == intervals(*reports)


@settings(max_examples=200, deadline=None)
@given(reports=reports)
def test_outages_are_ordered_disjoint_and_only_the_last_may_be_open(reports):
    result = intervals(*reports)

    for earlier, later in pairwise(result):
        assert earlier.ended_at is not None
        assert earlier.ended_at <= later.started_at
    for interval in result:
        assert interval.ended_at is None or interval.ended_at >= interval.started_at
        assert interval.momentary == (
            interval.ended_at is not None and interval.duration < MOMENTARY
        )
