"""What a credit policy pays for a cut of a given length: one pure function for the page, the API
and the ledger alike (no ORM, no clock).

A policy pays nothing below its `threshold`, its `base_amount` from the threshold on (the
threshold itself included), plus, for each tier, `amount` per `period` elapsed from the tier's
`after` until the next tier's `after` (the last tier runs on). `after` is measured from the cut's
start, so a tier may start before the threshold: its periods then count from its own `after`, but
nothing is paid until the threshold is reached. With `count_started_periods` a period counts as
soon as it has started (one microsecond into it); otherwise only whole periods count, and a tier's
last, shortened period (cut off by the next tier) never completes. `cap` bounds the total. The
total is computed exactly and rounded once, half up, to the currency's minor unit (the cap is
rounded down to it, so the credit never passes it).

The shipped policies (migration `0003_shipped_credit_policies`), worked by hand:

- **Ofgem normal weather** (GBP): threshold 12 h, £95, then £45 per further *whole* 12 h
  (tier after 12 h, period 12 h). 11 h 59 min → £0; 12 h → £95; 23 h 59 min → £95; 24 h → £140;
  36 h → £185.
- **Delhi** (INR): "over 1 h → ₹50 per hour for the first two hours, ₹100 per hour after", read as:
  once the cut lasts *more than* one hour, every *started* hour of the whole cut (counted from its
  start, not from the threshold) pays ₹50 if it is the first or second hour and ₹100 from the third
  on. Tiers: after 0, period 1 h, ₹50; after 2 h, period 1 h, ₹100; started periods count. "More
  than one hour" is threshold 1 h + 1 µs, the smallest step a stored instant has, so a cut of
  exactly 1 h pays nothing. 59 min → ₹0; 1 h → ₹0; 1 h 0 min 1 s → ₹100 (two started hours);
  1 h 30 min → ₹100; 2 h → ₹100; 2 h 1 min → ₹200 (50 + 50 + 100); 3 h 30 min → ₹300;
  5 h → ₹400.
- **New York** (USD): after 72 h, $25 per further *whole* 24 h (threshold 72 h, base $0, tier after
  72 h, period 24 h), only for outages affecting at least 20,000 sites (`min_sites_affected`, judged
  by the ledger, not here). 72 h → $0; 95 h 59 min → $0; 96 h → $25; 120 h → $50.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Protocol

from django.utils.dateparse import parse_duration

from devices.currency import minor_unit, round_money

ZERO = Decimal(0)
MICROSECOND = timedelta(microseconds=1)
# Decimals a policy's amounts may have: rates finer than the minor unit add up before rounding.
MAX_AMOUNT_DIGITS = 4
# The longest duration a policy may name (threshold, a tier's after or period): no regulator's
# rule runs longer, and a cut's next step must stay a date (year 9999 is the last).
MAX_DURATION = timedelta(days=3660)
TOO_LONG = "at most ten years (P3660D)"


@dataclass(frozen=True)
class Tier:
    after: timedelta
    period: timedelta
    amount: Decimal


class PolicyLike(Protocol):
    """What the rules read from a policy: a `CreditPolicy` row or any object with these fields.

    `tiers` holds `Tier`s or mappings in the stored/API shape
    `{"after": "PT12H", "period": "PT12H", "amount": "45.00"}`.
    """

    currency: str
    threshold: timedelta
    base_amount: Decimal
    tiers: Iterable[Tier | Mapping[str, Any]]
    count_started_periods: bool
    cap: Decimal | None


@dataclass(frozen=True)
class CreditQuote:
    """The credit for a cut lasting `duration`, and the next step if the cut goes on:
    `next_step_after` (from the cut's start) is the least duration that pays more, and
    `next_amount` what it pays; both None when nothing more can be earned."""

    amount: Decimal
    next_step_after: timedelta | None
    next_amount: Decimal | None


class TierError(ValueError):
    """A tier list that cannot be read; the message names the tier and the field."""


DURATION_FORMS = "Give a duration as ISO 8601 (PT12H) or HH:MM:SS (12:00:00)."
# `HH:MM:SS` with optional fractions of a second, after an optional count of days as Django writes
# durations ("1 00:00:00"); hours may pass 24 (72:00:00), minutes and seconds may not pass 59. A
# sign is read so that "-01:00:00" is refused as negative, not as unreadable.
_CLOCK = re.compile(r"(-?)(?:(\d+) )?(\d+):([0-5]\d):([0-5]\d)(?:\.(\d{1,6}))?")
# An ISO 8601 duration that names at least one component (Django's parser takes a bare "P").
_ISO = re.compile(r"[-+]?P(?=.*\d).*")


def duration_parse(text: str) -> timedelta | None:
    """A policy's duration, as ISO 8601 (`PT12H`, `P3D`) or `HH:MM:SS` (`12:00:00`, `72:00:00`,
    or `1 00:00:00` as Django writes a day); None if it is neither. Stricter than Django's
    `parse_duration`, which would read "12" as 12 seconds, "1:30" as 90 seconds and "00:61:00"
    as 61 minutes: a policy written that way would pay by a rule nobody meant. Also None for
    more days than a `timedelta` holds (P999999999999D)."""
    text = text.strip()
    if not text.isascii():  # fullwidth or Arabic-Indic digits are no ISO 8601 nor HH:MM:SS
        return None
    try:
        if clock := _CLOCK.fullmatch(text):
            sign, days, hours, minutes, seconds, fraction = clock.groups()
            parsed = timedelta(
                days=int(days or 0),
                hours=int(hours),
                minutes=int(minutes),
                seconds=int(seconds),
                microseconds=int((fraction or "").ljust(6, "0")),
            )
            return -parsed if sign else parsed
        if _ISO.fullmatch(text):
            return parse_duration(text)
    except OverflowError:
        pass
    return None


def _duration(value: Any, where: str) -> timedelta:
    if isinstance(value, timedelta):
        parsed = value
    else:
        parsed = duration_parse(value) if isinstance(value, str) else None
        if parsed is None:
            raise TierError(
                f"{where}: give a duration as ISO 8601 (PT12H) or HH:MM:SS, got {value!r}"
            )
    if parsed > MAX_DURATION:
        raise TierError(f"{where}: {TOO_LONG}")
    return parsed


def _amount(value: Any, where: str) -> Decimal:
    if isinstance(value, float | bool):  # a float is not money; a bool is not a number
        raise TierError(f'{where}: give the amount as a decimal string, e.g. "45.00"')
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise TierError(f"{where}: {value!r} is not a decimal amount") from None
    if not amount.is_finite():
        raise TierError(f"{where}: {value!r} is not a finite amount")
    if amount.as_tuple().exponent < -MAX_AMOUNT_DIGITS:
        raise TierError(f"{where}: give at most {MAX_AMOUNT_DIGITS} decimals, got {value!r}")
    return amount


def parse_tiers(raw: Iterable[Tier | Mapping[str, Any]]) -> tuple[Tier, ...]:
    """Tiers from the stored/API shape, checked: `after` ≥ 0 and strictly increasing, `period` >
    0, `amount` ≥ 0. Raises TierError naming the first problem."""
    if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
        raise TierError("tiers must be a list of {after, period, amount}")
    tiers = []
    for index, item in enumerate(raw):
        where = f"tiers[{index}]"
        if isinstance(item, Tier):
            tier = item
        else:
            if not isinstance(item, Mapping):
                raise TierError(f"{where} must be an object with after, period and amount")
            unknown = set(item) - {"after", "period", "amount"}
            missing = {"after", "period", "amount"} - set(item)
            if unknown or missing:
                raise TierError(
                    f"{where} needs exactly after, period and amount"
                    + (f"; missing {sorted(missing)}" if missing else "")
                    + (f"; unknown {sorted(unknown)}" if unknown else "")
                )
            tier = Tier(
                after=_duration(item["after"], f"{where}.after"),
                period=_duration(item["period"], f"{where}.period"),
                amount=_amount(item["amount"], f"{where}.amount"),
            )
        if tier.after < timedelta(0):
            raise TierError(f"{where}.after must not be negative")
        if tier.period <= timedelta(0):
            raise TierError(f"{where}.period must be longer than zero")
        if tier.amount < 0:
            raise TierError(f"{where}.amount must not be negative")
        if tiers and tier.after <= tiers[-1].after:
            raise TierError(f"{where}.after must be later than the previous tier's after")
        tiers.append(tier)
    return tuple(tiers)


def duration_iso(value: timedelta) -> str:
    """`value` (not negative) as a short ISO 8601 duration: PT12H, P3D, PT1H0.000001S, PT0S."""
    days, rest = value.days, value - timedelta(days=value.days)
    seconds, micro = divmod(rest // MICROSECOND, 1_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n) + (
        f"{seconds}.{micro:06d}".rstrip("0") + "S" if micro else f"{seconds}S" if seconds else ""
    )
    if not time:
        return f"P{days}D" if days else "PT0S"
    return f"P{days}DT{time}" if days else f"PT{time}"


def tiers_as_data(tiers: Iterable[Tier]) -> list[dict[str, str]]:
    """Tiers in the stored/API shape: ISO 8601 durations and decimal strings."""
    return [
        {
            "after": duration_iso(t.after),
            "period": duration_iso(t.period),
            "amount": str(t.amount),
        }
        for t in tiers
    ]


def _ceil_div(a: timedelta, b: timedelta) -> int:
    return -(-a // b)


def _tier_spans(tiers: tuple[Tier, ...]) -> list[tuple[Tier, timedelta | None]]:
    """Each tier with the `after` of the next one (None for the last, which runs on)."""
    return [(t, tiers[i + 1].after if i + 1 < len(tiers) else None) for i, t in enumerate(tiers)]


def _periods(tier: Tier, end: timedelta | None, duration: timedelta, started: bool) -> int:
    elapsed = duration - tier.after
    if end is not None:
        elapsed = min(elapsed, end - tier.after)
    if elapsed <= timedelta(0):
        return 0
    return _ceil_div(elapsed, tier.period) if started else elapsed // tier.period


def _credit(policy: PolicyLike, tiers: tuple[Tier, ...], duration: timedelta) -> Decimal:
    if duration < policy.threshold:
        return round_money(ZERO, policy.currency)
    total = Decimal(policy.base_amount)
    for tier, end in _tier_spans(tiers):
        total += tier.amount * _periods(tier, end, duration, policy.count_started_periods)
    amount = round_money(total, policy.currency)
    cap = _cap(policy)
    return amount if cap is None else min(amount, cap)


def _cap(policy: PolicyLike) -> Decimal | None:
    """The cap rounded down to the minor unit, so rounding the total never lifts it past the cap."""
    if policy.cap is None:
        return None
    return Decimal(policy.cap).quantize(minor_unit(policy.currency), rounding=ROUND_DOWN)


def credit_for(policy: PolicyLike, duration: timedelta) -> Decimal:
    """The credit `policy` pays for a cut that lasted `duration`, in the policy's currency,
    rounded half up to its minor unit. Never decreases as `duration` grows; never above `cap`."""
    return _credit(policy, parse_tiers(policy.tiers), duration)


def _next_candidate(
    policy: PolicyLike, tiers: tuple[Tier, ...], duration: timedelta
) -> timedelta | None:
    """The least duration after `duration` at which the credit may rise, or None."""
    if duration < policy.threshold:
        # Nothing is paid below the threshold, so no step before it matters.
        return policy.threshold
    candidates = []
    for tier, end in _tier_spans(tiers):
        if tier.amount == 0:
            continue
        # A whole period adds its amount when it completes (after + k·period, k ≥ 1); a started
        # one a microsecond after it begins (after + j·period + 1 µs, j ≥ 0). Either way the
        # steps are `first` past `after` and then one every period.
        first = MICROSECOND if policy.count_started_periods else tier.period
        j = max(0, (duration - tier.after - first) // tier.period + 1)
        step = tier.after + first + j * tier.period
        # Past the next tier's start this tier adds nothing more.
        if end is None or step <= end:
            candidates.append(step)
    return min(candidates, default=None)


def credit_quote(policy: PolicyLike, duration: timedelta) -> CreditQuote:
    """The credit for `duration` and the next step: when (from the cut's start) and how much the
    cut will have earned if it lasts that long. For a cut still going on, the live page passes the
    time since it started."""
    tiers = parse_tiers(policy.tiers)
    amount = _credit(policy, tiers, duration)
    cap = _cap(policy)
    if cap is not None and amount >= cap:
        return CreditQuote(amount=amount, next_step_after=None, next_amount=None)
    at = duration
    # Past the threshold each candidate adds a positive amount of at most MAX_AMOUNT_DIGITS
    # decimals, so the rounded credit rises within a bounded number of candidates; the loop ends.
    while (candidate := _next_candidate(policy, tiers, at)) is not None:
        next_amount = _credit(policy, tiers, candidate)
        if next_amount > amount:
            return CreditQuote(amount=amount, next_step_after=candidate, next_amount=next_amount)
        at = candidate
    return CreditQuote(amount=amount, next_step_after=None, next_amount=None)
