"""Database: `postgres://` selects Django's backend, `timescale://` django-timescaledb's."""

import dj_database_url

from energy_portal.settings.base import ENV

DATABASES = {"default": dj_database_url.parse(ENV.database_url, conn_max_age=60)}
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
TIMESCALE_ENABLED = DATABASES["default"]["ENGINE"].startswith("timescale.")
