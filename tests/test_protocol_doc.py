"""docs/PROTOCOL.md stays true to the code: the greeting, the default limits, the close codes."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from daphne.server import Server

from notifications.conf import DEFAULTS
from notifications.consumers import CLOSE_CONTINUITY_LOST, CLOSE_TRY_AGAIN_LATER
from notifications.limits import CLOSE_LIMIT
from notifications.protocol import GREETING

DOC = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text under the level-2 heading ``title``, up to the next one."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.MULTILINE | re.DOTALL)
    assert match, f"docs/PROTOCOL.md has no section {title!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row in ``text``, header and separator rows left out."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()]
    return [row for row in rows if len(row) > 1 and not set(row[0]) <= set("-:")][1:]


def test_the_greeting_is_the_one_the_server_sends() -> None:
    match = re.search(r"<!-- greeting -->\n```text\n(.*)\n```", DOC)
    assert match, "the greeting block is marked <!-- greeting --> and fenced as text"
    assert match.group(1) == GREETING


def test_the_default_limits_are_those_of_the_settings() -> None:
    names = ("MAX_RECIPIENT_LENGTH", "MAX_IDS_PER_CONNECTION", "MAX_QUEUED_MESSAGES")
    stated = {row[0].strip("`"): row[1] for row in table_rows(section("Default limits"))}
    assert {name: int(stated[name].replace(",", "")) for name in names} == {name: DEFAULTS[name] for name in names}
    # The prose says the same: "16 ids registered" in the log line quoted under Registering.
    assert f"already {DEFAULTS['MAX_IDS_PER_CONNECTION']} ids registered" in section("Registering")


def test_the_application_close_codes_are_the_consumers() -> None:
    ours = {str(CLOSE_TRY_AGAIN_LATER), str(CLOSE_CONTINUITY_LOST), str(CLOSE_LIMIT)}
    assert set(re.findall(r"`(4\d{3})`", DOC)) == ours
    codes = [row[0].strip("`") for row in table_rows(section("Close codes the server sends"))]
    assert set(codes[:3]) == ours


def test_the_frame_size_limit_is_daphnes_default() -> None:
    defaults = inspect.signature(Server).parameters
    assert defaults["websocket_max_message_size"].default == 1024 * 1024
    assert defaults["websocket_max_frame_size"].default == 1024 * 1024
    assert "1 MiB (1,048,576 bytes" in section("Tolerated and ignored")
