"""Signed registrations: tokens that let a page register exactly one id, for a while.

With ``NOTIFICATIONS_REGISTRATION = "signed"`` a registration must carry a
token made by the application's own server code for that id::

    from notifications.tokens import registration_token

    token = registration_token(request.user.profile.notify_id)  # or {% notify_token id %} in a template

A token is ``django.core.signing`` over its expiry time, with a salt of this
app's that includes the id: it reveals nothing of the id, is the same size
for every id, and a token made for one id (or with another ``SECRET_KEY``)
never passes for another. ``signing`` compares signatures in constant time.
"""

from __future__ import annotations

import time

from django.core import signing

from notifications.conf import conf
from notifications.protocol import validate_recipient

SALT = "notifications.registration"
# Longer strings are refused without being read: a real token is under 100 characters.
MAX_TOKEN_LENGTH = 1000

# Why a registration was refused: the codes of the protocol's ``refused`` frame.
TOKEN_REQUIRED = "token-required"
TOKEN_INVALID = "token-invalid"
TOKEN_EXPIRED = "token-expired"


def _salt(recipient: str) -> str:
    return f"{SALT}:{recipient}"


def registration_token(recipient: str, max_age: int | None = None) -> str:
    """A token that registers ``recipient`` (and no other id) for ``max_age`` seconds.

    ``max_age`` defaults to ``NOTIFICATIONS_TOKEN_MAX_AGE`` (3600). Raises
    :class:`~notifications.exceptions.InvalidNotification` for an unusable id,
    ``ValueError`` for an age under one second.
    """
    validate_recipient(recipient)
    age = conf.TOKEN_MAX_AGE if max_age is None else max_age
    if isinstance(age, bool) or not isinstance(age, int) or age < 1:
        raise ValueError(f"max_age must be a whole number of seconds, at least 1, not {age!r}")
    return signing.dumps(int(time.time()) + age, salt=_salt(recipient))


def check_registration_token(recipient: str, token: object) -> tuple[str, str] | None:
    """None if ``token`` registers ``recipient`` now; else ``(code, reason)``, the reason one line for the log.

    The reason never holds the token.
    """
    if token is None:
        return TOKEN_REQUIRED, "no token"
    if not isinstance(token, str):
        return TOKEN_INVALID, f"the token is a JSON {type(token).__name__}, not a string"
    if len(token) > MAX_TOKEN_LENGTH:
        return TOKEN_INVALID, f"the token is {len(token)} characters long, over {MAX_TOKEN_LENGTH}"
    try:
        expires = signing.loads(token, salt=_salt(recipient))
    except signing.BadSignature:
        return TOKEN_INVALID, "the token is not one this server made for this id (another id, key or a damaged token)"
    except ValueError:  # a signature that checks but holds no JSON: not a token of this app's
        return TOKEN_INVALID, "the token is malformed"
    if isinstance(expires, bool) or not isinstance(expires, int):
        return TOKEN_INVALID, "the token is malformed"
    if expires <= time.time():
        return TOKEN_EXPIRED, f"the token expired {int(time.time() - expires)} s ago"
    return None
