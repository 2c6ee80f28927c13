"""Signing in: the shared cache that counts failed logins, API tokens, and encrypted secrets."""

from datetime import timedelta

from energy_portal.settings.base import ENV

# Shared by every process of the portal, so a lockout holds whichever worker a guess reaches.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": ENV.redis_url,
        "KEY_PREFIX": "ep.cache",
    }
}

# django-axes counts failed logins per user name and, apart, per client address, in the cache
# above; the first backend refuses a locked-out login before the password is even checked.
AUTHENTICATION_BACKENDS = [
    "devices.auth_backends.LockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_FAILURE_LIMIT = ENV.login_failure_limit
AXES_COOLOFF_TIME = timedelta(minutes=ENV.login_lockout_minutes)
# A user who mistyped and then got in starts afresh.
AXES_RESET_ON_SUCCESS = True
# Attempts refused during a lockout are not counted: a resident signing in from an address that
# someone else locked out (a shared network) neither locks their own account nor extends the wait.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "devices.lockout.lockout_response"
# The cache handler keeps nothing in axes' tables, so their admin pages would only ever be empty.
AXES_ENABLE_ADMIN = False
# No banner at start-up; if axes' log (ERROR and above, see LOGGING) names a client, it names the
# address but not the user name typed (people type their password there by mistake).
AXES_VERBOSE = False
AXES_SENSITIVE_PARAMETERS = ["username"]

# API tokens (django-rest-knox): only a SHA-512 of each is stored; one token per sign-in, so each
# client can be signed out alone.
REST_KNOX = {
    "AUTH_HEADER_PREFIX": "Token",
    "TOKEN_TTL": timedelta(days=ENV.api_token_ttl_days) if ENV.api_token_ttl_days > 0 else None,
}

FIELD_ENCRYPTION_KEYS = ENV.field_encryption_keys
