"""IEEE 1366 indices from interruptions: figures worked out by hand."""

from outages.reliability import Interruption, reliability_indices
from tests.outages.conftest import at

DAY = (at(0), at(24 * 60))


def cut(site, start, end, momentary=False):
    return Interruption(site, at(start), at(end), momentary)


def test_the_worked_example_of_ten_sites():
    # 10 sites; sustained cuts of 30 min at 3 sites and 90 min at 5; a momentary one at 2
    interruptions = [
        *(cut(s, 60, 90) for s in range(3)),
        *(cut(s, 120, 210) for s in range(3, 8)),
        *(cut(s, 300, 301, momentary=True) for s in range(8, 10)),
    ]

    indices = reliability_indices(interruptions, customers_served=10, start=DAY[0], end=DAY[1])

    # SAIFI 8 / 10; SAIDI (3 x 30 + 5 x 90) / 10 = 54; CAIDI 54 / 0.8; MAIFI 2 / 10
    assert (indices.sustained_interruptions, indices.momentary_interruptions) == (8, 2)
    assert indices.customer_minutes == 540
    assert indices.saifi == 0.8
    assert indices.saidi == 54
    assert indices.caidi == 67.5
    assert indices.maifi == 0.2


def test_interruptions_are_clipped_to_the_period():
    interruptions = [
        cut("a", -60, 60),  # 60 of its 120 minutes in the period
        cut("b", 23 * 60, 25 * 60),  # 60 of 120
        cut("c", -120, -60),  # before: not counted
        cut("d", 24 * 60, 24 * 60 + 30),  # starts at the (excluded) end: not counted
        cut("e", -10, 1, momentary=False),  # a long cut seen for a minute is still sustained
    ]

    indices = reliability_indices(interruptions, customers_served=4, start=DAY[0], end=DAY[1])

    assert indices.sustained_interruptions == 3
    assert indices.customer_minutes == 121
    assert indices.saidi == 121 / 4


def test_a_cut_of_no_length_in_the_period_is_a_momentary_interruption():
    indices = reliability_indices(
        [cut("a", 10, 10, momentary=True)], customers_served=2, start=DAY[0], end=DAY[1]
    )

    assert (indices.momentary_interruptions, indices.maifi) == (1, 0.5)


def test_without_sustained_interruptions_caidi_is_none_and_the_rest_zero():
    indices = reliability_indices(
        [cut("a", 10, 11, momentary=True)], customers_served=5, start=DAY[0], end=DAY[1]
    )

    assert (indices.saifi, indices.saidi, indices.caidi, indices.maifi) == (0, 0, None, 0.2)


def test_without_customers_there_is_nothing_to_divide_by():
    indices = reliability_indices([], customers_served=0, start=DAY[0], end=DAY[1])

    assert (indices.saifi, indices.saidi, indices.caidi, indices.maifi) == (None,) * 4
