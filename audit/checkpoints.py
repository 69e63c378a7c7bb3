"""Signed checkpoints of the audit chain: the key, the document format, and the JSON Lines file.

A checkpoint is `{"type", "v", "issuer", "sequence", "hash", "signed_at", "kid", "signature"}`:
an Ed25519 signature (base64url) over the canonical JSON of every other field. The signing key
never enters the database — it comes from CUSTODY_CHECKPOINT_KEY(_FILE) or is derived from
SECRET_KEY — so whoever holds the database can rewrite rows but cannot sign a rewritten chain.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from django.conf import settings

DOCUMENT_TYPE = "custody.audit.checkpoint"
HKDF_INFO = b"custody audit checkpoint signing key v1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@lru_cache(maxsize=4)
def _signing_key(pem: str | None, secret_key: str) -> Ed25519PrivateKey:
    if pem:
        key = load_pem_private_key(pem.encode(), password=None)
        assert isinstance(key, Ed25519PrivateKey)  # checked when settings load
        return key
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(
        secret_key.encode()
    )
    return Ed25519PrivateKey.from_private_bytes(seed)


def signing_key() -> Ed25519PrivateKey:
    return _signing_key(settings.CUSTODY_CHECKPOINT_KEY, settings.SECRET_KEY)


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint: a stable name for the key, derived from the key alone."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw_public_key(key))}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return _b64(hashlib.sha256(canonical).digest())


def verification_keys() -> dict[str, Ed25519PublicKey]:
    """The current public key and every retired one still trusted, by key id."""
    keys = [signing_key().public_key()]
    for encoded in settings.CUSTODY_CHECKPOINT_PREVIOUS_PUBLIC_KEYS:
        keys.append(Ed25519PublicKey.from_public_bytes(_unb64(encoded)))
    return {key_id(key): key for key in keys}


def public_jwks() -> dict[str, Any]:
    current = key_id(signing_key().public_key())
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": _b64(raw_public_key(key)),
                "kid": kid,
                "alg": "EdDSA",
                "use": "sig",
                "status": "current" if kid == current else "retired",
            }
            for kid, key in verification_keys().items()
        ]
    }


def _signed_bytes(document: dict[str, Any]) -> bytes:
    body = {name: value for name, value in document.items() if name != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(*, sequence: int, chain_hash: str, signed_at: str) -> dict[str, Any]:
    key = signing_key()
    document = {
        "type": DOCUMENT_TYPE,
        "v": 1,
        "issuer": settings.CUSTODY_ISSUER,
        "sequence": sequence,
        "hash": chain_hash,
        "signed_at": signed_at,
        "kid": key_id(key.public_key()),
    }
    document["signature"] = _b64(key.sign(_signed_bytes(document)))
    return document


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    hash: str
    source: str  # where it was read: "file:line", "database copy"
    document: dict[str, Any] = field(repr=False, compare=False)

    def check_signature(self) -> None:
        """ValueError, naming the source, unless a trusted key signed exactly this document."""
        key = verification_keys().get(self.document.get("kid"))
        if key is None:
            raise ValueError(
                f"{self.source}: checkpoint at sequence {self.sequence} is signed by an unknown "
                f"key {self.document.get('kid')!r}"
            )
        try:
            key.verify(
                _unb64(str(self.document.get("signature", ""))), _signed_bytes(self.document)
            )
        except (InvalidSignature, ValueError):
            raise ValueError(
                f"{self.source}: checkpoint at sequence {self.sequence} has a signature that "
                "does not verify"
            )


def parse_document(document: Any, source: str) -> Checkpoint:
    """The checkpoint a document claims, its signature not yet checked; ValueError if it is not
    one. (Signatures are checked where a checkpoint decides something: Ed25519 verification of a
    year of minutely checkpoints on every walk would cost minutes.)"""
    if not isinstance(document, dict) or document.get("type") != DOCUMENT_TYPE:
        raise ValueError(f"{source}: not a Custody audit checkpoint")
    sequence, chain_hash = document.get("sequence"), document.get("hash")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise ValueError(f"{source}: checkpoint has no valid sequence")
    if not isinstance(chain_hash, str) or len(chain_hash) != 64:
        raise ValueError(f"{source}: checkpoint at sequence {sequence} has no valid hash")
    if not isinstance(document.get("kid"), str) or not isinstance(document.get("signature"), str):
        raise ValueError(f"{source}: checkpoint at sequence {sequence} has no key id or signature")
    return Checkpoint(sequence, chain_hash, source, document)


def verify_document(document: Any, source: str) -> Checkpoint:
    """The checkpoint a document vouches for, signature checked; ValueError if it does not."""
    checkpoint = parse_document(document, source)
    checkpoint.check_signature()
    return checkpoint


def read_file(path: Path) -> list[Checkpoint]:
    """Every checkpoint in a JSON Lines file (signatures not yet checked); ValueError on the first
    line that is not one. A missing file holds no checkpoints (OSError on other read failures)."""
    found = []
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        return []
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            source = f"{path}:{number}"
            try:
                document = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{source}: not JSON")
            found.append(parse_document(document, source))
    return found


def last_in_file(path: Path, chunk: int = 8192) -> dict[str, Any] | None:
    """The last line's document, read from the end (the file grows by a line a minute)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - chunk))
            lines = [line for line in handle.read().splitlines() if line.strip()]
    except FileNotFoundError:
        return None
    if not lines:
        return None
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return None


def append_to_file(path: Path, document: dict[str, Any]) -> None:
    """Append one line, under an exclusive lock, and make it durable before returning."""
    line = json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
