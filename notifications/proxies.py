"""Forwarding headers believed only from the proxies named in ``NOTIFICATIONS_TRUSTED_PROXIES``.

daphne's own ``--proxy-headers`` believes ``X-Real-IP`` from whoever sends
it, so it is safe only while daphne is reachable by the proxy alone (bound
to 127.0.0.1 on the proxy's host). Once daphne listens on a private address
that other hosts reach, wrap the application with
:class:`TrustedProxyHeaders` and name the proxies: a request from one of
them gets the client address of its ``X-Real-IP`` (and port of
``X-Real-Port``); from anyone else, the forwarding headers are removed
before the application sees them, so the client address (the registry, the
admin, the per-address limits, ``METRICS_ALLOWED_ADDRESSES``) and
``X-Forwarded-Proto`` (Django's ``SECURE_PROXY_SSL_HEADER``) cannot be forged.
With no trusted proxies set it changes nothing. ``bin/daphne`` leaves out
daphne's ``--proxy-headers`` when ``NOTIFY_TRUSTED_PROXIES`` is set.
"""

from __future__ import annotations

import functools
from typing import Any

from notifications.conf import conf
from notifications.networks import Network, contains, is_address, networks

FORWARDING_HEADERS = frozenset({b"x-real-ip", b"x-real-port", b"x-forwarded-for", b"x-forwarded-proto"})


@functools.lru_cache(maxsize=4)
def _trusted(items: tuple[str, ...]) -> list[Network]:
    return networks(items)


class TrustedProxyHeaders:
    """ASGI middleware for HTTP and WebSocket scopes (see the module's text)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and conf.TRUSTED_PROXIES:
            scope = self.rewrite(scope, _trusted(tuple(conf.TRUSTED_PROXIES)))
        await self.app(scope, receive, send)

    @staticmethod
    def rewrite(scope: dict[str, Any], trusted: list[Network]) -> dict[str, Any]:
        peer = scope.get("client")
        headers = scope.get("headers", [])
        if peer and contains(trusted, str(peer[0])):
            found = {name: value for name, value in headers if name in (b"x-real-ip", b"x-real-port")}
            address = found.get(b"x-real-ip", b"").decode("latin-1").strip()
            if is_address(address):
                port = found.get(b"x-real-port", b"").decode("latin-1").strip()
                return {**scope, "client": (address, int(port) if port.isdigit() and int(port) < 65536 else 0)}
            return scope
        # Not from a trusted proxy: whatever it says about the client is the client's own claim.
        return {**scope, "headers": [(name, value) for name, value in headers if name not in FORWARDING_HEADERS]}
