"""Addresses and networks as settings write them (``10.0.0.5``, ``10.0.0.0/8``, ``::1``), and membership.

Used where an address decides trust: who may read ``/metrics``
(``METRICS_ALLOWED_ADDRESSES``) and whose forwarding headers are believed
(``TRUSTED_PROXIES``). The system checks reject an entry that does not parse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(items: Iterable[str]) -> list[Network]:
    """Each address or network as a network (an address is a network of one)."""
    return [ipaddress.ip_network(item.strip(), strict=False) for item in items]


def not_networks(items: Iterable[str]) -> list[str]:
    """The entries that are no address or network (what the system checks report)."""
    wrong = []
    for item in items:
        try:
            ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            wrong.append(item)
    return wrong


def is_address(text: str) -> bool:
    """Whether ``text`` is one IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def contains(allowed: list[Network], address: str) -> bool:
    """Whether ``address`` (an IPv4-mapped IPv6 address counts as its IPv4 one) is in one of ``allowed``."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in allowed)
