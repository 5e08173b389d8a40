"""Media fetched when a backend reads it (``await turn.media.read()``), not when it arrives:
nothing is downloaded for a backend that takes no such kind or is not asked; a failed fetch
is one clear line to the user and says nothing of the backend; the size cap holds."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import tg_test_backends

from tgmux.telegram.media import EXPIRED, TOO_LARGE
from tgmux.types import IncomingMessage, MediaRef, MediaUnavailable

PLUGINS = [tg_test_backends]
GROUP = -4001234567

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
backends:
  echo: {type: echo, prefix: "echo: "}
  media: {type: media}
routes:
  - match: {user_id: 77}
    backend: media
default: echo
"""

PHOTO = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def downloads(bot) -> int:
    return sum(1 for r in bot.telegram.requests if r.name == "upload.GetFile")


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(PHOTO)
    return path


async def test_the_backend_reads_the_exact_bytes_fetched_once(tgmux_bot, photo):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send("sha256", user_id=77, photo=str(photo))
    assert reply.text == f"got photo sha256 {hashlib.sha256(PHOTO).hexdigest()}"
    assert downloads(bot) == 1  # one chunk (under 1 MB), one request


async def test_nothing_is_downloaded_for_a_backend_that_does_not_read_it(tgmux_bot, photo):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    # echo takes no photos: a polite line, and no download
    refused = await bot.send("look", user_id=42, photo=str(photo))
    assert refused.text.startswith("I can only read text messages")
    # the media backend takes photos, but is not asked in a group without a mention
    unasked = await bot.send("", user_id=77, chat_id=GROUP, photo=str(photo))
    assert unasked.actions == []
    assert downloads(bot) == 0
    # ...and when it is asked, it is fetched (the count above could be non-zero)
    asked = await bot.send("@tgmux_bot look", user_id=77, chat_id=GROUP, photo=str(photo))
    assert asked.text == f"got photo ({len(PHOTO)} bytes) look"
    assert downloads(bot) == 1


async def test_an_expired_file_reference_is_renewed_from_the_message(tgmux_bot, photo):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("upload.GetFile", "FILE_REFERENCE_EXPIRED", times=1)
    reply = await bot.send("sha256", user_id=77, photo=str(photo))
    assert reply.text == f"got photo sha256 {hashlib.sha256(PHOTO).hexdigest()}"
    names = [r.name for r in bot.telegram.requests]
    assert names.count("upload.GetFile") == 2 and "messages.GetMessages" in names


async def test_a_file_telegram_no_longer_has_is_one_clear_line(tgmux_bot, photo):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("upload.GetFile", "FILE_REFERENCE_EXPIRED", times=None)
    reply = await bot.send("look", user_id=77, photo=str(photo))
    assert reply.texts == [EXPIRED]
    # the provider did nothing wrong: its circuit counts nothing
    circuit = bot.engine.circuits["media"]
    assert circuit.failed_in_a_row == 0 and circuit.state == "closed"
    assert not circuit._probing


async def test_a_file_over_the_cap_is_not_downloaded(tgmux_bot, photo):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    refs: list[MediaRef] = []
    bot.app.seen_listeners.append(
        lambda message, incoming: refs.append(incoming.media.ref) if incoming else None)
    media = bot.app.first.media
    media.max_bytes = len(PHOTO) - 1
    reply = await bot.send("look", user_id=77, photo=str(photo))
    assert reply.texts == [TOO_LARGE]
    assert downloads(bot) == 0  # Telegram said its size: not even asked for
    # a size Telegram did not say: the bytes are counted as they come, and the cap holds
    media.max_bytes = 1000
    with pytest.raises(MediaUnavailable) as caught:
        await media.fetch(dataclasses.replace(refs[0], size=None))
    assert caught.value.user_message == TOO_LARGE
    media.max_bytes = len(PHOTO)
    assert await media.fetch(dataclasses.replace(refs[0], size=None)) == PHOTO


async def test_the_inbox_keeps_the_reference_not_the_bytes(tgmux_bot, photo):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    seen: list[IncomingMessage] = []
    bot.app.seen_listeners.append(lambda message, incoming: seen.append(incoming))
    await bot.send("look", user_id=77, photo=str(photo))
    payload = seen[0].to_payload()
    ref = payload["media"]["ref"]
    assert "data" not in payload["media"]
    assert ref["account"] == "main" and ref["chat_id"] == 77 and ref["size"] == len(PHOTO)
    # fetched again from the payload alone, through the engine's frontend (as after a restart)
    again = IncomingMessage.from_payload(payload, bot.engine.frontend.fetch_media)
    assert again.media.ref == seen[0].media.ref
    assert await again.media.read() == PHOTO
    # without a way to fetch it, one clear error
    with pytest.raises(MediaUnavailable):
        await IncomingMessage.from_payload(payload).media.read()
