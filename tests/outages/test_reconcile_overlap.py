"""Reconcile matches derived outages to stored ones by overlap: a cut keeps its row (and its
ledger entries) when late reports move its start or end, and only merges and non-cuts void."""

from decimal import Decimal

from outages.models import CreditEntry, Outage
from outages.site_outages import OutageInterval, match_by_overlap
from tests.outages.conftest import at, reconcile


def rows(home):
    return list(
        Outage.objects.filter(site=home["site"])
        .order_by("started_at", "id")
        .values_list("id", "started_at", "ended_at", "status")
    )


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
    report(home["a"], "lost", 0)
    report(home["a"], "restored", 13 * 60)
    report(home["a"], "lost", 14 * 60)
    report(home["a"], "restored", 27 * 60)
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


def test_match_by_overlap_pairs_each_derived_outage_with_the_earliest_it_overlaps():
    stored = [_interval(0, 10), _interval(20, 30), _interval(40, None)]
    derived = [_interval(-5, 25), _interval(35, None)]

    pairs, unmatched = match_by_overlap(derived, stored)

    assert pairs == [(derived[0], stored[0]), (derived[1], stored[2])]
    assert unmatched == [stored[1]]


def test_match_by_overlap_gives_a_split_cut_its_row_once():
    stored = [_interval(0, 100)]
    derived = [_interval(0, 30), _interval(60, 100)]

    pairs, unmatched = match_by_overlap(derived, stored)

    assert pairs == [(derived[0], stored[0]), (derived[1], None)]
    assert unmatched == []


def test_match_by_overlap_counts_touching_ends_as_one_cut():
    stored = [_interval(10, 20)]
    derived = [_interval(0, 10)]

    assert match_by_overlap(derived, stored) == ([(derived[0], stored[0])], [])
