"""Celery tasks of the ingestion side: they take ids, load, call a service, retry with a countdown.

All are safe to run twice (idempotent): a file is recognised by its checksum, a poll by its
period.
"""

from celery import shared_task  # noqa: F401  (used by the tasks below)
