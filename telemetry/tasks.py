"""Celery tasks of the ingestion side: they take ids, load, call a service, retry with a countdown.

All are safe to run twice (idempotent): a file is recognised by its checksum, a poll by its
period.
"""

from celery import shared_task

from django.conf import settings

from telemetry import ftp_ingest, polling, rollups


@shared_task(
    ignore_result=True, soft_time_limit=polling.RUN_MAX_S, time_limit=polling.RUN_MAX_S + 5
)
def poll_source(source_id: int) -> dict | None:
    """Poll one HTTP source's appliances and ingest the store windows that ended.

    Beat runs it every monitoring period (schedule `poll-source-<id>`), with time limits set from
    that period in the schedule's headers; the limits here cover a run started by hand. A run that
    finds the previous one still going is skipped, and a failing appliance is simply asked again
    next period, so there is no retry.
    """
    run = polling.poll_source_run(source_id=source_id)
    return None if run is None else vars(run)


@shared_task(
    ignore_result=True,
    acks_late=True,
    autoretry_for=(ftp_ingest.FtpUnavailable,),
    retry_backoff=30,
    retry_backoff_max=600,
    retry_jitter=False,
    max_retries=3,
)
def ftp_source_poll(source_id: int) -> dict:
    """List one FTP source's folder and ingest its new `.sgl_v2` files.

    Beat runs it every `interval_s` (schedule `ftp-source-<id>`) under the settings' time limits.
    It starts no new file after three quarters of the soft limit; the files left wait for the next
    run. An unreachable server is retried after 30 s, 60 s and 120 s. Running it twice ingests
    nothing twice: each file is recorded by name and by checksum.
    """
    budget_s = settings.CELERY_TASK_SOFT_TIME_LIMIT * 0.75
    return ftp_ingest.ftp_source_poll(source_id=source_id, time_budget_s=budget_s)


@shared_task(ignore_result=True)
def rollups_refresh() -> dict:
    """Recompute the rollups of the quarter-hours marked since the last run (plain PostgreSQL;
    a no-op on TimescaleDB, where refresh policies do it). Beat runs it every minute; a run that
    finds another still going returns at once, and a run out of time leaves the rest marked for
    the next one."""
    budget_s = settings.CELERY_TASK_SOFT_TIME_LIMIT * 0.75
    return vars(rollups.rollups_refresh(time_budget_s=budget_s))


@shared_task(ignore_result=True)
def area_metrics_refresh() -> int:
    """Recompute the sites' and rooms' dashboard figures (power now, energy and cost today,
    peak of the day). Beat runs it every 5 minutes."""
    return rollups.area_metrics_refresh()


@shared_task(ignore_result=True)
def readings_retention() -> dict:
    """Delete raw readings past READINGS_RETENTION on plain PostgreSQL, in small batches. Beat
    runs it daily; a run out of time queues the next one a minute later."""
    budget_s = settings.CELERY_TASK_SOFT_TIME_LIMIT * 0.75
    result = rollups.readings_retention_run(time_budget_s=budget_s)
    if result.more:
        readings_retention.apply_async(countdown=60)
    return {"deleted": result.deleted, "more": result.more}
