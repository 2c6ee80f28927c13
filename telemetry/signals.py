"""Signals telemetry sends for the apps built on it, which telemetry itself does not know.

`iots_dr_auto_accept`: an imported `iots-right.json` says something new in
`app.dr_events_auto_accept` (the source's first import, or the flag changed). Sent inside the
import's transaction with `site` and `auto_accept` (bool); a receiver returning a string has
changed something, and the import reports that line. Demand response answers it by setting the
site's auto-response (`demand_response.services.site_auto_response_from_iots`).
"""

from django.dispatch import Signal

iots_dr_auto_accept = Signal()
