"""The errors the sending API raises: a notification that cannot be sent, or cannot be handed over."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from notifications.sending import SendResult


class InvalidNotification(ValueError):
    """A recipient id or message that cannot be delivered; the text says why."""


class DeliveryFailed(RuntimeError):
    """The notification could not be handed over: Redis is down, or the server cannot be reached.

    ``sent`` holds the results of the notifications of the same call that
    were handed over before the failure.
    """

    def __init__(self, message: str, *, sent: Sequence[SendResult] = ()) -> None:
        super().__init__(message)
        self.sent = list(sent)


def one_line(exc: BaseException) -> str:
    """An error as one line for a log or an answer: its type, and the first line of its text if any."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
