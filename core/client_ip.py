"""The client's address, for throttling sign-ins and for evidence: never blindly X-Forwarded-For.

The peer (REMOTE_ADDR) is the client unless it is one of TRUSTED_PROXIES. Only then is
X-Forwarded-For read, from the right: each hop a trusted proxy vouches for is peeled off, and
the first address no trusted proxy vouches for is the client. Whatever lies further left was
written by the client itself and is ignored; a malformed hop ends the walk at the last address
that a trusted proxy did vouch for.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_trusted_proxies(values: list[str], *, name: str = "TRUSTED_PROXIES") -> list[Network]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name} must list IP addresses or networks (CIDR, comma-separated), not {value!r}."
            ) from exc
    return networks


def _address(value: str) -> Address | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def from_trusted_proxy(request) -> bool:
    """Whether the peer is one of TRUSTED_PROXIES, whose forwarded headers are believed."""
    peer = _address(request.META.get("REMOTE_ADDR", ""))
    trusted = parse_trusted_proxies(settings.TRUSTED_PROXIES)
    return peer is not None and any(peer in network for network in trusted)


def client_ip(request) -> str | None:
    """The client's address, or None when the peer has none (a Unix socket, a test request)."""
    peer = _address(request.META.get("REMOTE_ADDR", ""))
    if peer is None:
        return None
    trusted = parse_trusted_proxies(settings.TRUSTED_PROXIES)
    client = peer
    if not any(client in network for network in trusted):
        return str(client)
    for hop in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        address = _address(hop)
        if address is None:
            break
        client = address
        if not any(client in network for network in trusted):
            break
    return str(client)


def peer_is_trusted_proxy(request) -> bool:
    """Whether the direct peer is one of TRUSTED_PROXIES (so its headers may be believed)."""
    peer = _address(request.META.get("REMOTE_ADDR", ""))
    if peer is None:
        return False
    return any(peer in network for network in parse_trusted_proxies(settings.TRUSTED_PROXIES))
