"""``Media``: bytes in hand or fetched by reference, once; what the inbox keeps of it."""

from __future__ import annotations

import asyncio

import pytest

from tgmux.types import ChatIdentity, IncomingMessage, Media, MediaRef, MediaUnavailable

REF = MediaRef(file_id="AgACAg", account="second", chat_id=5, message_id=9, size=3)


async def test_bytes_in_hand_are_read_without_a_fetch() -> None:
    assert await Media("photo", data=b"abc").read() == b"abc"
    assert Media("photo", data=b"abc").readable
    assert not Media("photo").readable and not Media("photo", ref=REF).readable


async def test_a_reference_is_fetched_once_even_by_readers_at_once() -> None:
    calls: list[MediaRef] = []

    async def fetch(ref: MediaRef) -> bytes:
        calls.append(ref)
        await asyncio.sleep(0.01)
        return b"abc"

    media = Media("photo", ref=REF, fetch=fetch)
    assert media.readable
    assert await asyncio.gather(media.read(), media.read()) == [b"abc", b"abc"]
    assert await media.read() == b"abc"
    assert calls == [REF]


async def test_a_failed_fetch_is_said_again_not_tried_again() -> None:
    calls = 0

    async def fetch(ref: MediaRef) -> bytes:
        nonlocal calls
        calls += 1
        raise MediaUnavailable("expired", user_message="gone")

    media = Media("voice", ref=REF, fetch=fetch)
    for _ in range(2):
        with pytest.raises(MediaUnavailable) as caught:
            await media.read()
        assert caught.value.user_message == "gone"
    assert calls == 1


async def test_no_bytes_and_no_way_to_fetch_them() -> None:
    with pytest.raises(MediaUnavailable) as caught:
        await Media("photo", ref=REF).read()
    assert "Please send it again" in caught.value.user_message


async def test_the_payload_keeps_the_reference_and_not_the_bytes() -> None:
    async def fetch(ref: MediaRef) -> bytes:
        return b"fetched"

    message = IncomingMessage(ChatIdentity("private", 5, 5, account="second"), "look",
                              Media("photo", data=b"abc", mime_type="image/jpeg", ref=REF,
                                    fetch=fetch))
    payload = message.to_payload()
    assert payload["media"] == {"kind": "photo", "url": None, "mime_type": "image/jpeg",
                                "emoji": None, "ref": {"file_id": "AgACAg", "account": "second",
                                                       "chat_id": 5, "message_id": 9,
                                                       "size": 3}}
    again = IncomingMessage.from_payload(payload, fetch)
    assert again == IncomingMessage(message.chat, "look",
                                    Media("photo", mime_type="image/jpeg", ref=REF),
                                    received_at=message.received_at)
    assert await again.media.read() == b"fetched"


async def test_a_payload_from_before_references_still_loads() -> None:
    async def fetch(ref: MediaRef) -> bytes:
        raise AssertionError("nothing to fetch")

    old = {"chat": {"chat_type": "private", "chat_id": 5, "user_id": 5}, "text": "",
           "media": {"kind": "sticker", "url": None, "mime_type": "image/webp", "emoji": "🙂"},
           "addressed": True, "received_at": 1.0}
    message = IncomingMessage.from_payload(old, fetch)
    assert message.media == Media("sticker", mime_type="image/webp", emoji="🙂")
    assert message.media.fetch is None and not message.media.readable
    with pytest.raises(MediaUnavailable):
        await message.media.read()
