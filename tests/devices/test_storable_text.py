"""storable_text: a client's text as PostgreSQL can store it, checked against PostgreSQL itself."""

import psycopg
import pytest

from django.db import DataError, connection

from devices.storable_text import storable_text

HOSTILE = {
    # id: (text a client sent, as json.loads gives it; what is stored)
    "nul": ("relay\x00off", "relay\ufffdoff"),
    "lone-high-surrogate": ("a\ud800b", "a\ufffdb"),
    "lone-low-surrogate-at-the-end": ("ab\udfff", "ab\ufffd"),
    "reversed-pair": ("\udc00\ud800", "\ufffd\ufffd"),
}


def _round_trip(text: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::text", [text])
        return cursor.fetchone()[0]


@pytest.mark.django_db
@pytest.mark.parametrize(("text", "stored"), HOSTILE.values(), ids=HOSTILE)
def test_text_postgresql_refuses_is_stored_with_replacement_characters(text, stored):
    with pytest.raises((DataError, UnicodeEncodeError, psycopg.DataError)):
        _round_trip(text)  # as it came, PostgreSQL (or its driver) refuses it

    assert _round_trip(storable_text(text)) == stored


@pytest.mark.parametrize(
    "text",
    ["", "relay off", "ação \U0001f50c 電力", "\ufffd already replaced"],
    ids=["empty", "ascii", "other-scripts-and-astral", "replacement-character"],
)
def test_storable_text_leaves_what_postgresql_can_store_as_it_is(text):
    assert storable_text(text) == text
