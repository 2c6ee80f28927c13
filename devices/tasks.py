"""Beat jobs of the registry: they load, call a service, and retry later on failure."""

from datetime import UTC, datetime

from celery import shared_task

from devices import services, socket_registry
from energy_portal.redis_client import sync_client


@shared_task(ignore_result=True)
def devices_flush_last_seen() -> int:
    """Copy the signs of life that sockets note in Redis into `Device.last_seen`."""
    raw = sync_client().hgetall(socket_registry.LAST_SEEN_KEY)
    seen = {int(k): datetime.fromtimestamp(float(v), tz=UTC) for k, v in raw.items()}
    return services.devices_record_last_seen(seen=seen)


@shared_task(ignore_result=True)
def commands_expire() -> int:
    return services.commands_expire()


@shared_task(ignore_result=True)
def devices_mark_silent_offline() -> int:
    """Devices marked online whose socket has vanished (its server died) go offline."""
    return services.devices_mark_silent_offline()
