"""Sensay streamed replies end to end: simulator → backend → engine → real Pyrogram client →
offline Telegram, for every stream flavor, in a private chat (drafts) and a group (edits)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tgmux.backends.sensay.simulator import Replica, SensaySimulator

SECRET = "org-secret"
REPLICAS = {
    "data": "11111111-1111-4111-8111-111111111111",
    "ui": "22222222-2222-4222-8222-222222222222",
    "text": "33333333-3333-4333-8333-333333333333",
}

CONFIG = """
telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}
backends:
  replica:
    type: sensay
    organization_secret: %(secret)s
    user_id: "tg_{user_id}"
    replica_uuid: %(replica)s
    base_url: %(url)s
default: replica
"""


@pytest.fixture
async def sim() -> AsyncIterator[SensaySimulator]:
    replicas = [Replica(uuid, name.upper(), flavor=name) for name, uuid in REPLICAS.items()]
    # Tokens 20 ms apart: long enough for several streamed updates per reply.
    async with SensaySimulator(organization_secret=SECRET, replicas=replicas, chunk_size=6,
                               chunk_delay=0.02) as server:
        yield server  # type: ignore[misc]


@pytest.mark.parametrize("flavor", sorted(REPLICAS))
async def test_every_stream_flavor_reaches_telegram_with_the_exact_final_text(
        tgmux_bot, sim: SensaySimulator, flavor: str) -> None:
    config = CONFIG % {"secret": SECRET, "replica": REPLICAS[flavor], "url": sim.base_url}
    bot = await tgmux_bot(config, edit_interval=0.05)
    question = "How did you handle the pressure? Tell me everything, in detail please."
    expected = f"[{flavor.upper()}] {question} (history: 0)"

    private = await bot.send(question, user_id=42)
    drafts = private.of("send_draft")
    assert len(drafts) >= 2  # it streamed as drafts...
    assert all(expected.startswith(d["text"]) for d in drafts)  # ...each a prefix of the reply
    assert private.messages == [
        {"action": "send_message", "chat_id": 42, "message_id": 1001, "text": expected}
    ]

    group = await bot.send(f"@tgmux_bot {question}", user_id=43, chat_id=-1001234567890,
                           message_id=70)
    (sent,) = group.of("send_message")
    assert sent["reply_to_message_id"] == 70
    assert expected.startswith(sent["text"]) and sent["text"] != expected  # a first chunk
    edits = group.of("edit_message")
    assert edits and edits[-1]["text"] == f"[{flavor.upper()}] {question} (history: 0)"
    assert group.texts == [expected]  # what the group finally reads
