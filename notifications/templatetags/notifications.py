"""``{% load notifications %}``: ``{% notify_token id %}`` puts a registration token for ``id`` in a page."""

from __future__ import annotations

from django import template

from notifications.tokens import registration_token

register = template.Library()


@register.simple_tag
def notify_token(recipient: str, max_age: int | None = None) -> str:
    """A token that registers ``recipient`` (for ``max_age`` seconds, default ``NOTIFICATIONS_TOKEN_MAX_AGE``).

    Only for an id the page's user may read: the view decides that, as it
    decides what else the page shows. The token is plain text, escaped as any
    template value is.
    """
    return registration_token(recipient, max_age)
