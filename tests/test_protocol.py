"""notifications.protocol: what each client frame means, and recipient group names."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from notifications.protocol import (
    Ignored,
    InvalidNotification,
    Register,
    Relay,
    describe,
    group_name,
    message_text,
    parse_frame,
    validate_recipient,
)

VALID_GROUP = re.compile(r"^[a-zA-Z0-9\-_.]{1,99}$")


def test_connected_registers_the_id() -> None:
    assert parse_frame('{"recipient_uuid": "test-uuid", "message": "connected"}') == Register("test-uuid")


def test_other_messages_relay_the_raw_string() -> None:
    text = json.dumps({"recipient_uuid": "r", "message": '{"status": 200}'})
    assert parse_frame(text) == Relay("r", '{"status": 200}')


@pytest.mark.parametrize(
    ("message", "delivered"),
    [(42, "42"), (None, "null"), (True, "true"), ({"a": ["é"]}, '{"a": ["é"]}'), ([1, 2], "[1, 2]")],
)
def test_a_message_that_is_not_a_string_is_relayed_as_its_json_text(message: object, delivered: str) -> None:
    assert parse_frame(json.dumps({"recipient_uuid": "r", "message": message})) == Relay("r", delivered)


def test_extra_keys_are_ignored() -> None:
    text = json.dumps({"recipient_uuid": "r", "message": "hi", "priority": "high"})
    assert parse_frame(text) == Relay("r", "hi")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("connected", "plain text"),
        ("hello there", "plain text"),
        ("{not json", "plain text"),
        ("[1, 2]", "not an object"),
        ('"connected"', "not an object"),
        ("null", "not an object"),
        ('{"message": "hi"}', "no recipient_uuid"),
        ('{"recipient_uuid": "", "message": "hi"}', "empty"),
        ('{"recipient_uuid": 5, "message": "hi"}', "must be a string"),
        ('{"recipient_uuid": null, "message": "hi"}', "must be a string"),
        ('{"recipient_uuid": ["a"], "message": "hi"}', "must be a string"),
        ('{"recipient_uuid": "r"}', "no message"),
        ('{"recipient_uuid": "\\ud800", "message": "hi"}', "lone surrogate"),
        ('{"recipient_uuid": "r", "message": "\\udfff"}', "lone surrogate"),
        ('{"recipient_uuid": "r", "message": {"k": "\\ud800"}}', "lone surrogate"),
        ('{"recipient_uuid": "a\\u0000b", "message": "hi"}', "NUL"),
        ('{"recipient_uuid": "r", "message": "a\\u0000"}', "NUL"),
        ("[" * 100_000, "plain text"),
    ],
)
def test_bad_frames_are_ignored_with_a_reason(text: str, reason: str) -> None:
    action = parse_frame(text)
    assert isinstance(action, Ignored)
    assert reason in action.reason


def test_ids_up_to_255_characters_are_accepted_and_longer_ones_refused() -> None:
    assert validate_recipient("é" * 255) == "é" * 255
    with pytest.raises(InvalidNotification, match="256 characters long"):
        validate_recipient("x" * 256)


def test_message_text_refuses_what_cannot_travel_as_utf8() -> None:
    with pytest.raises(InvalidNotification, match="lone surrogate"):
        message_text("\ud83d")
    assert message_text("😀") == "😀"


@pytest.mark.parametrize("recipient", ["a", "test-uuid", "x" * 255, "日本語", "a b/c:d", "😀", "\u200b"])
def test_group_names_are_valid_for_channels(recipient: str) -> None:
    assert VALID_GROUP.match(group_name(recipient))


def test_ids_differing_in_any_code_point_are_distinct_recipients() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"  # the same text to a reader, not to us
    assert group_name(composed) != group_name(decomposed)
    assert group_name("A") != group_name("a")
    ids = ["r", "r ", " r", "R", "r\u200b", "test-uuid", "test_uuid", "x" * 255, "x" * 254]
    assert len({group_name(recipient) for recipient in ids}) == len(ids)


def test_a_group_name_is_the_prefix_and_the_sha256_of_the_ids_utf8_bytes() -> None:
    # A known digest: every process (and every version) must name an id's group alike.
    assert group_name("test-uuid") == "notify.df1c3ea58c80b791504742601b7bc41239eab2522822010e17d6b365fe2782f9"
    assert group_name("caf\u00e9") == "notify." + hashlib.sha256("café".encode()).hexdigest()
    assert re.fullmatch(r"notify\.[0-9a-f]{64}", group_name("日本語"))


def test_the_group_prefix_is_a_setting(settings: pytest.FixtureRequest) -> None:
    settings.NOTIFICATIONS_GROUP_PREFIX = "tenant7."
    assert group_name("test-uuid") == "tenant7.df1c3ea58c80b791504742601b7bc41239eab2522822010e17d6b365fe2782f9"


def test_describe_makes_client_ids_safe_to_log() -> None:
    assert describe("abc") == "'abc'"
    assert "\n" not in describe("line\nbreak")
    assert len(describe("x" * 1000)) < 100
