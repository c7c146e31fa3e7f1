"""Unmasking client frames (notifications/masking.py): the same bytes as autobahn's masker, in every chunking."""

from __future__ import annotations

import os
import random

import pytest
from autobahn.websocket import protocol
from autobahn.websocket.xormasker import create_xor_masker as library_masker

from harness.clients import open_client, receive, register_confirmed, send_once
from harness.servers import Daphne
from notifications import masking
from notifications.masking import SMALL_FRAME, SmallFrameUnmasker


def chunked(masker: object, data: bytes, cuts: list[int]) -> bytes:
    bounds = [0, *cuts, len(data)]
    return b"".join(masker.process(data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 70, 127, 128, 129, 1000, SMALL_FRAME - 1])
def test_a_small_frame_is_unmasked_as_autobahns_masker_does_it_however_its_bytes_arrive(size: int) -> None:
    rng = random.Random(size)
    for _ in range(40):
        mask, payload = os.urandom(4), os.urandom(size)
        cuts = sorted(rng.randrange(size + 1) for _ in range(rng.randrange(4)))
        ours, theirs = SmallFrameUnmasker(mask), library_masker(mask, size)
        assert chunked(ours, payload, cuts) == chunked(theirs, payload, cuts)
        assert ours.pointer() == theirs.pointer() == size
        # Masking twice gives the payload back (RFC 6455, 5.3).
        ours.reset()
        assert ours.pointer() == 0
        assert SmallFrameUnmasker(mask).process(ours.process(payload)) == payload


def test_autobahn_still_makes_each_frames_masker_through_the_name_install_replaces() -> None:
    # install() swaps this module-level name: if autobahn stops calling it for the frames it reads, or
    # renames it, the app's masker is silently bypassed (or breaks) and this fails first.
    assert callable(protocol.create_xor_masker)
    assert "create_xor_masker" in protocol.WebSocketProtocol.processData.__code__.co_names


def test_installed_small_frames_get_the_apps_masker_and_large_ones_autobahns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "create_xor_masker", protocol.create_xor_masker)  # restored afterwards
    monkeypatch.setattr(masking, "_library_factory", None)
    masking.install()
    masking.install()  # twice: still autobahn's factory behind it, not the app's own
    assert protocol.create_xor_masker is masking.create_xor_masker
    assert masking._library_factory is library_masker
    assert isinstance(protocol.create_xor_masker(b"abcd", 70), SmallFrameUnmasker)
    large = protocol.create_xor_masker(b"abcd", SMALL_FRAME)
    assert not isinstance(large, SmallFrameUnmasker)
    payload = os.urandom(SMALL_FRAME)
    assert large.process(payload) == library_masker(b"abcd", SMALL_FRAME).process(payload)


@pytest.mark.parametrize("size", [10, SMALL_FRAME - 200, 3 * SMALL_FRAME])
async def test_a_server_started_by_bin_daphne_relays_small_and_large_frames_intact(daphne: Daphne, size: int) -> None:
    text = "".join(random.Random(size).choice("abcdéf€😀") for _ in range(size))
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "masked")
    await send_once(daphne.url, "masked", text)
    assert await receive(ws) == text
    await ws.close()
