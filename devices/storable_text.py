"""Text PostgreSQL can store, from text a client sent.

Two things a JSON string can hold have no place in a PostgreSQL text column: the NUL character
(`\\u0000`; psycopg refuses it with a DataError) and a lone UTF-16 surrogate (`\\ud800`; not a
character, so it has no UTF-8 form and encoding it raises UnicodeEncodeError). Both arrive
through JSON escapes from any client, so every place that stores a client's text passes it
through `storable_text` first, and the write cannot fail on it.
"""

import re

# NUL and every surrogate code point: a Python str from json.loads holds a surrogate only when
# it was sent alone (an escaped pair is joined into one character by the decoder).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"  # Unicode's own mark for "a character that could not be kept"


def storable_text(text: str) -> str:
    """`text` with each character PostgreSQL cannot store (NUL, a lone surrogate) replaced by
    U+FFFD, so the rest is kept and the reader sees where something was dropped."""
    return _UNSTORABLE.sub(REPLACEMENT, text)


def is_storable(text: str) -> bool:
    """Whether PostgreSQL can store `text` as it is (it holds no NUL and no lone surrogate)."""
    return _UNSTORABLE.search(text) is None
