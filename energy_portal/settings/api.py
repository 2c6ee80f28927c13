"""REST API: authentication, permissions, pagination, errors, OpenAPI."""

REST_FRAMEWORK = {
    # Token first: its `WWW-Authenticate` header makes anonymous requests 401, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "devices.api_tokens.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "energy_portal.pagination.PageNumberPagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "energy_portal.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Energy Portal API",
    "DESCRIPTION": "Registry, telemetry, demand response and outages of the Energy Portal.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Two models have a `kind` field with different choices; name their enums apart.
    "ENUM_NAME_OVERRIDES": {
        "DeviceKindEnum": "devices.models.DeviceKind",
        "SensorKindEnum": "devices.models.SensorKind",
    },
}

# Batch ingest limits: bigger batches must be split by the sender.
INGEST_MAX_BODY_BYTES = 8 * 1024 * 1024
INGEST_MAX_ITEMS = 50_000
# Django refuses bodies over this before any view sees them; keep it above the ingest limit so
# the ingest endpoint can answer with its own 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = INGEST_MAX_BODY_BYTES + 1024 * 1024
