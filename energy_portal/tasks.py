"""Platform tasks that belong to no single app."""

from celery import shared_task

from energy_portal import health


@shared_task(ignore_result=True)
def beat_heartbeat() -> None:
    """Record that beat scheduled a task and a worker ran it; `/api/v1/health/` reads it."""
    health.beat_heartbeat_record()
