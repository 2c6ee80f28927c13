"""Outages and credits: when a cut is too short to pay."""

from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured

from energy_portal.settings.base import ENV

if ENV.outage_momentary_s < 0:
    raise ImproperlyConfigured("OUTAGE_MOMENTARY_S must be 0 or more seconds")
# A site outage shorter than this is momentary: kept and counted (MAIFI), never paid.
OUTAGE_MOMENTARY_THRESHOLD = timedelta(seconds=ENV.outage_momentary_s)
