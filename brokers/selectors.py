"""Reads: a grant's brokered credential, as pages show it (never a secret: none is kept)."""

from __future__ import annotations

from brokers.models import BrokeredCredential


def grant_credential(grant_id: int) -> BrokeredCredential | None:
    return BrokeredCredential.objects.filter(grant_id=grant_id).first()
