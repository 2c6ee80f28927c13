"""The OpenAPI description tells the truth: every operation says who may use it and sits under
one of the listed tags, no answer is a free-form object, and the top description names only
tags that exist. Real answers are checked against it in `test_api_schema_fuzz.py`."""

import re

import pytest
from drf_spectacular.generators import SchemaGenerator

from django.conf import settings

# How an operation's description names who may use it.
AUDIENCE = re.compile(
    r"Residents: |Operators and staff only|Staff only|Anyone, without signing in"
    r"|Any signed-in user|Devices \(by their token\)"
)
# Free-form on purpose: a command's arguments differ by command (their description lists them).
FREE_FORM_ALLOWED = {("CommandIssueRequest", "args"), ("Command", "args")}
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield f"{method.upper()} {path}", operation


def test_every_operation_says_who_may_use_it(schema):
    silent = [
        name for name, operation in operations(schema)
        if not AUDIENCE.search(" ".join(operation.get("description", "").split()))
    ]  # fmt: skip

    assert not silent, f"operations that do not say who may use them: {silent}"


def test_registry_operations_each_have_their_own_description(schema):
    registry = [
        (name, operation["description"])
        for name, operation in operations(schema)
        if operation["tags"] == ["Registry"]
    ]
    descriptions = [description for _, description in registry]

    assert len(registry) > 40
    assert not [d for d in descriptions if "CRUD over one registry model" in d]
    # one per operation, apart from a collection's and a member's shared writers' notes
    by_path = {}
    for name, description in registry:
        by_path.setdefault(name.split(" ", 1)[1], set()).add(description)
    assert all(len(found) == len(schema["paths"][path]) for path, found in by_path.items())


def test_every_operation_has_one_listed_tag(schema):
    listed = [tag["name"] for tag in settings.SPECTACULAR_SETTINGS["TAGS"]]
    used = {name: operation.get("tags") for name, operation in operations(schema)}

    assert listed == [
        "Registry", "Telemetry", "History", "Outages & credits", "Demand response", "Auth",
        "Health",
    ]  # fmt: skip
    assert {name: tags for name, tags in used.items() if tags is None or len(tags) != 1} == {}
    assert {tags[0] for tags in used.values()} == set(listed)


def test_the_top_description_names_each_tag_that_exists_and_nothing_else(schema):
    description = schema["info"]["description"]
    named = set(re.findall(r"\*\*([^*]+)\*\*", description))

    assert named == {tag["name"] for tag in settings.SPECTACULAR_SETTINGS["TAGS"]}
    # each example of a path it gives is one the API has
    for path in re.findall(r"`(?:POST |GET )?([a-z-]+/(?:[a-z-]+/)?)`", description):
        assert f"/api/v1/{path}" in schema["paths"], path


def free_form(node: dict) -> bool:
    """A schema that says nothing of its content: no type at all, or an object with neither
    properties nor a typed `additionalProperties`."""
    if not node or set(node) <= {"description", "readOnly", "writeOnly", "nullable"}:
        return True
    if node.get("type") != "object" or node.get("properties"):
        return False
    extra = node.get("additionalProperties", True)
    return extra is True or extra == {}


def test_no_answer_or_field_is_a_free_form_object(schema):
    found = []
    for name, component in schema["components"]["schemas"].items():
        if free_form(component):
            found.append(name)
        for field, node in component.get("properties", {}).items():
            if (name, field) in FREE_FORM_ALLOWED:
                assert node.get("description"), f"{name}.{field} is free-form: describe it"
            elif free_form(node) or free_form(node.get("items", {"type": "string"})):
                found.append(f"{name}.{field}")
    for name, operation in operations(schema):
        for code, response in operation["responses"].items():
            for media, content in response.get("content", {}).items():
                if free_form(content.get("schema", {})):
                    found.append(f"{name} {code} {media}")

    assert not found, f"free-form objects: {found}"


def test_the_history_answers_are_typed(schema):
    components = schema["components"]["schemas"]

    assert set(components["SiteEnergy"]["properties"]) >= {
        "site", "period", "future", "energy_kwh", "cost", "results", "previous", "comparison",
        "devices", "rooms", "unattributed_kwh", "unattributed_cost",
    }  # fmt: skip
    assert set(components["GridEnergy"]["properties"]) >= {"future", "unit", "results", "feeders"}
    assert "results" in components["NotReporting"]["properties"]
    checks = components["Checks"]["properties"]
    assert set(checks) == {"database", "redis", "ingest_buffer", "beat"}
