"""Monitoring: who may read `GET /metrics` (energy_portal/metrics.py)."""

from energy_portal.settings.base import ENV

# A scrape is allowed with `Authorization: Bearer <METRICS_TOKEN>` (none: no token works) or from
# an address within METRICS_ALLOW_IPS.
METRICS_TOKEN = ENV.metrics_token
METRICS_ALLOW_IPS = ENV.metrics_allow_ips
