"""``python manage.py notify <recipient_uuid> "<message>"``: send a notification, as an operator."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.conf import conf
from notifications.exceptions import DeliveryFailed, InvalidNotification
from notifications.sending import SendResult, broadcast, send

USAGE_ERROR = 2  # as argparse exits for a usage mistake


def _refuse_constant(name: str) -> float:
    # Python reads NaN and Infinity; JSON (and every browser's JSON.parse) does not.
    raise ValueError(f"{name} is not JSON")


class Command(BaseCommand):
    help = (
        "Send MESSAGE to every connection registered as RECIPIENT (or, with --all, to every registered "
        "connection). Goes through the channel layer when it reaches the server processes (Redis); "
        "with the embedded in-memory layer it goes through the running server's WebSocket. "
        "Exits 0 once the message is handed over, 1 when it cannot be (no server, Redis down), "
        "2 for a mistake in the command line (arguments, id, message)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "arguments",
            nargs="*",
            metavar="RECIPIENT MESSAGE",
            help="the recipient id (recipient_uuid) and the text it receives; "
            "MESSAGE '-' reads it from standard input (one final newline is dropped); "
            "with --all, MESSAGE alone",
        )
        parser.add_argument("--all", action="store_true", help="send to every registered connection")
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="MESSAGE is a JSON document: check it first"
        )
        parser.add_argument("--quiet", "-q", action="store_true", help="print nothing when the message is sent")
        parser.add_argument(
            "--url",
            help="send through this server's WebSocket instead of the channel layer "
            f"(with the in-memory layer the default is NOTIFICATIONS_SERVER_URL, now {conf.SERVER_URL})",
        )

    def handle(
        self, *args: Any, arguments: list[str], all: bool, as_json: bool, quiet: bool, url: str | None, **options: Any
    ) -> None:
        wanted = 1 if all else 2
        if len(arguments) != wanted:
            usage = "notify --all MESSAGE" if all else "notify RECIPIENT MESSAGE"
            raise CommandError(
                f"Usage: {usage} (got {len(arguments)} argument{'s' if len(arguments) != 1 else ''}).",
                returncode=USAGE_ERROR,
            )
        message = self._message(arguments[-1], as_json=as_json)
        if url is not None and not url.startswith(("ws://", "wss://")):
            raise CommandError(
                f"Cannot send: --url {url!r} is not a WebSocket address (ws://host:port/).", returncode=USAGE_ERROR
            )
        # The failure comes back as this command's one line on stderr; the
        # sending API's own warning would say it a second time.
        logging.getLogger("notifications.sending").setLevel(logging.ERROR)
        try:
            result = broadcast(message, server_url=url) if all else send(arguments[0], message, server_url=url)
        except InvalidNotification as exc:
            raise CommandError(f"Cannot send: {str(exc).rstrip('.')}.", returncode=USAGE_ERROR) from exc
        except DeliveryFailed as exc:
            raise CommandError(f"Cannot send: {str(exc).rstrip('.')}.") from exc
        if not quiet:
            self.stdout.write(self._report(result))

    def _message(self, argument: str, *, as_json: bool) -> str:
        text = argument
        if argument == "-":
            text = sys.stdin.read()
            text = text.removesuffix("\n").removesuffix("\r")
        if as_json:
            try:
                json.loads(text, parse_constant=_refuse_constant)
            except ValueError as exc:
                raise CommandError(
                    f"Cannot send: --json: the message is not valid JSON ({exc}).", returncode=USAGE_ERROR
                ) from exc
        return text

    @staticmethod
    def _report(result: SendResult) -> str:
        target = "every registered connection" if result.recipient is None else repr(result.recipient)
        count = result.live_connections
        if result.outcome == "pending":
            return f"Kept for {conf.HISTORY_TTL:g} s for the next registration of {target}: nobody is registered now."
        if result.outcome == "dropped":
            return f"Not delivered: nobody is registered as {target}, and pending notifications are off."
        if result.outcome == "live" and not count:
            # The registry writes in batches; the layer knows better.
            return f"Sent to {target}: live (the registry has not counted the connection yet)."
        if count is None:
            return f"Sent to {target} (live connections unknown: the registry is off or unreadable)."
        if count == 0:
            return f"Sent to {target}, but no live connection is registered right now."
        return f"Sent to {target}: {count} live connection{'s' if count != 1 else ''}."
