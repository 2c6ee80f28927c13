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
        "energy_portal.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "energy_portal.pagination.PageNumberPagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "energy_portal.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Energy Portal API",
    # Only what exists; each operation's own description says who may use it.
    "DESCRIPTION": (
        "The Energy Portal's REST API.\n\n"
        "Sign in with `POST auth/token/` and send `Authorization: Token <token>`; devices send "
        "their own token to `ingest/`. Residents see and use only what belongs to their own "
        "sites (another's id answers 404, as one that does not exist); operators and staff see "
        "everything, and only they change the registry. Bad input answers 400 with `errors` "
        "naming each field.\n\n"
        "- **Registry**: substations, transformers, feeders, sites, rooms, devices, sensors and "
        "commands to devices.\n"
        "- **Telemetry**: batch ingest, ingestion sources, and one sensor's raw readings, "
        "aggregates and stats.\n"
        "- **History**: a site's energy and cost per hour, day or month; the grid's energy and "
        "the devices not reporting (operators).\n"
        "- **Outages & credits**: outages, credit policies, the credit ledger and balances, "
        "reliability indices.\n"
        "- **Demand response**: programs, events, invitations and sites' auto-responses.\n"
        "- **Auth** and **Health**."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "TAGS": [
        {"name": "Registry", "description": "The grid and the homes: what is where."},
        {"name": "Telemetry", "description": "Readings in, and one sensor's readings out."},
        {"name": "History", "description": "Energy and cost over days, weeks, months, years."},
        {"name": "Outages & credits", "description": "Cuts, what they pay, and reliability."},
        {"name": "Demand response", "description": "Programs, events and the sites' answers."},
        {"name": "Auth", "description": "API tokens."},
        {"name": "Health", "description": "For probes."},
    ],
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
