"""The Celery application; tasks live in each app's `tasks.py`."""

import logging
import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "energy_portal.settings")

app = Celery("energy_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.autodiscover_tasks(["energy_portal"])


@worker_init.connect
def _yield_cpu_to_the_servers(**kwargs) -> None:
    """Before the pool forks: the worker and its pool run below the servers (`priority`)."""
    from django.conf import settings

    from energy_portal.priority import yield_cpu

    if done := yield_cpu(settings.WORKER_NICE):
        logging.getLogger(__name__).info("background priority: %s", ", ".join(done))
