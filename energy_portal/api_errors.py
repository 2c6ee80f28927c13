"""One JSON error shape for the whole API: `{"detail": ..., "errors": {field: [..]}}`."""

from rest_framework.exceptions import ValidationError
from rest_framework.views import exception_handler as drf_exception_handler

from django.core.exceptions import ValidationError as DjangoValidationError


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        # Model `clean()` and service checks raise Django's error; show it as a 400 like DRF's.
        detail = (
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
        exc = ValidationError(detail)
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
    return response
