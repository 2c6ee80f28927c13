"""Writes for mains power reports."""

from datetime import datetime

from django.db import IntegrityError, transaction

from devices.groups import fleet_group, site_group
from energy_portal.realtime import group_send, live_event
from outages.models import PowerEvent, PowerState


def power_event_record(*, device_id: int, site_id: int, device_uid: str, state: str, at: datetime):
    """Store a mains lost/restored report once; a repeat of the same report changes nothing.

    Returns the event and whether it was new. Viewers of the site hear of new events after commit.
    """
    if state not in PowerState.values:
        raise ValueError("state must be 'lost' or 'restored'")
    try:
        with transaction.atomic():
            event = PowerEvent.objects.create(
                device_id=device_id, site_id=site_id, state=state, at=at
            )
    except IntegrityError:
        return PowerEvent.objects.get(device_id=device_id, state=state, at=at), False
    message = live_event(
        {
            "type": "power",
            "device": device_uid,
            "site": site_id,
            "state": state,
            "ts": at.isoformat(),
        }
    )
    transaction.on_commit(lambda: group_send([site_group(site_id), fleet_group()], message))
    return event, True
