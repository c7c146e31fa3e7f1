"""The wire protocol (v1, and v2's opt-in frames): what a client's text frame asks for, and recipient group names.

Pure functions, no I/O: the consumer, the sending API and the ``notify``
command all validate through here, so every entry point accepts and refuses
exactly the same things. See PROTOCOL.md for the contract.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from notifications.conf import conf
from notifications.exceptions import InvalidNotification

GREETING = "..:: Hello from the Notification Center ::.."
REGISTER_MESSAGE = "connected"


# A v2 registration frame without "since" (its value may be anything, JSON null included).
NO_SINCE: object = object()


@dataclass(frozen=True, slots=True)
class Register:
    recipient: str
    v2: bool = False  # the frame said "v": 2: a "registered" reply, JSON notification frames
    since: object = NO_SINCE  # v2 only: the client's "since", unchecked (see notifications.layers.position_order)
    token: object = None  # the frame's "token" (v1 or v2), unchecked (see notifications.tokens); None: none


@dataclass(frozen=True, slots=True)
class Relay:
    recipient: str
    text: str
    v2: bool = False  # the frame said "v": 2: its sender gets a "sent" reply


@dataclass(frozen=True, slots=True)
class Ignored:
    """A frame that does nothing; ``reason`` says why, for the log."""

    reason: str


Action = Register | Relay | Ignored


def _unencodable_reason(value: str) -> str | None:
    if "\x00" in value:
        return "holds a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate (not valid UTF-8)"
    return None


def validate_recipient(recipient: object) -> str:
    """Return ``recipient`` if it is a usable id, else raise :class:`InvalidNotification`."""
    if not isinstance(recipient, str):
        raise InvalidNotification(f"recipient_uuid must be a string, not {type(recipient).__name__}")
    if not recipient:
        raise InvalidNotification("recipient_uuid is empty")
    limit = conf.MAX_RECIPIENT_LENGTH
    if len(recipient) > limit:
        raise InvalidNotification(f"recipient_uuid is {len(recipient)} characters long, over the limit of {limit}")
    if reason := _unencodable_reason(recipient):
        raise InvalidNotification(f"recipient_uuid {reason}")
    return recipient


def message_text(message: object) -> str:
    """The text frame a recipient receives: a string as-is, anything else as its JSON text."""
    if isinstance(message, str):
        text = message
    else:
        try:
            text = json.dumps(message, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidNotification(f"message cannot be sent as JSON: {exc}") from exc
    if reason := _unencodable_reason(text):
        raise InvalidNotification(f"message {reason}")
    return text


def parse_frame(text: str) -> Action:
    """Decide what a client's text frame asks for. Never raises."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return Ignored("plain text, not JSON")
    if not isinstance(data, dict):
        return Ignored(f"JSON {type(data).__name__}, not an object")
    if "recipient_uuid" not in data:
        return Ignored("no recipient_uuid")
    try:
        recipient = validate_recipient(data["recipient_uuid"])
    except InvalidNotification as exc:
        return Ignored(str(exc))
    if "message" not in data:
        return Ignored("no message")
    message = data["message"]
    if message == REGISTER_MESSAGE:
        token = data.get("token")
        if is_v2(data):
            return Register(recipient, v2=True, since=data.get("since", NO_SINCE), token=token)
        return Register(recipient, token=token)
    try:
        return Relay(recipient, message_text(message), is_v2(data))
    except InvalidNotification as exc:
        return Ignored(str(exc))


def is_v2(frame: dict[str, object]) -> bool:
    """Whether a frame opts in to protocol v2: ``"v"`` is the JSON integer 2 (not 2.0, not true, not "2")."""
    version = frame.get("v")
    return type(version) is int and version == 2


def group_name(recipient: str) -> str:
    """The channel-layer group of a recipient id.

    Channels allows only ASCII letters, digits, ``-_.`` and fewer than 100
    characters; a SHA-256 digest of the exact UTF-8 bytes fits, keeps ids that
    differ in any code point apart (no Unicode normalisation) and resists collisions.
    """
    return conf.GROUP_PREFIX + hashlib.sha256(recipient.encode("utf-8")).hexdigest()


def broadcast_group() -> str:
    """The channel-layer group every connection joins with its first registration."""
    return conf.GROUP_PREFIX + "all"  # recipient groups end in 64 hex digits: no clash


def describe(recipient: str, limit: int = 80) -> str:
    """A log-safe rendering of a client-chosen id: quoted, escaped, bounded."""
    shown = recipient if len(recipient) <= limit else recipient[:limit] + "…"
    return ascii(shown) if not shown.isprintable() else repr(shown)
