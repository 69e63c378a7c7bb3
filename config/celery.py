import os

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("custody")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def _recycle_database_connections(**kwargs):
    # Celery's Django fixup would open a new connection per task; with CELERY_DB_REUSE_MAX set
    # it keeps them, and this retires broken or CONN_MAX_AGE-old ones the way requests do.
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:  # a task applied inside a transaction keeps it
            connection.close_if_unusable_or_obsolete()
