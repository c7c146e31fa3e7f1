"""Which WebSocket handshakes the server accepts, by their ``Origin`` header.

Browsers send ``Origin``; Python clients send none; a page opened from disk
sends ``null``. Channels' ``AllowedHostsOriginValidator`` refuses a missing
Origin, which would lock out every non-browser client in the field.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator

from notifications.conf import conf


class NotificationOriginValidator(OriginValidator):
    """Accept a missing Origin; check a present one against ``NOTIFICATIONS_ALLOWED_ORIGINS``."""

    def __init__(self, application: Any) -> None:
        # The allow-list is read from settings on every handshake (override_settings works).
        super().__init__(application, allowed_origins=())

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        if parsed_origin is None:
            return True
        allowed = conf.ALLOWED_ORIGINS
        if "*" in allowed:
            return True
        if parsed_origin.geturl() == "null":
            return "null" in allowed
        return any(self.match_allowed_origin(parsed_origin, pattern) for pattern in allowed)
