"""HTTPS, cookies and request size: what `manage.py check --deploy` asks of production.

Production (DJANGO_DEBUG=0) sits behind a proxy that terminates TLS and tells Django the original
scheme in X-Forwarded-Proto; each setting can be changed in the environment (see
`energy_portal/environment.py`). While developing (`make run`, tests) everything here is off, so
http://127.0.0.1:8000 keeps working.
"""

from energy_portal.settings.base import ENV

# Trust the proxy's header only when one is configured: a client talking to the server directly
# could otherwise claim https itself.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + ENV.secure_proxy_ssl_header.upper().replace("-", "_"), "https")
    if ENV.secure_proxy_ssl_header
    else None
)
SECURE_SSL_REDIRECT = ENV.secure_ssl_redirect
# Load balancers, container health checks and Prometheus probe over plain http, inside the TLS
# boundary (/metrics is guarded by its token or allow-list, not by the scheme).
SECURE_REDIRECT_EXEMPT = [r"^api/v1/health/$", r"^metrics$"]
SESSION_COOKIE_SECURE = ENV.secure_cookies
CSRF_COOKIE_SECURE = ENV.secure_cookies
# Browsers remember HSTS for this long (a year by default): only sent on https responses.
SECURE_HSTS_SECONDS = ENV.secure_hsts_seconds
SECURE_HSTS_INCLUDE_SUBDOMAINS = ENV.secure_hsts_include_subdomains
SECURE_HSTS_PRELOAD = ENV.secure_hsts_preload

# Any request body over this is refused with 413 as its bytes arrive, before Django reads it
# (energy_portal/body_limit.py, in front of every HTTP route).
REQUEST_MAX_BODY_BYTES = ENV.request_max_body_bytes
