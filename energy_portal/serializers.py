"""Serializer pieces shared by the apps' APIs: text PostgreSQL cannot store is refused at the edge.

PostgreSQL's text and jsonb hold no NUL character, and psycopg cannot encode a lone surrogate
(JSON's `"\\ud800"` decodes to one). DRF's `CharField` already refuses both; these cover the
inputs it does not: lookups by slug, free JSON and query parameters read by hand.
"""

import math
import re

from rest_framework import serializers

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why PostgreSQL could not store or compare this text, in DRF's words; None if it can."""
    found = _UNSTORABLE.search(value)  # one C-speed scan: ingest checks every item's id
    if found is None:
        return None
    if found.group() == "\x00":
        return "Null characters are not allowed."
    return f"Surrogate characters are not allowed: U+{ord(found.group()):X}."


def json_problem(value: object, path: str = "") -> str | None:
    """The first key or value of decoded JSON that jsonb cannot store, and where it is."""
    if isinstance(value, str):
        problem = text_problem(value)
        return problem and f"{problem[:-1]} (at {path or 'the top'})."
    if isinstance(value, float) and not math.isfinite(value):
        # A literal such as 1e400 decodes to infinity, which JSON cannot represent.
        return f"Numbers must be finite (at {path or 'the top'})."
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if problem := text_problem(key):
                return f"{problem[:-1]} (in a key at {path or 'the top'})."
            if problem := json_problem(item, where):
                return problem
    if isinstance(value, list):
        for index, item in enumerate(value):
            if problem := json_problem(item, f"{path}[{index}]"):
                return problem
    return None


class StorableDictField(serializers.DictField):
    """A JSON object stored in jsonb as given: refused whole if any part of it cannot be."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if problem := json_problem(value):
            raise serializers.ValidationError(problem)
        return value


class SlugRelatedField(serializers.SlugRelatedField):
    """A slug PostgreSQL could not even compare is refused with the reason, not looked up."""

    def to_internal_value(self, data):
        if isinstance(data, str) and (problem := text_problem(data)):
            raise serializers.ValidationError(problem)
        return super().to_internal_value(data)
