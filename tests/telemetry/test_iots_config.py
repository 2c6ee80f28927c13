"""`iots-right.json`: the sample files, each validation rule, `pick` and `aggregate`."""

import copy
import json
import math

import pytest

from telemetry.iots_config import (
    STORE_TYPES,
    Appliance,
    IotsConfig,
    IotsConfigError,
    ValueSpec,
    aggregate,
    parse_iots_config,
    pick,
)
from tests.fixtures.sample_files import SAMPLES

VALID = SAMPLES / "iots-right.json"
INVALID = SAMPLES / "iots-right.invalid.json"
BASE = "http://127.0.0.1:30000/api/realtime/H_01"


def valid_document() -> dict:
    return copy.deepcopy(json.loads(VALID.read_text(encoding="utf-8")))


def problems_of(data) -> list[tuple[str, str]]:
    with pytest.raises(IotsConfigError) as caught:
        parse_iots_config(data)
    return caught.value.problems


# --- the sample files -------------------------------------------------------------------------


def test_valid_sample_parses_to_its_appliances():
    config = parse_iots_config(VALID.read_bytes())

    assert config == IotsConfig(
        monitoring=True,
        dr_auto_accept=True,
        monitoring_period=5,
        iots=[
            Appliance(
                name="AC1",
                type="hvac",
                uri=f"{BASE}/AC1",
                values=[
                    ValueSpec(type="power", tag="data.power", data="DOUBLE", unit="W"),
                    ValueSpec(type="temperature", tag="data.room.temp", data="DOUBLE", unit="°C"),
                ],
                demand_response=True,
                store_period=10,
                store_type="avg",
            ),
            Appliance(
                name="WaterHeater",
                type="water_heater",
                uri=f"{BASE}/WH",
                values=[ValueSpec(type="power", tag="power", data="DOUBLE", unit="W")],
                demand_response=True,
                store_period=10,
                store_type="avg",
            ),
            Appliance(
                name="Consumption",
                type="meter",
                uri=f"{BASE}/MAIN",
                values=[
                    ValueSpec(type="energy", tag="counters.import_wh", data="DOUBLE", unit="Wh")
                ],
                demand_response=False,
                store_period=15,
                store_type="consumption",
            ),
            Appliance(
                name="Generation",
                type="pv",
                uri=f"{BASE}/PV",
                values=[ValueSpec(type="generation", tag="ac.p", data="DOUBLE", unit="W")],
                demand_response=False,
                store_period=10,
                store_type="last",
            ),
        ],
    )


def test_valid_sample_parses_the_same_from_bytes_text_and_decoded_object():
    from_bytes = parse_iots_config(VALID.read_bytes())

    assert parse_iots_config(VALID.read_text(encoding="utf-8")) == from_bytes
    assert parse_iots_config(valid_document()) == from_bytes


def test_invalid_sample_is_refused_naming_every_problem_by_its_path():
    # given: what is visibly wrong in the file
    document = json.loads(INVALID.read_text(encoding="utf-8"))
    iots = document["resources"]["iots"]
    assert document["resources"]["monitoring_period"] <= 0
    assert iots[0]["values"][0]["tag"] == ""
    assert iots[1]["store"]["type"] not in STORE_TYPES
    assert "uri" not in iots[2]

    # when
    problems = problems_of(INVALID.read_bytes())

    # then: each of those, and nothing else
    assert problems == [
        ("$.resources.monitoring_period", "must be a positive whole number, not -1"),
        (
            "$.resources.iots[0].values[0].tag",
            'must be a dot path into the answer such as data.power, not ""',
        ),
        (
            "$.resources.iots[1].store.type",
            'must be one of avg, sum, last, consumption, not "median"',
        ),
        ("$.resources.iots[2].uri", "is required but missing"),
    ]


def test_error_message_lists_every_problem_with_its_path():
    with pytest.raises(IotsConfigError) as caught:
        parse_iots_config(INVALID.read_bytes())

    message = str(caught.value)
    assert message.startswith("iots-right.json refused (4 problems): ")
    for path, problem in caught.value.problems:
        assert f"{path}: {problem}" in message


# --- one rule at a time, on the valid sample with one thing broken -------------------------------


def _set(path: str, value):
    """A change to the document: set the key at `path` (dots and list indices) to `value`."""

    def change(document):
        *parents, last = path.split(".")
        node = document
        for key in parents:
            node = node[int(key)] if key.isdecimal() else node[key]
        node[int(last) if last.isdecimal() else last] = value

    return change


def _delete(path: str):
    def change(document):
        *parents, last = path.split(".")
        node = document
        for key in parents:
            node = node[int(key)] if key.isdecimal() else node[key]
        del node[last]

    return change


AC1 = "resources.iots.0"
RULES = [
    # missing keys
    ("no-app", _delete("app"), "$.app", "is required but missing"),
    ("no-monitoring", _delete("app.monitoring"), "$.app.monitoring", "is required"),
    (
        "no-auto-accept",
        _delete("app.dr_events_auto_accept"),
        "$.app.dr_events_auto_accept",
        "is required",
    ),
    (
        "no-monitoring-period",
        _delete("resources.monitoring_period"),
        "$.resources.monitoring_period",
        "is required",
    ),
    ("no-iots", _delete("resources.iots"), "$.resources.iots", "is required"),
    ("no-name", _delete(f"{AC1}.name"), "$.resources.iots[0].name", "is required"),
    ("no-type", _delete(f"{AC1}.type"), "$.resources.iots[0].type", "is required"),
    ("no-values", _delete(f"{AC1}.values"), "$.resources.iots[0].values", "is required"),
    ("no-control", _delete(f"{AC1}.control"), "$.resources.iots[0].control", "is required"),
    (
        "no-demandresponse",
        _delete(f"{AC1}.control.demandresponse"),
        "$.resources.iots[0].control.demandresponse",
        "is required",
    ),
    ("no-store", _delete(f"{AC1}.store"), "$.resources.iots[0].store", "is required"),
    (
        "no-store-period",
        _delete(f"{AC1}.store.period"),
        "$.resources.iots[0].store.period",
        "is required",
    ),
    ("no-tag", _delete(f"{AC1}.values.1.tag"), "$.resources.iots[0].values[1].tag", "is required"),
    ("no-unit", _delete(f"{AC1}.values.1.unit"), "$.resources.iots[0].values[1].unit", "required"),
    # wrong types
    ("monitoring-string", _set("app.monitoring", "yes"), "$.app.monitoring", 'not "yes"'),
    (
        "auto-accept-number",
        _set("app.dr_events_auto_accept", 1),
        "$.app.dr_events_auto_accept",
        "true or false",
    ),
    ("app-list", _set("app", []), "$.app", "must be an object {...}, not []"),
    ("iots-object", _set("resources.iots", {}), "$.resources.iots", "must be a list [...], not {}"),
    ("values-string", _set(f"{AC1}.values", "power"), "$.resources.iots[0].values", "list"),
    ("value-not-object", _set(f"{AC1}.values.1", 3), "$.resources.iots[0].values[1]", "object"),
    ("appliance-null", _set("resources.iots.3", None), "$.resources.iots[3]", "not null"),
    ("name-number", _set(f"{AC1}.name", 3), "$.resources.iots[0].name", "non-empty string"),
    ("name-blank", _set(f"{AC1}.name", "  "), "$.resources.iots[0].name", "non-empty string"),
    ("type-empty", _set(f"{AC1}.type", ""), "$.resources.iots[0].type", "non-empty string"),
    (
        "unit-number",
        _set(f"{AC1}.values.0.unit", 1),
        "$.resources.iots[0].values[0].unit",
        "string",
    ),
    (
        "dr-string",
        _set(f"{AC1}.control.demandresponse", "true"),
        "$.resources.iots[0].control.demandresponse",
        "true or false",
    ),
    # periods
    (
        "monitoring-zero",
        _set("resources.monitoring_period", 0),
        "$.resources.monitoring_period",
        "positive",
    ),
    (
        "monitoring-float",
        _set("resources.monitoring_period", 5.0),
        "$.resources.monitoring_period",
        "whole number, not 5.0",
    ),
    (
        "monitoring-string",
        _set("resources.monitoring_period", "5"),
        "$.resources.monitoring_period",
        'not "5"',
    ),
    (
        "monitoring-bool",
        _set("resources.monitoring_period", True),
        "$.resources.monitoring_period",
        "not true",
    ),
    (
        "monitoring-nan",
        _set("resources.monitoring_period", math.nan),
        "$.resources.monitoring_period",
        "not NaN",
    ),
    (
        "store-period-negative",
        _set(f"{AC1}.store.period", -10),
        "$.resources.iots[0].store.period",
        "positive",
    ),
    (
        "store-shorter-than-poll",
        _set(f"{AC1}.store.period", 4),
        "$.resources.iots[0].store.period",
        "4 is shorter than $.resources.monitoring_period (5)",
    ),
    # store type
    (
        "store-median",
        _set(f"{AC1}.store.type", "median"),
        "$.resources.iots[0].store.type",
        "avg, sum, last, consumption",
    ),
    (
        "store-upper",
        _set(f"{AC1}.store.type", "AVG"),
        "$.resources.iots[0].store.type",
        'not "AVG"',
    ),
    ("store-number", _set(f"{AC1}.store.type", 1), "$.resources.iots[0].store.type", "not 1"),
    # uri
    (
        "uri-ftp",
        _set(f"{AC1}.uri", "ftp://10.0.0.5/AC1"),
        "$.resources.iots[0].uri",
        "http:// or https://",
    ),
    ("uri-no-scheme", _set(f"{AC1}.uri", "10.0.0.5/AC1"), "$.resources.iots[0].uri", "URL"),
    ("uri-no-host", _set(f"{AC1}.uri", "http:///AC1"), "$.resources.iots[0].uri", "URL"),
    (
        "uri-bad-port",
        _set(f"{AC1}.uri", "http://10.0.0.5:port/AC1"),
        "$.resources.iots[0].uri",
        "URL",
    ),
    ("uri-space", _set(f"{AC1}.uri", "http://10.0.0.5/A C1"), "$.resources.iots[0].uri", "URL"),
    ("uri-number", _set(f"{AC1}.uri", 5), "$.resources.iots[0].uri", "not 5"),
    # names and values
    (
        "name-duplicate",
        _set("resources.iots.2.name", "AC1"),
        "$.resources.iots[2].name",
        '"AC1" is already the name of $.resources.iots[0]',
    ),
    ("values-empty", _set(f"{AC1}.values", []), "$.resources.iots[0].values", "is empty"),
    (
        "value-type-duplicate",
        _set(f"{AC1}.values.1.type", "power"),
        "$.resources.iots[0].values[1].type",
        '"power" is already read by $.resources.iots[0].values[0]',
    ),
    ("tag-empty", _set(f"{AC1}.values.0.tag", ""), "$.resources.iots[0].values[0].tag", "dot path"),
    (
        "tag-double-dot",
        _set(f"{AC1}.values.0.tag", "data..power"),
        "$.resources.iots[0].values[0].tag",
        "dot path",
    ),
    (
        "tag-leading-dot",
        _set(f"{AC1}.values.0.tag", ".power"),
        "$.resources.iots[0].values[0].tag",
        "dot path",
    ),
    (
        "tag-trailing-dot",
        _set(f"{AC1}.values.0.tag", "data."),
        "$.resources.iots[0].values[0].tag",
        "dot path",
    ),
    (
        "tag-space",
        _set(f"{AC1}.values.0.tag", "data power"),
        "$.resources.iots[0].values[0].tag",
        "dot path",
    ),
    (
        "tag-list",
        _set(f"{AC1}.values.0.tag", ["data"]),
        "$.resources.iots[0].values[0].tag",
        "dot path",
    ),
    (
        "data-string",
        _set(f"{AC1}.values.0.data", "STRING"),
        "$.resources.iots[0].values[0].data",
        "DOUBLE, FLOAT, INTEGER, LONG, BOOLEAN",
    ),
]


@pytest.mark.parametrize(
    ("change", "path", "message"), [rule[1:] for rule in RULES], ids=[rule[0] for rule in RULES]
)
def test_each_rule_refuses_the_file_naming_the_path(change, path, message):
    # given
    document = valid_document()
    change(document)

    # when
    problems = problems_of(document)

    # then
    assert [p for p, _ in problems] == [path]
    assert message in problems[0][1]


def test_every_problem_is_reported_not_only_the_first():
    document = valid_document()
    _set("app.monitoring", "on")(document)
    _set(f"{AC1}.values.0.tag", "")(document)
    _delete("resources.iots.1.store")(document)
    _set("resources.iots.3.uri", "gopher://x")(document)

    problems = problems_of(json.dumps(document))

    assert [path for path, _ in problems] == [
        "$.app.monitoring",
        "$.resources.iots[0].values[0].tag",
        "$.resources.iots[1].store",
        "$.resources.iots[3].uri",
    ]


def test_store_period_is_not_compared_with_an_invalid_monitoring_period():
    document = valid_document()
    _set("resources.monitoring_period", "fast")(document)

    assert [path for path, _ in problems_of(document)] == ["$.resources.monitoring_period"]


def test_data_type_and_tag_accept_liberal_spellings():
    document = valid_document()
    _set(f"{AC1}.values.0.data", "double")(document)
    _set(f"{AC1}.values.1.tag", "data.phases.0.power-w")(document)
    _set(f"{AC1}.uri", "https://ac.example.org/api")(document)

    appliance = parse_iots_config(document).iots[0]

    assert appliance.values[0].data == "DOUBLE"
    assert appliance.values[1].tag == "data.phases.0.power-w"
    assert appliance.uri == "https://ac.example.org/api"


def test_unknown_keys_are_ignored_and_an_empty_unit_is_allowed():
    document = valid_document()
    _set(f"{AC1}.comment", "living room")(document)
    _set(f"{AC1}.values.0.unit", "")(document)

    assert parse_iots_config(document).iots[0].values[0].unit == ""


def test_empty_appliance_list_is_allowed():
    document = valid_document()
    _set("resources.iots", [])(document)

    assert parse_iots_config(document).iots == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"app": {"monitoring": true,}}', "invalid JSON at line 1, column 29: "),
        ('{\n  "app": {\n    "monitoring": tru\n', "invalid JSON at line 3, column 19: "),
        (b"", "invalid JSON at line 1, column 1: "),
        (b'{"app": "\xff"}', "the file is not UTF-8 text; save it as UTF-8"),
    ],
    ids=["trailing-comma", "bad-literal", "empty", "not-utf8"],
)
def test_unreadable_file_is_one_problem_at_the_root_with_line_and_column(data, message):
    problems = problems_of(data)

    assert len(problems) == 1
    assert problems[0][0] == "$"
    assert problems[0][1].startswith(message)


def test_root_must_be_an_object():
    assert problems_of("[1, 2]") == [("$", "must be an object {...}, not [1, 2]")]


def test_a_key_given_twice_is_a_problem():
    text = VALID.read_text(encoding="utf-8").replace(
        '"monitoring": true,', '"monitoring": true, "monitoring": false,', 1
    )

    assert problems_of(text) == [("$.app.monitoring", "is given more than once; keep one")]


# --- pick --------------------------------------------------------------------------------------

ANSWER = {
    "data": {
        "power": 512.5,
        "count": 3,
        "room": {"temp": 21.5},
        "phases": [{"power": 100}, {"power": 200.5}],
        "label": "on",
        "numeric_text": "12.5",
        "missing": None,
        "flag": True,
        "nan": math.nan,
        "inf": math.inf,
        "huge": 10**400,
        "by_digit": {"0": 7.0},
    },
    "power": 40,
}


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("power", 40.0),
        ("data.power", 512.5),
        ("data.count", 3.0),
        ("data.room.temp", 21.5),
        ("data.phases.0.power", 100.0),
        ("data.phases.1.power", 200.5),
        ("data.by_digit.0", 7.0),
        ("data.phases.2.power", None),
        ("data.phases.-1.power", None),
        ("data.phases.x.power", None),
        ("data.absent", None),
        ("data.power.deeper", None),
        ("data.room", None),
        ("data.phases", None),
        ("data.label", None),
        ("data.numeric_text", None),
        ("data.missing", None),
        ("data.flag", None),
        ("data.nan", None),
        ("data.inf", None),
        ("data.huge", None),
        ("data..power", None),
        ("", None),
    ],
)
def test_pick_follows_the_dot_path_to_a_finite_number(tag, expected):
    value = pick(tag, ANSWER)

    assert value == expected
    assert value is None or type(value) is float


def test_pick_reads_booleans_only_for_boolean_values():
    assert pick("data.flag", ANSWER, data="BOOLEAN") == 1.0
    assert pick("off", {"off": False}, data="BOOLEAN") == 0.0
    assert pick("data.flag", ANSWER, data="DOUBLE") is None


def test_pick_on_a_non_object_answer_is_none():
    assert pick("0", [5]) == 5.0
    assert pick("power", [5]) is None
    assert pick("power", "512") is None
    assert pick("power", None) is None


# --- aggregate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("store_type", "samples", "expected"),
    [
        ("avg", [1.0, 2.0, 6.0], 3.0),
        ("avg", [0.1] * 10, 0.1),
        ("avg", [5.0], 5.0),
        ("sum", [1.0, 2.0, 6.0], 9.0),
        ("sum", [0.1] * 10, 1.0),
        ("last", [1.0, 2.0, 6.0], 6.0),
        ("last", [4.0], 4.0),
        ("consumption", [1000.0, 1004.5, 1010.0], 10.0),
        ("consumption", [1000.0, 1000.0], 0.0),
    ],
)
def test_aggregate_folds_samples_as_the_store_type_says(store_type, samples, expected):
    assert aggregate(store_type, samples) == expected


@pytest.mark.parametrize("store_type", STORE_TYPES)
def test_aggregate_of_no_samples_is_none(store_type):
    assert aggregate(store_type, []) is None


@pytest.mark.parametrize(
    "samples",
    [[1000.0], [1000.0, 3.0], [1000.0, 1010.0, 2.0, 1500.0]],
    ids=["one-sample", "reset", "reset-inside-period"],
)
def test_consumption_is_none_for_one_sample_or_a_counter_that_went_down(samples):
    assert aggregate("consumption", samples) is None


def test_aggregate_refuses_an_unknown_store_type():
    with pytest.raises(ValueError, match="'median' is not one of avg, sum, last, consumption"):
        aggregate("median", [1.0])


# --- text PostgreSQL cannot store, and documents too deep to read --------------------------------


def test_nul_and_lone_surrogates_are_refused_by_their_path():
    # given names, units and keys holding what a text column cannot store
    document = valid_document()
    iots = document["resources"]["iots"]
    iots[0]["name"] = "AC\u00001"
    iots[1]["values"][0]["unit"] = "W\ud800"
    iots[3]["store"]["bad\u0000key"] = 1

    # when
    problems = problems_of(json.dumps(document).encode())

    # then each is named where it is, and the file is refused whole
    unstorable = [p for p in problems if "NUL character or a lone surrogate" in p[1]]
    assert [path for path, _ in unstorable] == [
        "$.resources.iots[0].name",
        "$.resources.iots[1].values[0].unit",
        "$.resources.iots[3].store",
    ]


def test_a_document_nested_too_deeply_is_refused_with_a_reason():
    assert problems_of(b"[" * 100_000 + b"]" * 100_000) == [
        ("$", "the JSON is nested too deeply to read")
    ]
