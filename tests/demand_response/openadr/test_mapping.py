"""The OpenADR event mapping on its own (no VTN, no database): window, randomization, signals,
targets and the target map's validation."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from demand_response.openadr import mapping

START = datetime(2026, 12, 7, 17, 0, tzinfo=UTC)


def event(**given) -> dict:
    """A parsed event as OpenLEADR hands it to on_event: SIMPLE level 2, 17:00-18:00 UTC."""
    base = {
        "event_descriptor": {
            "event_id": "ev-1",
            "modification_number": 0,
            "event_status": "far",
            "market_context": "oadr://utility/ctx",
        },
        "active_period": {"dtstart": START, "duration": timedelta(hours=1)},
        "event_signals": [signal("SIMPLE", 2)],
        "targets": [{"ven_id": "ven-1"}],
        "response_required": "always",
    }
    return base | given


def signal(name: str, *payloads, start=START, each=timedelta(minutes=30), **extra) -> dict:
    return {
        "signal_name": name,
        "signal_type": "level" if name == "SIMPLE" else "delta",
        "intervals": [
            {"dtstart": start + n * each, "duration": each, "signal_payload": p, "uid": n}
            for n, p in enumerate(payloads)
        ],
        **extra,
    }


def test_a_simple_event_maps_to_a_level_over_its_window():
    data = mapping.parse_event(event())
    assert (data.event_id, data.modification_number, data.status) == ("ev-1", 0, "far")
    assert (data.start, data.end) == (START, START + timedelta(hours=1))
    assert (data.signal_type, data.signal_value) == ("level", Decimal(2))
    assert data.randomization_s == 0
    assert data.targets == []  # a ven_id target names the VEN itself, not a resource
    assert data.market_context == "oadr://utility/ctx" and data.response_required


def test_the_highest_level_of_the_intervals_counts_and_simple_wins_over_load_dispatch():
    data = mapping.parse_event(
        event(event_signals=[signal("LOAD_DISPATCH", 5.0), signal("SIMPLE", 1, 3)])
    )
    assert (data.signal_type, data.signal_value) == ("level", Decimal(3))


@pytest.mark.parametrize("level", [4, 1.5, -1])
def test_a_level_out_of_0_to_3_is_refused(level):
    with pytest.raises(mapping.UnusableEvent, match="level"):
        mapping.parse_event(event(event_signals=[signal("SIMPLE", level)]))


@pytest.mark.parametrize(
    ("scale", "payload", "kw"),
    [(None, 4.5, Decimal("4.5")), ("k", -3, Decimal(3)), ("none", 2500, Decimal("2.5"))],
)
def test_load_dispatch_is_a_reduction_in_kw(scale, payload, kw):
    extra = {"measurement": {"scale": scale}} if scale else {}
    data = mapping.parse_event(event(event_signals=[signal("LOAD_DISPATCH", payload, **extra)]))
    assert (data.signal_type, data.signal_value) == ("target_kw", kw)


def test_a_price_signal_is_a_price_and_an_unknown_one_is_refused():
    price = mapping.parse_event(event(event_signals=[signal("ELECTRICITY_PRICE", 0.31, 0.45)]))
    assert (price.signal_type, price.signal_value) == ("price", Decimal("0.45"))
    with pytest.raises(mapping.UnusableEvent, match="No signal"):
        mapping.parse_event(event(event_signals=[signal("BID_LOAD", 1)]))


def test_startafter_is_the_randomization_in_either_shape():
    parsed = {"dtstart": START, "duration": timedelta(hours=1),
              "tolerance": {"tolerate": {"startafter": timedelta(seconds=90.2)}}}  # fmt: skip
    assert mapping.parse_event(event(active_period=parsed)).randomization_s == 91
    built = parsed | {"tolerance": {"startafter": timedelta(minutes=2)}}
    assert mapping.parse_event(event(active_period=built)).randomization_s == 120


def test_an_open_ended_event_takes_its_intervals_end_and_none_is_refused():
    open_ended = {"dtstart": START, "duration": timedelta(0)}
    data = mapping.parse_event(
        event(active_period=open_ended, event_signals=[signal("SIMPLE", 1, 2)])
    )
    assert data.end == START + timedelta(hours=1)
    with pytest.raises(mapping.UnusableEvent, match="duration"):
        mapping.parse_event(event(active_period=open_ended, event_signals=[signal("SIMPLE")]))


def test_a_start_without_a_zone_is_refused():
    naive = {"dtstart": START.replace(tzinfo=None), "duration": timedelta(hours=1)}
    with pytest.raises(mapping.UnusableEvent, match="zone"):
        mapping.parse_event(event(active_period=naive))


def test_a_cancellation_reads_only_the_descriptor():
    cancelled = {"event_descriptor": {"event_id": 7, "modification_number": 3,
                                      "event_status": "CANCELLED"}}  # fmt: skip
    assert mapping.descriptor(cancelled) == ("7", 3, "cancelled")
    with pytest.raises(mapping.UnusableEvent):
        mapping.descriptor({"event_descriptor": {}})


def test_resource_and_group_targets_are_kept_once_each():
    targets = [{"resource_id": "R1"}, {"group_id": "G1"}, {"resource_id": "R1"}, {"ven_id": "v"}]
    assert mapping.parse_event(event(targets=targets)).targets == [
        ("resource_id", "R1"),
        ("group_id", "G1"),
    ]


def test_mapped_targets_join_what_the_map_says_and_unmapped_means_all():
    target_map = {"R1": {"feeders": ["FD-1"]}, "G1": {"sites": [4, 5], "feeders": ["FD-2"]}}
    both = [("resource_id", "R1"), ("group_id", "G1"), ("resource_id", "R9")]
    assert mapping.mapped_targets(target_map, both) == ({"FD-1", "FD-2"}, {4, 5})
    assert mapping.mapped_targets(target_map, [("resource_id", "R9")]) is None
    assert mapping.mapped_targets(target_map, []) is None


@pytest.mark.parametrize(
    ("target_map", "says"),
    [
        ([], "must be an object"),
        ({"R1": ["FD-1"]}, 'give {"feeders"'),
        ({"R1": {"feeders": "FD-1"}}, "feeders must be a list"),
        ({"R1": {"sites": ["4"]}}, "sites must be a list of site ids"),
        ({"R1": {}}, "at least one"),
        ({"R1": {"feeders": ["FD-1"], "other": 1}}, 'give {"feeders"'),
    ],
)
def test_a_malformed_target_map_is_explained(target_map, says):
    assert any(says in error for error in mapping.target_map_errors(target_map))


def test_a_good_target_map_has_no_errors():
    assert mapping.target_map_errors({"R1": {"feeders": ["FD-1"], "sites": [3]}}) == []
