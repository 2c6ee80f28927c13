"""One JSON error shape for the whole API: `{"detail": ..., "errors": {field: [..]}}`."""

import logging

from rest_framework.exceptions import APIException, ErrorDetail, ParseError, ValidationError
from rest_framework.views import exception_handler as drf_exception_handler

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.db.models import ProtectedError, RestrictedError

from energy_portal.serializers import text_problem

logger = logging.getLogger(__name__)


class Conflict(APIException):
    status_code = 409
    default_detail = "The request conflicts with the current state of the data."
    default_code = "conflict"


def _deletion_blocked(exc: ProtectedError | RestrictedError) -> str:
    blockers = exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects
    names = ", ".join(sorted({str(obj._meta.verbose_name_plural) for obj in blockers}))
    return f"Cannot delete it while {names} still refer to it; delete or move those first."


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        # Model `clean()` and service checks raise Django's error; show it as a 400 like DRF's.
        detail = (
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
        exc = ValidationError(detail)
    elif isinstance(exc, ProtectedError | RestrictedError):
        exc = Conflict(_deletion_blocked(exc))
    elif isinstance(exc, DataError):
        # A value only PostgreSQL refuses (a NUL byte in a lookup, a number out of range).
        logger.warning("Database refused a request value: %s", exc)
        exc = ValidationError({"non_field_errors": [f"The database refused a value: {exc}"]})
    elif isinstance(exc, RecursionError) and "decoding a JSON" in str(exc):
        exc = ParseError("JSON parse error - the body is nested too deeply.")
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ValidationError):
        errors = (
            response.data
            if isinstance(response.data, dict)
            else {"non_field_errors": response.data}
        )
        fields = ", ".join(sorted(errors))
        response.data = {"detail": f"Invalid input in: {fields}.", "errors": errors}
    response.data = _encodable(response.data)
    return response


def _encodable(data):
    """The error with any lone surrogate it echoes from the request written as `\\udxxx`: UTF-8
    cannot encode one, and the renderer would fail on it (e.g. `"\\ud800" is not a valid
    choice`)."""
    if isinstance(data, dict):
        return {_encodable(key): _encodable(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_encodable(item) for item in data]
    if isinstance(data, str) and text_problem(data):
        text = data.encode("utf-8", "backslashreplace").decode("utf-8")
        return ErrorDetail(text, data.code) if isinstance(data, ErrorDetail) else text
    return data
