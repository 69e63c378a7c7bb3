"""The Celery app as test workers run it: Custody's own, plus one hook for long-lived workers.

Between tests the suite's flush re-creates content types under new ids; a worker that lives
across tests must not keep the ids it cached (object permissions are keyed by them)."""

from celery.signals import task_prerun

from config.celery import app

__all__ = ["app"]


@task_prerun.connect
def forget_content_types(**kwargs):
    from django.contrib.contenttypes.models import ContentType
    from guardian.shortcuts import clear_ct_cache

    ContentType.objects.clear_cache()
    clear_ct_cache()
