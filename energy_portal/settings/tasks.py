"""Celery and beat: JSON only, bounded run times, schedules kept in the database."""

from celery.schedules import crontab

from energy_portal.settings.base import ENV, TIME_ZONE

CELERY_BROKER_URL = ENV.redis_url
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SOFT_TIME_LIMIT = 60
CELERY_TASK_TIME_LIMIT = 90
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A task not acknowledged this long after a worker took it is given to a worker again (Redis
# transport), and a task with an eta is held unacknowledged until it comes: events' transitions
# and the curtails of a randomized start are queued at most half of it ahead
# (demand_response.services.SCHEDULE_HORIZON).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_ALWAYS_EAGER = ENV.celery_eager
# How far the Celery worker lowers its CPU priority below the servers' (energy_portal/priority.py).
WORKER_NICE = ENV.worker_nice
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Imported into django-celery-beat's tables on beat start, where admins can edit them.
CELERY_BEAT_SCHEDULE = {
    "beat-heartbeat": {"task": "energy_portal.tasks.beat_heartbeat", "schedule": 30.0},
    "devices-flush-last-seen": {"task": "devices.tasks.devices_flush_last_seen", "schedule": 30.0},
    "devices-mark-silent-offline": {
        "task": "devices.tasks.devices_mark_silent_offline",
        "schedule": 30.0,
    },
    "commands-expire": {"task": "devices.tasks.commands_expire", "schedule": 15.0},
    # Demand-response events' start and end: the safety net, and each instant's task queued
    # once it is within half an hour (demand_response.services.SCHEDULE_HORIZON).
    "dr-events-transition-due": {
        "task": "demand_response.tasks.events_transition_due",
        "schedule": 30.0,
    },
    # Rollups of the quarter-hours written since the last run (a no-op on TimescaleDB).
    "telemetry-rollups-refresh": {"task": "telemetry.tasks.rollups_refresh", "schedule": 60.0},
    # Reconciles sites whose power report's own reconcile task was lost (broker down), and
    # syncs feeders' suspected outages (dismissed on time, drops the silent-devices job found).
    "outages-sweep": {"task": "outages.tasks.site_outages_sweep", "schedule": 60.0},
    "telemetry-area-metrics": {"task": "telemetry.tasks.area_metrics_refresh", "schedule": 300.0},
    # Raw-data retention on plain PostgreSQL, at night (TimescaleDB drops chunks by policy).
    "telemetry-readings-retention": {
        "task": "telemetry.tasks.readings_retention",
        "schedule": crontab(hour=3, minute=17),
    },
}
BEAT_STALE_AFTER = ENV.beat_stale_after_s
INGEST_LAG_LIMIT = ENV.ingest_lag_limit_s
# A writer takes over another's unacknowledged entries after they sat this long (it died).
INGEST_CLAIM_IDLE_MS = ENV.ingest_claim_idle_ms
