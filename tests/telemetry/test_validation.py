"""The checks every reading passes, whatever its source: times, values, sensor keys."""

import math
from datetime import UTC, datetime, timedelta

import pytest

from telemetry.services import Item, readings_validate
from telemetry.validation import MAX_FUTURE, MAX_PAST, SensorRef, parse_timestamp, parse_value

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

POWER = SensorRef(sensor_id=11, key="power_w", device_id=1, device_uid="pi-1", site_id=7)
VOLTAGE = SensorRef(sensor_id=12, key="voltage_v", device_id=1, device_uid="pi-1", site_id=7)
SENSORS = {"power_w": POWER, "voltage_v": VOLTAGE}


# --- parse_timestamp ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-22T10:00:00Z", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
        ("2026-11-22T10:00:00+00:00", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
        ("2026-11-22T11:30:00+01:30", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
        ("2026-11-22T05:00:00-05:00", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
        ("2026-11-22T10:00:00.250Z", datetime(2026, 11, 22, 10, 0, 0, 250_000, tzinfo=UTC)),
        ("2026-11-22T10:00:00.000001Z", datetime(2026, 11, 22, 10, 0, 0, 1, tzinfo=UTC)),
    ],
    ids=["z", "zero-offset", "positive-offset", "negative-offset", "millis", "micros"],
)
def test_parse_timestamp_accepts_rfc3339_with_zone_and_returns_utc(raw, expected):
    ts = parse_timestamp(raw, now=NOW)

    assert ts == expected
    assert ts.utcoffset() == timedelta(0)


def test_parse_timestamp_rejects_a_naive_time_saying_to_add_a_zone():
    with pytest.raises(ValueError, match="no time zone"):
        parse_timestamp("2026-11-22T10:00:00", now=NOW)


def test_parse_timestamp_rejects_a_date_without_time():
    with pytest.raises(ValueError, match="no time zone"):
        parse_timestamp("2026-11-22", now=NOW)


@pytest.mark.parametrize("raw", ["yesterday", "2026-13-01T00:00:00Z", "", "2026-11-22T25:00Z"])
def test_parse_timestamp_rejects_text_that_is_not_a_time(raw):
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        parse_timestamp(raw, now=NOW)


def test_parse_timestamp_accepts_clock_skew_up_to_the_limit_and_rejects_beyond():
    at_limit = (NOW + MAX_FUTURE).isoformat()
    beyond = (NOW + MAX_FUTURE + timedelta(seconds=1)).isoformat()

    assert parse_timestamp(at_limit, now=NOW) == NOW + MAX_FUTURE
    with pytest.raises(ValueError, match="in the future"):
        parse_timestamp(beyond, now=NOW)


def test_parse_timestamp_rejects_times_too_far_in_the_past():
    oldest = (NOW - MAX_PAST).isoformat()
    too_old = (NOW - MAX_PAST - timedelta(seconds=1)).isoformat()

    assert parse_timestamp(oldest, now=NOW) == NOW - MAX_PAST
    with pytest.raises(ValueError, match="too far in the past"):
        parse_timestamp(too_old, now=NOW)


@pytest.mark.parametrize("raw", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_parse_timestamp_rejects_times_outside_the_representable_range_as_value_error(raw):
    with pytest.raises(ValueError, match="out of range"):
        parse_timestamp(raw, now=NOW)


@pytest.mark.parametrize("raw", [None, 1763805600, 1763805600.25, ["2026-11-22T10:00:00Z"], {}])
def test_parse_timestamp_rejects_non_strings(raw):
    with pytest.raises(ValueError, match="must be an RFC 3339 string"):
        parse_timestamp(raw, now=NOW)


# --- parse_value -------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [(0, 0.0), (512, 512.0), (-3, -3.0)])
def test_parse_value_accepts_integers_as_floats(raw, expected):
    value = parse_value(raw)

    assert value == expected
    assert type(value) is float


@pytest.mark.parametrize("raw", [512.3, -0.5, 1e300])
def test_parse_value_accepts_finite_floats(raw):
    assert parse_value(raw) == raw


@pytest.mark.parametrize("raw", [True, False])
def test_parse_value_rejects_booleans(raw):
    with pytest.raises(ValueError, match="must be a number"):
        parse_value(raw)


@pytest.mark.parametrize("raw", ["512.3", "", None, [1], {"v": 1}])
def test_parse_value_rejects_strings_and_other_non_numbers(raw):
    with pytest.raises(ValueError, match="must be a number"):
        parse_value(raw)


@pytest.mark.parametrize("raw", [math.nan, math.inf, -math.inf, 10**400])
def test_parse_value_rejects_nan_infinities_and_integers_beyond_float_range(raw):
    with pytest.raises(ValueError, match="finite number"):
        parse_value(raw)


# --- readings_validate -------------------------------------------------------------------------


def test_readings_validate_keeps_known_keys_and_rejects_unknown_ones_per_key():
    ts = "2026-11-22T10:00:00Z"
    items = [
        Item(ref="power_w", ts=ts, value=512.3),
        Item(ref="bogus", ts=ts, value=1),
        Item(ref="voltage_v", ts=ts, value=231),
        Item(ref="other", ts=ts, value=2),
    ]

    result = readings_validate(items=items, sensors=SENSORS, now=NOW)

    assert [(r.sensor, r.ts, r.value) for r in result.readings] == [
        (POWER, datetime(2026, 11, 22, 10, tzinfo=UTC), 512.3),
        (VOLTAGE, datetime(2026, 11, 22, 10, tzinfo=UTC), 231.0),
    ]
    assert result.accepted == 2
    assert result.rejected == [
        {"key": "bogus", "error": "unknown sensor"},
        {"key": "other", "error": "unknown sensor"},
    ]


def test_readings_validate_reports_bad_time_or_value_per_item_with_its_batch_index():
    items = [
        Item(ref="power_w", ts="2026-11-22T10:00:00Z", value=1, index=0),
        Item(ref="power_w", ts="2026-11-22T10:00:01", value=2, index=1),
        Item(ref="voltage_v", ts="2026-11-22T10:00:02Z", value=math.nan, index=2),
        Item(ref="nope", ts="2026-11-22T10:00:03Z", value=3, index=3),
    ]

    result = readings_validate(items=items, sensors=SENSORS, now=NOW)

    assert [r.value for r in result.readings] == [1.0]
    assert [(r["key"], r["index"]) for r in result.rejected] == [
        ("power_w", 1),
        ("voltage_v", 2),
        ("nope", 3),
    ]
    assert "no time zone" in result.rejected[0]["error"]
    assert result.rejected[1]["error"] == "value must be a finite number"
    assert result.rejected[2]["error"] == "unknown sensor"


def test_readings_validate_names_the_reference_as_the_caller_asks():
    items = [Item(ref="pi-9.power_w", ts="2026-11-22T10:00:00Z", value=1)]

    result = readings_validate(items=items, sensors={}, ref_name="sensor", now=NOW)

    assert result.readings == []
    assert result.rejected == [{"sensor": "pi-9.power_w", "error": "unknown sensor"}]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-22t10:00:00z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22 11:00:00+01:00", datetime(2026, 11, 22, 10, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_accepts_the_lower_case_and_space_forms_rfc_3339_allows(raw, expected):
    assert parse_timestamp(raw, now=NOW) == expected
