"""Outages and credits: when a cut is too short to pay, and when site cuts make a grid outage."""

from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured

from energy_portal.settings.base import ENV

if ENV.outage_momentary_s < 0:
    raise ImproperlyConfigured("OUTAGE_MOMENTARY_S must be 0 or more seconds")
if ENV.outage_suspected_grace_s < 0:
    raise ImproperlyConfigured("OUTAGE_SUSPECTED_GRACE_S must be 0 or more seconds")
if ENV.outage_correlation_s < 0:
    raise ImproperlyConfigured("OUTAGE_CORRELATION_S must be 0 or more seconds")
# A site outage shorter than this is momentary: kept and counted (MAIFI), never paid.
OUTAGE_MOMENTARY_THRESHOLD = timedelta(seconds=ENV.outage_momentary_s)
# Site outages of one feeder starting within this of each other are one feeder outage (when they
# are of at least OUTAGE_MIN_GRID_SITES sites); feeder outages of one transformer likewise.
OUTAGE_CORRELATION_WINDOW = timedelta(seconds=ENV.outage_correlation_s)
OUTAGE_MIN_GRID_SITES = ENV.outage_min_grid_sites
# A suspected outage (sockets of many sites of a feeder dropped together, no report of a cut) is
# dismissed once all its sites have been back this long without replaying a cut.
OUTAGE_SUSPECTED_GRACE = timedelta(seconds=ENV.outage_suspected_grace_s)
