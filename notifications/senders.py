"""Who may send: API keys (the HTTP endpoint, keyed WebSocket senders) and ``NOTIFICATIONS_WS_SENDERS``.

Over the WebSocket, protocol v1 lets any client send to any id. With
``WS_SENDERS = "key"`` a connection may send only if its handshake carried
``Authorization: Bearer <key>`` with one of ``API_KEYS`` (back-ends can;
browsers cannot set the header, so pages cannot send); with ``"none"``
nobody may. In both, the project's own server-side senders (``send()`` and
``manage.py notify`` on the embedded default, which reach the server
through its WebSocket) present :func:`server_key`, made from ``SECRET_KEY``,
which every process of a deployment shares.
"""

from __future__ import annotations

import hmac

from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import salted_hmac

from notifications.conf import conf
from notifications.tokens import TOKEN_INVALID, TOKEN_REQUIRED


def server_key() -> str | None:
    """The key the project's own processes present on the server's WebSocket (from ``SECRET_KEY``).

    None without a secret key (a second terminal beside ``bin/serve``, which
    has none): such a process presents no key, which is all an open server
    (``WS_SENDERS = "anyone"``, the default) needs.
    """
    try:
        return salted_hmac("notifications.senders.server_key", "websocket sender", algorithm="sha256").hexdigest()
    except ImproperlyConfigured:  # SECRET_KEY empty
        return None


def bearer(authorization: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header value; None for any other value."""
    scheme, _, presented = authorization.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None
    return presented


def is_api_key(presented: str | None) -> bool:
    """Whether ``presented`` is one of ``API_KEYS``: compared with every key, in constant time each."""
    if presented is None:
        return False
    given = _bytes(presented)
    matches = [hmac.compare_digest(given, key.encode()) for key in conf.API_KEYS]
    return any(matches)


def websocket_sender_refusal(authorization: str) -> tuple[str, str] | None:
    """None if a connection whose handshake carried this ``Authorization`` value may send; else (code, reason)."""
    mode = conf.WS_SENDERS
    if mode == "anyone":
        return None
    presented = bearer(authorization)
    own = server_key()
    if presented is not None and own is not None and hmac.compare_digest(_bytes(presented), own.encode()):
        return None
    if mode == "key":
        if is_api_key(presented):
            return None
        if presented is None:
            return TOKEN_REQUIRED, "only connections with an API key may send (NOTIFY_WS_SENDERS=key)"
        return TOKEN_INVALID, "the key of its handshake is not one of NOTIFY_API_KEYS (NOTIFY_WS_SENDERS=key)"
    code = TOKEN_REQUIRED if presented is None else TOKEN_INVALID
    return code, "nobody may send over the WebSocket (NOTIFY_WS_SENDERS=none); use send() or POST /api/notify/"


def _bytes(presented: str) -> bytes:
    return presented.encode("utf-8", "surrogateescape")
