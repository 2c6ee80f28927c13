"""What an OpenADR 2.0b event (as OpenLEADR parses an `oadrDistributeEvent`) means for our
demand-response events: the window, the start randomization, the signal and the targets. Pure
functions of the parsed dict (no database), so every rule here is tested on its own.

- Window: `active_period.dtstart` and `duration`; a duration of 0 (open-ended in OpenADR) is
  taken from the signals' intervals, and an event with none is refused.
- Randomization: `active_period.tolerance.tolerate.startafter` (seconds, rounded up).
- Signal: `SIMPLE` (level 0-3) wins; else `LOAD_DISPATCH` (a reduction in kW: its payload, by
  the measurement's SI scale when one is given, kW when none); else `ELECTRICITY_PRICE` (a
  price). Over several intervals the highest payload counts (the event asks at least that of
  the homes at some point of its window).
- Targets: each target's `resource_id` and `group_id` (other kinds name the VEN itself)."""

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from demand_response.models import MAX_LEVEL, SignalType

CANCELLED = "cancelled"
COMPLETED = "completed"
TARGET_KINDS = ("resource_id", "group_id")
# An SI scale code's factor to kilo (LOAD_DISPATCH payloads are read as kW).
SCALE_TO_KILO = {"none": Decimal("0.001"), "k": Decimal(1), "M": Decimal(1000), "G": Decimal(10**6)}


class UnusableEvent(ValueError):
    """The event cannot become one of ours (no window, no signal we act on); says why."""


@dataclass(frozen=True)
class VtnEventData:
    event_id: str
    modification_number: int
    status: str
    market_context: str
    start: datetime
    end: datetime
    randomization_s: int
    signal_type: str
    signal_value: Decimal
    targets: list[tuple[str, str]] = field(default_factory=list)
    response_required: bool = True

    @property
    def cancelled(self) -> bool:
        return self.status == CANCELLED


def _get(obj, *path, default=None):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj


def _signals(event: dict) -> list[dict]:
    signals = event.get("event_signals") or []
    if isinstance(signals, dict):  # one signal, as some parsers leave it
        signals = signals.get("event_signals", [signals])
    return [s for s in signals if isinstance(s, dict)]


def _intervals(signal: dict) -> list[dict]:
    intervals = signal.get("intervals") or []
    return [intervals] if isinstance(intervals, dict) else list(intervals)


def _window(event: dict) -> tuple[datetime, datetime]:
    start = _get(event, "active_period", "dtstart")
    duration = _get(event, "active_period", "duration")
    if not isinstance(start, datetime) or start.tzinfo is None:
        raise UnusableEvent("The event has no start time with a zone.")
    if not isinstance(duration, timedelta) or duration <= timedelta(0):
        ends = [
            i["dtstart"] + i["duration"]
            for s in _signals(event)
            for i in _intervals(s)
            if isinstance(i.get("dtstart"), datetime) and isinstance(i.get("duration"), timedelta)
        ]
        if not ends or max(ends) <= start:
            raise UnusableEvent("The event has no duration (open-ended events are not taken).")
        return start, max(ends)
    return start, start + duration


def _randomization(event: dict) -> int:
    tolerance = _get(event, "active_period", "tolerance") or {}
    after = _get(tolerance, "tolerate", "startafter", default=tolerance.get("startafter"))
    if not isinstance(after, timedelta) or after <= timedelta(0):
        return 0
    return math.ceil(after.total_seconds())


def _payloads(signal: dict) -> list[Decimal]:
    values = []
    for interval in _intervals(signal):
        payload = interval.get("signal_payload")
        if isinstance(payload, bool) or not isinstance(payload, int | float):
            continue
        if math.isfinite(payload):
            values.append(Decimal(str(payload)))
    return values


def _signal(event: dict) -> tuple[str, Decimal]:
    by_name: dict[str, dict] = {}
    for signal in _signals(event):
        by_name.setdefault(signal.get("signal_name"), signal)
    if "SIMPLE" in by_name:
        levels = _payloads(by_name["SIMPLE"])
        if not levels:
            raise UnusableEvent("The SIMPLE signal has no payload.")
        level = max(levels)
        if level != level.to_integral_value() or not 0 <= level <= MAX_LEVEL:
            raise UnusableEvent(f"A SIMPLE level must be a whole number 0-{MAX_LEVEL}: {level}.")
        return SignalType.LEVEL, Decimal(int(level))
    if "LOAD_DISPATCH" in by_name:
        signal = by_name["LOAD_DISPATCH"]
        values = [abs(v) for v in _payloads(signal)]
        scale = _get(signal, "measurement", "scale")
        factor = SCALE_TO_KILO.get(scale, Decimal(1)) if scale else Decimal(1)
        kw = max(values, default=Decimal(0)) * factor
        if kw <= 0:
            raise UnusableEvent("The LOAD_DISPATCH signal asks for no reduction.")
        return SignalType.TARGET_KW, kw.quantize(Decimal("0.0001"))
    if "ELECTRICITY_PRICE" in by_name:
        prices = _payloads(by_name["ELECTRICITY_PRICE"])
        if not prices:
            raise UnusableEvent("The ELECTRICITY_PRICE signal has no payload.")
        return SignalType.PRICE, max(prices).quantize(Decimal("0.0001"))
    names = sorted(str(name) for name in by_name)
    raise UnusableEvent(f"No signal the portal acts on (SIMPLE, LOAD_DISPATCH): {names}.")


def _targets(event: dict) -> list[tuple[str, str]]:
    found = []
    for target in event.get("targets") or []:
        if not isinstance(target, dict):
            continue
        for kind in TARGET_KINDS:
            value = target.get(kind)
            for one in value if isinstance(value, list) else [value]:
                if one is not None and (kind, str(one)) not in found:
                    found.append((kind, str(one)))
    return found


def descriptor(event: dict) -> tuple[str, int, str]:
    """(event id, modification number, status) of a parsed event, without reading the rest: a
    cancellation needs nothing else."""
    event_id = _get(event, "event_descriptor", "event_id")
    if event_id in (None, ""):
        raise UnusableEvent("The event has no event id.")
    number = _get(event, "event_descriptor", "modification_number", default=0)
    status = str(_get(event, "event_descriptor", "event_status", default="") or "")
    return str(event_id), int(number or 0), status.lower()


def parse_event(event: dict) -> VtnEventData:
    """The parts of a parsed OpenADR event the portal acts on; `UnusableEvent` says what is
    missing or out of range."""
    event_id, number, status = descriptor(event)
    start, end = _window(event)
    signal_type, signal_value = _signal(event)
    return VtnEventData(
        event_id=event_id,
        modification_number=number,
        status=status,
        market_context=str(_get(event, "event_descriptor", "market_context", default="") or ""),
        start=start,
        end=end,
        randomization_s=_randomization(event),
        signal_type=signal_type,
        signal_value=signal_value,
        targets=_targets(event),
        response_required=event.get("response_required", "always") != "never",
    )


def mapped_targets(
    target_map: dict, targets: list[tuple[str, str]]
) -> tuple[set[str], set[int]] | None:
    """The feeder codes and site ids the event's targets map to through `target_map` (an
    OpenADR resource or group id -> {"feeders": [codes], "sites": [ids]}); None when no target
    is mapped (no targets, or only unknown ones): the event then invites every eligible site."""
    feeders: set[str] = set()
    sites: set[int] = set()
    mapped = False
    for _kind, target_id in targets:
        entry = target_map.get(target_id)
        if not isinstance(entry, dict):
            continue
        mapped = True
        feeders.update(str(code) for code in entry.get("feeders", []))
        sites.update(int(site) for site in entry.get("sites", []))
    return (feeders, sites) if mapped else None


def target_map_errors(target_map) -> list[str]:
    """What is wrong with the shape of a target map (not whether its feeders and sites exist)."""
    if not isinstance(target_map, dict):
        return ['The target map must be an object: {"<resource or group id>": {"feeders": '
                '["FD-1"], "sites": [12]}}.']  # fmt: skip
    errors = []
    for key, entry in target_map.items():
        if not isinstance(entry, dict) or set(entry) - {"feeders", "sites"}:
            errors.append(f'{key}: give {{"feeders": [codes], "sites": [ids]}}.')
            continue
        feeders, sites = entry.get("feeders", []), entry.get("sites", [])
        if not isinstance(feeders, list) or not all(isinstance(c, str) and c for c in feeders):
            errors.append(f"{key}: feeders must be a list of feeder codes.")
        if not isinstance(sites, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sites
        ):
            errors.append(f"{key}: sites must be a list of site ids.")
        if not feeders and not sites:
            errors.append(f"{key}: map it to at least one feeder or site.")
    return errors
