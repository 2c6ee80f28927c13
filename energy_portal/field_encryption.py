"""Secrets the portal must read back in clear (an FTP password), kept encrypted in the database.

Fernet (AES-128-CBC with an HMAC-SHA256, from `cryptography`) under the keys in
`settings.FIELD_ENCRYPTION_KEYS` (`FIELD_ENCRYPTION_KEY`): the first key encrypts, every key
decrypts, so a key is rotated by putting a new one in front and saving the rows again.
"""

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

_fernets: dict[tuple[str, ...], MultiFernet] = {}


def _fernet() -> MultiFernet:
    # Made on first use, not at import: nothing reads settings at import time.
    keys = tuple(settings.FIELD_ENCRYPTION_KEYS)
    if keys not in _fernets:
        _fernets[keys] = MultiFernet([Fernet(key) for key in keys])
    return _fernets[keys]


def encrypt(text: str) -> str:
    return _fernet().encrypt(text.encode()).decode("ascii")


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeEncodeError) as exc:
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with FIELD_ENCRYPTION_KEY: the key it was "
            "encrypted with must stay in the list (put the new key first, keep the old after it)."
        ) from exc


class EncryptedTextField(models.TextField):
    """Text kept as a Fernet token in the database and seen in clear in Python.

    The empty string stays empty (no secret to hide). Each save encrypts afresh with a new IV,
    so equal secrets look different in the table and the column cannot be searched or compared.
    """

    def from_db_value(self, value, expression, connection):
        if not value:
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if not value:
            return value
        return encrypt(value)
