"""A grant's end asks for its credential's destruction in the same transaction (the outbox)."""

from __future__ import annotations

from django.dispatch import receiver

from approvals.signals import grants_ended
from brokers.services import credentials_for_grant_endings


@receiver(grants_ended)
def request_credential_destruction(sender, endings, **kwargs):
    credentials_for_grant_endings(endings=endings)
