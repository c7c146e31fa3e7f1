"""``python manage.py notify_token <id> [--max-age SECONDS]``: print a registration token for one id."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.conf import conf
from notifications.exceptions import InvalidNotification
from notifications.tokens import registration_token


class Command(BaseCommand):
    help = (
        "Print a token that registers ID (and no other id) in signed mode (NOTIFY_REGISTRATION=signed), "
        "good for --max-age seconds. Only the token goes to stdout."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("recipient", metavar="ID", help="the id the token registers")
        parser.add_argument(
            "--max-age",
            metavar="SECONDS",
            help=f"how long the token is good for (default NOTIFY_TOKEN_MAX_AGE, {conf.TOKEN_MAX_AGE})",
        )

    def handle(self, *args: Any, recipient: str, max_age: str | None, **options: Any) -> None:
        age = None if max_age is None else self._seconds(max_age)
        try:
            token = registration_token(recipient, age)
        except InvalidNotification as exc:
            raise CommandError(f"Cannot make a token: {exc}.") from None
        self.stdout.write(token)

    @staticmethod
    def _seconds(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise CommandError(f"--max-age must be a whole number of seconds, at least 1, not {raw!r}.")
        return value
