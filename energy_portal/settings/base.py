"""Django core: apps, middleware, templates, auth, static files, logging."""

from pythonjsonlogger.core import RESERVED_ATTRS

from energy_portal.environment import BASE_DIR, load

ENV = load()

DEBUG = ENV.debug
SECRET_KEY = ENV.secret_key
ALLOWED_HOSTS = ENV.allowed_hosts
CSRF_TRUSTED_ORIGINS = ENV.csrf_trusted_origins
DATA_DIR = ENV.data_dir

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "servestatic",  # its configuration checks
    "rest_framework",
    "knox",
    "axes",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_celery_beat",
    "devices",
    "telemetry",
    "demand_response",
    "outages",
]

MIDDLEWARE = [
    # First: counts and times every request, whatever answers it (energy_portal/metrics.py).
    "energy_portal.metrics.http_metrics_middleware",
    "django.middleware.security.SecurityMiddleware",
    # Async: a static file is answered without a hop to a thread, and every other request passes
    # through without one (WhiteNoise's middleware was sync-only: two thread hops per request
    # under ASGI, and its file answers were read whole into memory, with Django's warning).
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a lockout into the "wait" answer (devices/lockout.py).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "energy_portal.urls"
ASGI_APPLICATION = "energy_portal.asgi.application"
WSGI_APPLICATION = "energy_portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "energy_portal.context_processors.roles",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = ENV.time_zone
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Front-end libraries come from npm (`package.json`), served as they are installed.
STATICFILES_DIRS = [BASE_DIR / "static", ("vendor/uplot", BASE_DIR / "node_modules/uplot/dist")]
STATIC_ROOT = DATA_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedManifestStaticFilesStorage"},
}
# Serve straight from the finders while developing, so `collectstatic` is not a prerequisite.
SERVESTATIC_USE_FINDERS = DEBUG
SERVESTATIC_AUTOREFRESH = DEBUG
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Name of the group whose members operate the fleet (see PRODUCT.md, "Who uses it").
OPERATORS_GROUP = "operators"

# LOG_FORMAT=json: one JSON object per line (time, level, logger, message, the record's extras;
# a traceback goes into its `exc_info` field, so an event stays one line), for log collectors.
# Uvicorn's own lines (access, errors) then go through the same handler.
LOG_FORMAT = ENV.log_format
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "json_ensure_ascii": False,
            # Uvicorn's copy of each message with terminal colours: noise in a log store.
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        },
    },
    "filters": {
        "refusals": {"()": "energy_portal.log_filters.RefusalWithoutTraceback"},
        "client_faults": {"()": "energy_portal.log_filters.ClientFaultWithoutTraceback"},
        "socket_chatter": {"()": "energy_portal.log_filters.SocketChatterDropped"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["refusals"],
        }
    },
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        # Through the root's handler only: Django's own console handler (when DEBUG) printed each
        # of its lines a second time.
        "django": {"handlers": [], "level": "INFO"},
        "django.db.backends": {"level": "WARNING"},
        "pgserver": {"level": "WARNING"},
        # Uvicorn's own handlers stay (on `uvicorn`, where uvicorn.error's lines propagate), except
        # in JSON, where its lines go through the portal's; a client's malformed frame loses its
        # traceback, and a socket's bare open and close lines are dropped.
        "uvicorn.error": {"filters": ["client_faults", "socket_chatter"]},
        **(
            {
                name: {"handlers": ["console"], "propagate": False}
                for name in ("uvicorn", "uvicorn.access")
            }
            if LOG_FORMAT == "json"
            else {}
        ),
        # One INFO line per polled appliance request is noise.
        "httpx": {"level": "WARNING"},
        # A refused sign-in is already one line from django.request (400, or 429 when locked
        # out); axes would add one or two more per attempt, and one per successful sign-in.
        "axes": {"level": "ERROR"},
    },
}
