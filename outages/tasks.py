"""Celery tasks of outages and credits: they take ids, load, call a service, retry with a
countdown."""

from celery import shared_task

from django.db import OperationalError

from outages import services

# A database that is unreachable is retried after 2, 4, 8, 16 and 32 s; a task is acked once
# done, so one lost with its worker runs again.
RETRIED_WHILE_THE_DATABASE_IS_DOWN = {
    "ignore_result": True,
    "acks_late": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": False,
    "max_retries": 5,
}


@shared_task(**RETRIED_WHILE_THE_DATABASE_IS_DOWN)
def site_outages_reconcile(site_id: int) -> dict:
    """Reconcile one site's outages and credits with all its power events (queued after each new
    event commits). Safe to run twice or at once on two workers: it starts from all the events
    every time and holds the site's lock. A database that is unreachable is retried after 2, 4,
    8, 16 and 32 s."""
    result = services.site_outages_reconcile(site_id=site_id)
    return {
        "created": result.created,
        "updated": result.updated,
        "voided": result.voided,
        "entries": len(result.entries),
    }


@shared_task(**RETRIED_WHILE_THE_DATABASE_IS_DOWN)
def site_outages_drain() -> int:
    """Reconcile every site power reports marked since the last drain (queued by a report when
    no drain is queued: a storm's reports cost a few drains, not a task each). Returns how many
    sites it reconciled; sites not reached when the database failed are marked again first."""
    return len(services.site_outages_drain())


@shared_task(**RETRIED_WHILE_THE_DATABASE_IS_DOWN)
def suspected_outages_drain() -> int:
    """Sync the suspected outages of every feeder abrupt socket ends marked since the last
    drain of them (queued by a socket's end when none is queued). Returns how many feeders it
    synced; those not reached when the database failed are marked again first."""
    return len(services.suspected_outages_drain())


@shared_task(**RETRIED_WHILE_THE_DATABASE_IS_DOWN)
def suspected_outages_sync(feeder_id: int) -> bool:
    """Open, grow, confirm or dismiss the feeder's suspected outages (queued after an abrupt
    socket drop, and by the sweep). Safe twice or at once: it holds the feeder's lock."""
    return services.suspected_outages_sync(feeder_id=feeder_id)


@shared_task(ignore_result=True)
def site_outages_sweep() -> int:
    """Beat: queue a reconcile of each site with power events no reconcile has read yet, and a
    sync of each feeder with a suspected outage open or a recent abrupt drop."""
    return len(services.site_outages_sweep()) + len(services.suspected_outages_sweep())
