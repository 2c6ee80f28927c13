"""Reconcile matches derived outages to stored ones by overlap: a cut keeps its row (and its
ledger entries) when late reports move its start or end, and only merges and non-cuts void."""

from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from outages import services
from outages.models import CreditEntry, CreditPolicy, Outage
from outages.site_outages import OutageInterval, coverage, match_by_overlap, overlaps
from tests.outages.conftest import at, reconcile


def rows(home):
    return list(
        Outage.objects.filter(site=home["site"])
        .order_by("started_at", "id")
        .values_list("id", "started_at", "ended_at", "status")
    )


def report_cuts(report, device, *spans):
    """`device` reports each (lost, restored) pair of minutes."""
    for lost, restored in spans:
        report(device, "lost", lost)
        report(device, "restored", restored)


def entries(home):
    return list(
        CreditEntry.objects.filter(site=home["site"])
        .order_by("id")
        .values_list("outage_id", "amount", "revision")
    )


def test_a_live_outage_moved_earlier_by_a_late_report_keeps_its_id_and_pays_once(
    home, ofgem, report
):
    # given a live cut seen by pi-a1 from 10 minutes past
    report(home["a"], "lost", 10)
    reconcile(home)
    [(live, *_)] = rows(home)
    # when pi-a2 replays that it lost mains at the top of the hour, then both get mains back
    report(home["b"], "lost", 0)
    moved = reconcile(home)
    report(home["a"], "restored", 13 * 60)
    report(home["b"], "restored", 13 * 60)
    reconcile(home)

    # then the same row runs from the earlier instant, and the ledger has one +£95, no churn
    assert (moved.created, moved.updated, moved.voided) == (0, 1, 0)
    assert rows(home) == [(live, at(0), at(13 * 60), "ended")]
    assert entries(home) == [(live, Decimal("95.00"), 1)]


def test_an_ended_cut_moved_earlier_within_its_credit_step_writes_no_entry(home, ofgem, report):
    report(home["a"], "lost", 10)
    report(home["a"], "restored", 13 * 60)
    reconcile(home)
    [(paid, *_)] = rows(home)
    # a late earlier start that leaves the cut under 24 hours changes nothing it earned
    report(home["b"], "lost", 0)
    report(home["b"], "restored", 60)
    result = reconcile(home)

    assert result.entries == []
    assert rows(home) == [(paid, at(0), at(13 * 60), "ended")]
    assert entries(home) == [(paid, Decimal("95.00"), 1)]


def test_two_cuts_merged_by_a_late_report_keep_the_earlier_and_void_the_later(home, ofgem, report):
    # given two paid 13-hour cuts an hour apart
    report_cuts(report, home["a"], (0, 13 * 60), (14 * 60, 27 * 60))
    reconcile(home)
    first, second = (row[0] for row in rows(home))
    # when pi-a2 shows mains never came back at the site in between
    report(home["b"], "lost", 12 * 60)
    report(home["b"], "restored", 15 * 60)
    result = reconcile(home)

    # then the earlier row holds the 27-hour cut (£140), the later is void and its £95 taken back
    assert result.voided == 1
    assert rows(home) == [
        (first, at(0), at(27 * 60), "ended"),
        (second, at(14 * 60), at(27 * 60), "void"),
    ]
    assert entries(home) == [
        (first, Decimal("95.00"), 1),
        (second, Decimal("95.00"), 1),
        (second, Decimal("-95.00"), 2),
        (first, Decimal("45.00"), 2),
    ]


def test_a_late_short_cut_before_a_paid_one_leaves_it_its_row_and_policy(home, ofgem, report):
    # given a 2 h 30 min cut paid by Delhi's policy (INR 200), then the site moved to Ofgem's
    delhi = CreditPolicy.objects.get(name="Delhi")
    services.site_credit_policy_set(site_id=home["site"].id, policy_id=delhi.id)
    report(home["a"], "lost", 15 * 60)
    report(home["a"], "restored", 17 * 60 + 30)
    reconcile(home)
    [(paid, *_)] = rows(home)
    services.site_credit_policy_set(site_id=home["site"].id, policy_id=ofgem.id)
    # when the Pi replays a cut of 4 min 30 s the night before, its `lost` first (for a moment
    # the site looks out from then until the paid cut's end), then its `restored`
    report(home["a"], "lost", 0)
    reconcile(home)
    report(home["a"], "restored", 4.5)
    reconcile(home)

    # then the paid cut keeps its row and Delhi's price; the short cut is new, priced by Ofgem
    [(short, *_), _] = rows(home)
    assert rows(home) == [
        (short, at(0), at(4.5), "ended"),
        (paid, at(15 * 60), at(17 * 60 + 30), "ended"),
    ]
    assert Outage.objects.get(pk=paid).credit_policy == delhi
    assert Outage.objects.get(pk=short).credit_policy == ofgem
    assert entries(home) == [
        (paid, Decimal("200.00"), 1),
        (paid, Decimal("1500.00"), 2),  # the 17 h 30 min the reports showed for a moment
        (paid, Decimal("-1500.00"), 3),
    ]


def test_cuts_merged_then_parted_again_by_late_reports_get_their_rows_back(home, ofgem, report):
    # given two cuts paid by Delhi's policy (3 h: INR 200; 16 h: INR 1,500), then Ofgem's
    delhi = CreditPolicy.objects.get(name="Delhi")
    services.site_credit_policy_set(site_id=home["site"].id, policy_id=delhi.id)
    report_cuts(report, home["a"], (0, 3 * 60), (4 * 60, 20 * 60))
    reconcile(home)
    first, second = (row[0] for row in rows(home))
    services.site_credit_policy_set(site_id=home["site"].id, policy_id=ofgem.id)
    # when pi-a2's late reports first bridge the gap (one 20-hour cut for a moment), then its
    # earlier restore shows mains came back between them after all
    report(home["b"], "lost", 2 * 60)
    report(home["b"], "restored", 5 * 60)
    reconcile(home)
    assert [status for *_, status in rows(home)] == ["ended", "void"]
    report(home["b"], "restored", 3 * 60 + 30)
    reconcile(home)

    # then each cut has its own row again, priced by the policy it was first paid by
    assert rows(home) == [
        (first, at(0), at(3 * 60 + 30), "ended"),
        (second, at(4 * 60), at(20 * 60), "ended"),
    ]
    assert {o.credit_policy for o in Outage.objects.filter(site=home["site"])} == {delhi}
    paid = {}
    for outage, amount, _ in entries(home):
        paid[outage] = paid.get(outage, 0) + amount
    # Delhi: INR 50 for each of the first two started hours, 100 for each after
    assert paid == {first: Decimal("300.00"), second: Decimal("1500.00")}  # 4 and 16 hours


def test_a_void_outage_at_the_start_a_live_one_moves_to_does_not_block_it(home, ofgem, report):
    # given a live cut from 70 and a void outage (from reports long superseded) starting at 60
    report(home["a"], "lost", 70)
    reconcile(home)
    [(live, *_)] = rows(home)
    void = Outage.objects.create(
        site=home["site"], started_at=at(60), ended_at=at(65), status="void"
    )
    # when a late report moves the live cut's start to 60
    report(home["b"], "lost", 60)
    reconcile(home)

    # then the live row takes the start; the void one stays as it was
    assert rows(home) == [(live, at(60), None, "open"), (void.id, at(60), at(65), "void")]


def _interval(start, end):
    return OutageInterval(at(start), None if end is None else at(end), momentary=False)


def test_match_by_overlap_pairs_each_derived_outage_with_the_one_it_shares_most_with():
    stored = [_interval(0, 10), _interval(20, 30), _interval(40, None)]
    derived = [_interval(-5, 25), _interval(35, None)]

    pairs, unmatched = match_by_overlap(derived, stored)

    assert pairs == [(derived[0], stored[0]), (derived[1], stored[2])]
    assert unmatched == [stored[1]]


def test_match_by_overlap_gives_a_split_cut_its_row_once_with_the_piece_holding_most_of_it():
    stored = [_interval(0, 100)]
    derived = [_interval(0, 30), _interval(60, 100)]

    pairs, unmatched = match_by_overlap(derived, stored)

    assert pairs == [(derived[0], None), (derived[1], stored[0])]
    assert unmatched == []


def test_match_by_overlap_gives_ties_to_the_earliest():
    split = match_by_overlap([_interval(0, 30), _interval(70, 100)], [_interval(0, 100)])
    merged = match_by_overlap([_interval(0, 100)], [_interval(0, 30), _interval(70, 100)])

    assert [stored for _, stored in split[0]] == [_interval(0, 100), None]
    assert merged == ([(_interval(0, 100), _interval(0, 30))], [_interval(70, 100)])


def test_match_by_overlap_gives_a_row_to_the_cut_holding_most_of_it_before_keeping_rows():
    # the long derived cut holds most of the first row and merges the second into it: it takes
    # the first row (the second is void), not the second row with the first left to 5 minutes
    stored = [_interval(0, 100), _interval(110, 120)]
    derived = [_interval(0, 5), _interval(6, 115)]

    pairs, unmatched = match_by_overlap(derived, stored)

    assert pairs == [(derived[0], None), (derived[1], stored[0])]
    assert unmatched == [stored[1]]


def test_match_by_overlap_keeps_rows_for_cuts_that_only_touch():
    stored = [_interval(0, 10), _interval(20, 30)]
    derived = [_interval(10, 10), _interval(30, 40)]

    assert match_by_overlap(derived, stored) == (
        [(derived[0], stored[0]), (derived[1], stored[1])],
        [],
    )


def test_a_merged_cut_keeps_the_row_of_the_earliest_it_covers_whole():
    stored = [_interval(0, 10), _interval(20, 90)]
    derived = [_interval(0, 90)]

    assert match_by_overlap(derived, stored) == ([(derived[0], stored[0])], [stored[1]])


def test_coverage_is_the_share_of_the_stored_cut_covered():
    assert coverage(_interval(0, 30), _interval(0, 120)) == Fraction(1, 4)
    assert coverage(_interval(-60, 200), _interval(0, 120)) == 1
    assert coverage(_interval(120, 130), _interval(0, 120)) == 0  # touching
    assert coverage(_interval(60, None), _interval(0, 120)) == Fraction(1, 2)
    assert coverage(_interval(60, None), _interval(0, None)) == 1
    assert coverage(_interval(0, 50), _interval(0, None)) == 0
    assert coverage(_interval(5, 10), _interval(10, 10)) == 1


def test_a_void_row_is_revived_where_its_start_comes_back_without_giving_up_a_live_row():
    merged = _interval(0, 100)
    parted = [_interval(0, 30), _interval(50, 100)]
    void = [_interval(50, 100)]

    # the live row goes to the piece it can still take, the void one comes back for its start
    pairs, unmatched = match_by_overlap(parted, [merged], void=void)
    assert pairs == [(parted[0], merged), (parted[1], void[0])]
    assert unmatched == []
    # a piece with no row takes the void one at its start; a live row is never given up for it
    assert match_by_overlap([_interval(50, 60)], [], void=void) == (
        [(_interval(50, 60), void[0])],
        [],
    )
    assert match_by_overlap([_interval(50, 100)], [merged], void=void) == (
        [(_interval(50, 100), merged)],
        [],
    )


def test_match_by_overlap_pairs_a_long_chain_of_cuts_earliest_first(monkeypatch):
    # a chain of cuts each overlapping two stored ones, past the table's size: paired the
    # linear way, each with the earliest it overlaps
    monkeypatch.setattr("outages.site_outages.MAX_TABLE", 3)
    stored = [_interval(0, 10), _interval(20, 30)]
    derived = [_interval(5, 25), _interval(28, 40)]

    assert match_by_overlap(derived, stored) == (
        [(derived[0], stored[0]), (derived[1], stored[1])],
        [],
    )


def test_match_by_overlap_pairs_an_open_cut_with_the_open_row():
    stored = [_interval(0, 10), _interval(20, None)]
    derived = [_interval(0, 25), _interval(30, None)]

    pairs, unmatched = match_by_overlap(derived, stored)

    assert pairs == [(derived[0], stored[0]), (derived[1], stored[1])]
    assert unmatched == []


def test_match_by_overlap_counts_touching_ends_as_one_cut():
    stored = [_interval(10, 20)]
    derived = [_interval(0, 10)]

    assert match_by_overlap(derived, stored) == ([(derived[0], stored[0])], [])


# --- the pairing against every order-keeping pairing, for small random sets of cuts ------------


@st.composite
def disjoint_cuts(draw):
    """Up to four disjoint cuts in time order (minutes), the last perhaps open; zero-length
    cuts included, and cuts touching the next in some draws (reports never make those, but the
    pairing takes them)."""
    bounds = sorted(draw(st.lists(st.integers(0, 60), min_size=0, max_size=8)))
    touching = draw(st.booleans())
    spans: list[list] = []
    for k in range(0, len(bounds) - 1, 2):
        start, end = bounds[k], bounds[k + 1]
        if spans and (
            start < spans[-1][1]
            or start == spans[-1][0]
            or (start == spans[-1][1] and not touching)
        ):
            continue
        spans.append([start, end])
    if spans and draw(st.booleans()):
        spans[-1][1] = None
    return [_interval(start, end) for start, end in spans]


def _score(pairs):
    return sum((coverage(d, s) for d, s in pairs), Fraction(0)), len(pairs)


def _every_pairing(derived, stored):
    """Every order-keeping set of overlapping pairs."""
    if not derived or not stored:
        yield []
        return
    first, rest = derived[0], derived[1:]
    yield from _every_pairing(rest, stored)  # the first derived cut takes no row
    for k, row in enumerate(stored):
        if overlaps(first, row):
            for more in _every_pairing(rest, stored[k + 1 :]):
                yield [(first, row), *more]


@settings(max_examples=300, deadline=None)
@given(derived=disjoint_cuts(), stored=disjoint_cuts())
def test_match_by_overlap_is_the_best_order_keeping_pairing(derived, stored):
    pairs, unmatched = match_by_overlap(derived, stored)

    taken = [(d, s) for d, s in pairs if s is not None]
    assert [d for d, _ in pairs] == derived  # every derived cut once, in time order
    assert all(overlaps(d, s) for d, s in taken)
    rows_taken = [s for _, s in taken]
    assert rows_taken == sorted(rows_taken, key=lambda s: s.started_at)  # order kept
    assert len(set(map(id, rows_taken))) == len(rows_taken)
    assert sorted(map(id, unmatched)) == sorted(id(s) for s in stored if s not in rows_taken)
    assert _score(taken) == max(_score(p) for p in _every_pairing(derived, stored))
