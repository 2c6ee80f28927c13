"""The one function that prices a cut: worked examples of the shipped policies (figures worked out
by hand from PRODUCT.md) and properties over random policies."""

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outages.credit_rules import (
    MICROSECOND,
    TierError,
    credit_for,
    credit_quote,
    duration_iso,
    duration_parse,
    parse_tiers,
    round_money,
)


@dataclass
class Policy:
    currency: str
    threshold: timedelta
    base_amount: Decimal
    tiers: list = field(default_factory=list)
    count_started_periods: bool = False
    cap: Decimal | None = None


def hours(h: float, minutes: int = 0, seconds: int = 0) -> timedelta:
    return timedelta(hours=h, minutes=minutes, seconds=seconds)


# The three shipped policies as migration 0003 writes them (tests/outages/test_models.py checks
# the rows in the database price the same).
OFGEM = Policy(
    "GBP",
    hours(12),
    Decimal("95.00"),
    [{"after": "PT12H", "period": "PT12H", "amount": "45.00"}],
)
DELHI = Policy(
    "INR",
    hours(1) + MICROSECOND,
    Decimal("0.00"),
    [
        {"after": "PT0S", "period": "PT1H", "amount": "50.00"},
        {"after": "PT2H", "period": "PT1H", "amount": "100.00"},
    ],
    count_started_periods=True,
)
NEW_YORK = Policy(
    "USD", hours(72), Decimal("0.00"), [{"after": "P3D", "period": "P1D", "amount": "25.00"}]
)

OFGEM_EXAMPLES = [
    (hours(11, 59), "0.00"),
    (hours(12), "95.00"),  # at the threshold
    (hours(23, 59), "95.00"),  # a started 12 h does not count
    (hours(24), "140.00"),  # 95 + 45
    (hours(35, 59, 59), "140.00"),
    (hours(36), "185.00"),  # 95 + 2 x 45
    (hours(60), "275.00"),  # 95 + 4 x 45
]
DELHI_EXAMPLES = [
    (hours(0, 59), "0.00"),
    (hours(1), "0.00"),  # "over 1 h": exactly one hour is not over
    (hours(1) + MICROSECOND, "100.00"),  # two started hours, 50 each
    (hours(1, 0, 1), "100.00"),
    (hours(1, 30), "100.00"),
    (hours(2), "100.00"),  # the third hour has not started
    (hours(2, 1), "200.00"),  # 50 + 50 + 100
    (hours(3), "200.00"),
    (hours(3, 30), "300.00"),  # 50 + 50 + 100 + 100
    (hours(5), "400.00"),  # 50 + 50 + 100 + 100 + 100
]
NEW_YORK_EXAMPLES = [
    (hours(24), "0.00"),
    (hours(72), "0.00"),  # the threshold pays no base amount
    (hours(95, 59), "0.00"),  # a started further day does not count
    (hours(96), "25.00"),
    (hours(120), "50.00"),
    (hours(143, 59), "50.00"),
]


@pytest.mark.parametrize(
    ("policy", "duration", "expected"),
    [(OFGEM, d, e) for d, e in OFGEM_EXAMPLES]
    + [(DELHI, d, e) for d, e in DELHI_EXAMPLES]
    + [(NEW_YORK, d, e) for d, e in NEW_YORK_EXAMPLES],
)
def test_shipped_policy_pays_worked_example(policy, duration, expected):
    assert credit_for(policy, duration) == Decimal(expected)


@pytest.mark.parametrize(
    ("policy", "duration", "step_after", "step_amount"),
    [
        (OFGEM, hours(3), hours(12), "95.00"),
        (OFGEM, hours(12), hours(24), "140.00"),
        (OFGEM, hours(23, 59), hours(24), "140.00"),
        (DELHI, hours(0, 30), hours(1) + MICROSECOND, "100.00"),
        (DELHI, hours(1, 30), hours(2) + MICROSECOND, "200.00"),
        (DELHI, hours(2, 30), hours(3) + MICROSECOND, "300.00"),
        # the threshold pays nothing here, so the next step is the first whole further day
        (NEW_YORK, hours(5), hours(96), "25.00"),
        (NEW_YORK, hours(96), hours(120), "50.00"),
    ],
)
def test_quote_names_the_next_step_of_a_shipped_policy(policy, duration, step_after, step_amount):
    quote = credit_quote(policy, duration)

    assert quote.amount == credit_for(policy, duration)
    assert (quote.next_step_after, quote.next_amount) == (step_after, Decimal(step_amount))


def test_total_is_rounded_once_half_up_to_the_minor_unit():
    # 0.0025 a minute: 3 minutes are 0.0075, which rounds up to 0.01 only once summed
    policy = Policy(
        "GBP", timedelta(0), Decimal(0), [{"after": "PT0S", "period": "PT1M", "amount": "0.0025"}]
    )

    assert credit_for(policy, timedelta(minutes=1)) == Decimal("0.00")
    assert credit_for(policy, timedelta(minutes=2)) == Decimal("0.01")  # 0.005 half up
    assert credit_for(policy, timedelta(minutes=3)) == Decimal("0.01")


def test_amounts_use_the_minor_unit_of_the_currency():
    assert round_money(Decimal("12.5"), "JPY") == Decimal("13")
    assert round_money(Decimal("1.2345"), "BHD") == Decimal("1.235")
    assert round_money(Decimal("1.005"), "INR") == Decimal("1.01")


def test_cap_bounds_the_total_and_ends_the_steps():
    policy = Policy(**{**vars(OFGEM), "cap": Decimal("200.00")})

    assert credit_for(policy, hours(36)) == Decimal("185.00")
    assert credit_for(policy, hours(48)) == Decimal("200.00")  # 230 capped
    assert credit_quote(policy, hours(36)).next_amount == Decimal("200.00")
    assert credit_quote(policy, hours(48)).next_step_after is None


def test_a_tier_ends_where_the_next_begins():
    # £10 per whole hour for hours 0-2.5 (two whole hours fit), then £1 per whole hour
    policy = Policy(
        "GBP",
        timedelta(0),
        Decimal(0),
        [
            {"after": "PT0S", "period": "PT1H", "amount": "10"},
            {"after": "PT2H30M", "period": "PT1H", "amount": "1"},
        ],
    )

    assert credit_for(policy, hours(2, 59)) == Decimal("20.00")
    assert credit_for(policy, hours(3, 30)) == Decimal("21.00")
    assert credit_quote(policy, hours(2)).next_step_after == hours(3, 30)


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ("PT1H", "must be a list"),
        ([{"after": "PT1H", "period": "PT1H"}], "missing ['amount']"),
        ([{"after": "soon", "period": "PT1H", "amount": "1"}], "tiers[0].after: give a duration"),
        ([{"after": "PT1H", "period": "PT0S", "amount": "1"}], "longer than zero"),
        ([{"after": "PT1H", "period": "PT1H", "amount": "-1"}], "must not be negative"),
        ([{"after": "PT1H", "period": "PT1H", "amount": 1.5}], "decimal string"),
        ([{"after": "PT1H", "period": "PT1H", "amount": "0.00001"}], "at most 4 decimals"),
        (
            [
                {"after": "PT2H", "period": "PT1H", "amount": "1"},
                {"after": "PT2H", "period": "PT1H", "amount": "1"},
            ],
            "tiers[1].after must be later",
        ),
    ],
)
def test_unreadable_tiers_are_refused_with_the_reason(tiers, message):
    with pytest.raises(TierError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_tiers(tiers)


def test_tiers_accept_hh_mm_ss_durations():
    (tier,) = parse_tiers([{"after": "12:00:00", "period": "1 00:00:00", "amount": "45.00"}])

    assert (tier.after, tier.period, tier.amount) == (hours(12), hours(24), Decimal("45.00"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("PT12H", hours(12)),
        ("P3D", hours(72)),
        ("P1DT2H", hours(26)),
        ("12:00:00", hours(12)),
        ("72:00:00", hours(72)),
        ("1 00:00:00", hours(24)),
        ("01:00:00.5", hours(1) + timedelta(milliseconds=500)),
        (" PT1H ", hours(1)),
        ("-01:00:00", -hours(1)),  # read, so that it is refused as negative
    ],
)
def test_durations_are_read_as_iso_8601_or_hh_mm_ss(text, value):
    assert duration_parse(text) == value


@pytest.mark.parametrize(
    "text",
    # Django's parse_duration reads these as 12 s, 90 s, 61 min, 0 s, 0 s and 3 d 4 h 5 min 6 s:
    # a policy written so would pay by a rule nobody meant.
    [
        *["12", "1:30", "00:61:00", "00:00:60", "P", "PT", "3 days 04:05:06", "twelve hours", ""],
        *["PT\uff11H", "\u0661\u0662:00:00"],  # fullwidth and Arabic-Indic digits
    ],
)
def test_durations_that_are_neither_form_are_refused(text):
    assert duration_parse(text) is None
    with pytest.raises(TierError, match=r"tiers\[0\]\.after: give a duration"):
        parse_tiers([{"after": text, "period": "PT1H", "amount": "1"}])


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "PT0S"),
        (hours(12), "PT12H"),
        (hours(72), "P3D"),
        (hours(25, 1, 1), "P1DT1H1M1S"),
        (hours(1) + MICROSECOND, "PT1H0.000001S"),
    ],
)
def test_durations_are_written_as_short_iso_8601(value, text):
    assert duration_iso(value) == text


# --- properties ---------------------------------------------------------------------------------

minutes = st.integers(min_value=0, max_value=5 * 24 * 60).map(lambda m: timedelta(minutes=m))
durations = st.integers(min_value=0, max_value=6 * 24 * 3600 * 10**6).map(
    lambda us: timedelta(microseconds=us)
)
amounts = st.decimals(min_value=0, max_value=500, places=2)


@st.composite
def policies(draw):
    afters = sorted(draw(st.sets(minutes, max_size=3)))
    tiers = [
        {
            "after": duration_iso(after),
            "period": duration_iso(
                draw(st.integers(1, 24 * 60 * 60).map(lambda s: timedelta(seconds=s)))
            ),
            "amount": str(draw(st.decimals(min_value=0, max_value=100, places=4))),
        }
        for after in afters
    ]
    return Policy(
        currency=draw(st.sampled_from(["GBP", "INR", "USD", "JPY", "BHD"])),
        threshold=draw(minutes),
        base_amount=draw(amounts),
        tiers=tiers,
        count_started_periods=draw(st.booleans()),
        cap=draw(st.none() | amounts),
    )


@settings(max_examples=300, deadline=None)
@given(policy=policies(), a=durations, b=durations)
def test_credit_never_decreases_as_the_cut_lasts_longer(policy, a, b):
    shorter, longer = sorted([a, b])

    assert credit_for(policy, shorter) <= credit_for(policy, longer)


@settings(max_examples=300, deadline=None)
@given(policy=policies(), duration=durations)
def test_credit_never_passes_the_cap(policy, duration):
    credit = credit_for(policy, duration)

    assert credit >= 0
    if policy.cap is not None:
        assert credit <= policy.cap


@settings(max_examples=300, deadline=None)
@given(policy=policies(), duration=durations)
def test_quote_names_the_first_instant_that_pays_more(policy, duration):
    quote = credit_quote(policy, duration)

    assert quote.amount == credit_for(policy, duration)
    if quote.next_step_after is None:
        assert credit_for(policy, duration + timedelta(days=1000)) == quote.amount
    else:
        assert quote.next_step_after > duration
        assert credit_for(policy, quote.next_step_after) == quote.next_amount > quote.amount
        assert credit_for(policy, quote.next_step_after - MICROSECOND) == quote.amount
