"""SPIFFE ID parsing per the SPIFFE-ID specification (section 2)."""

import re
from dataclasses import dataclass

from django.core.exceptions import ValidationError

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_LENGTH = 2048


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"


def parse_spiffe_id(value: str) -> SpiffeId:
    """Parse `spiffe://<trust-domain>/<path>`; raise ValidationError with a reason otherwise."""
    if not isinstance(value, str) or not value.startswith("spiffe://"):
        raise ValidationError("A SPIFFE ID starts with spiffe:// (lower case).")
    if len(value) > MAX_LENGTH:
        raise ValidationError(f"A SPIFFE ID is at most {MAX_LENGTH} characters.")
    rest = value[len("spiffe://") :]
    trust_domain, slash, path = rest.partition("/")
    if "?" in value or "#" in value:
        raise ValidationError("A SPIFFE ID has no query or fragment.")
    if "@" in trust_domain:
        raise ValidationError("A SPIFFE ID has no user info.")
    if ":" in trust_domain:
        raise ValidationError("A SPIFFE ID has no port.")
    if not trust_domain:
        raise ValidationError("A SPIFFE ID names a trust domain.")
    if not _TRUST_DOMAIN.match(trust_domain):
        raise ValidationError(
            "The trust domain may hold only lower-case letters, digits, dots, dashes and "
            "underscores."
        )
    if not slash or not path:
        raise ValidationError("An agent's SPIFFE ID has a path after the trust domain.")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise ValidationError("SPIFFE ID path segments are not empty, '.' or '..'.")
        if not _PATH_SEGMENT.match(segment):
            raise ValidationError(
                "SPIFFE ID path segments hold only letters, digits, dots, dashes and underscores."
            )
    return SpiffeId(trust_domain=trust_domain, path="/" + path)


def validate_spiffe_id(value: str) -> None:
    parse_spiffe_id(value)


def validate_trust_domain_name(value: str) -> None:
    if not value or not _TRUST_DOMAIN.match(value):
        raise ValidationError(
            "A trust domain holds only lower-case letters, digits, dots, dashes and underscores."
        )
