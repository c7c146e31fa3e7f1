"""The operators' HTTP endpoints, answered before Django: ``/healthz``, ``/readyz`` and ``/metrics``.

Wrap the project's HTTP application with :class:`OperatorEndpoints` in its
ASGI module::

    "http": OperatorEndpoints(django_asgi_app),

Load balancers and Prometheus call these by address, over plain HTTP, often
every second: so they are answered here, whatever the ``Host`` header
(Django would refuse one outside ``ALLOWED_HOSTS``), with no redirect to
https, no session, no middleware, and no per-request log line (the project's
launch line leaves them out of daphne's access log too). Every other request
goes to the wrapped application unchanged.

- ``/healthz``: 200 while the process answers at all.
- ``/readyz``: 200 when the database and the channel layer answer; 503 with a
  one-line JSON reason otherwise, and as soon as the process drains
  (:mod:`notifications.health`).
- ``/metrics``: the deployment's metrics (:mod:`notifications.prometheus`), for
  a request that carries ``Authorization: Bearer <NOTIFICATIONS_METRICS_KEY>``
  and comes from ``NOTIFICATIONS_METRICS_ALLOWED_ADDRESSES``, each where set;
  404 when neither is set (the endpoint is off).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from channels.db import database_sync_to_async

from notifications import health
from notifications.conf import conf
from notifications.exceptions import one_line
from notifications.networks import contains, networks

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
# Paths whose requests are not written to daphne's access log (notifications.launch).
QUIET_PATHS = frozenset({HEALTH_PATH, READY_PATH})

JSON = b"application/json"


class OperatorEndpoints:
    """ASGI middleware: answers the operators' paths itself, hands everything else to ``app``."""

    def __init__(self, app: Any) -> None:  # any ASGI application (Django's ASGIHandler types its own)
        self.app = app
        self.routes: dict[str, Callable[[Scope], Awaitable[tuple[int, bytes, list[tuple[bytes, bytes]]]]]] = {
            HEALTH_PATH: self.healthz,
            READY_PATH: self.readyz,
            METRICS_PATH: self.metrics,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        if scope.get("method") not in ("GET", "HEAD"):
            status, body, headers = 405, _json({"error": "use GET"}), [(b"allow", b"GET, HEAD")]
        else:
            status, body, headers = await route(scope)
        headers = [*headers, (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})

    async def healthz(self, scope: Scope) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        return 200, _json({"status": "ok"}), [(b"content-type", JSON)]

    async def readyz(self, scope: Scope) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        answer = await health.readiness()
        if answer.ready and answer.reason != "ready":
            return 200, _json({"status": "ready", "degraded": answer.reason}), [(b"content-type", JSON)]
        if answer.ready:
            return 200, _json({"status": "ready"}), [(b"content-type", JSON)]
        return 503, _json({"status": "unavailable", "reason": answer.reason}), [(b"content-type", JSON)]

    async def metrics(self, scope: Scope) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        refusal = metrics_refusal(scope)
        if refusal is not None:
            return refusal
        # Imported here: this module is imported by the launch line before Django is set up.
        from notifications import prometheus

        try:
            body = await database_sync_to_async(prometheus.exposition)()
        except Exception as exc:  # the registry's database does not answer: say so in one line
            reason = f"the registry's database does not answer: {one_line(exc)}"
            logger.warning("/metrics: %s", reason)
            return 503, _json({"error": reason}), [(b"content-type", JSON)]
        return 200, body, [(b"content-type", prometheus.CONTENT_TYPE.encode())]


def metrics_refusal(scope: Scope) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
    """Why this request may not read the metrics, as a response; None when it may.

    404 when the endpoint is off (no key, no addresses), 403 from an address
    not allowed, 401 without the right key: each condition that is set must hold.
    """
    key: str = conf.METRICS_KEY
    allowed = networks(conf.METRICS_ALLOWED_ADDRESSES)
    if not key and not allowed:
        return 404, _json({"error": "not found"}), [(b"content-type", JSON)]
    client = scope.get("client")
    if allowed and not (client and contains(allowed, str(client[0]))):
        return 403, _json({"error": "this address may not read the metrics"}), [(b"content-type", JSON)]
    if key and not _has_key(scope, key):
        return (
            401,
            _json({"error": "a bearer key is required"}),
            [
                (b"content-type", JSON),
                (b"www-authenticate", b'Bearer realm="metrics"'),
            ],
        )
    return None


def _has_key(scope: Scope, key: str) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, given = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), key.encode())
    return False


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode() + b"\n"
