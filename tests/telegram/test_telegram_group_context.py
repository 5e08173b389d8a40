"""Route key ``group_context``: a group's messages not addressed to the bot are kept (per forum
topic, the newest N, in the store) and given with the next message the bot answers there, once
each — through the real Pyrogram client on the fake Telegram."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest

from tgmux import turns
from tgmux.backend import Backend, BackendSettings, ReplyPart, Text, Turn
from tgmux.hooks import hookimpl
from tgmux.types import ChatLine

GROUP = -4001234567
FORUM = -1001234567890
PLAIN = -4005550000  # a group whose route keeps no context

#: the group context of every turn the backend got, in order
TURNS: list[tuple[str, tuple[ChatLine, ...]]] = []


class ContextSettings(BackendSettings):
    type: Literal["context"] = "context"


class ContextBackend(Backend):
    """Answers the text, then the group context it got: ``TEXT | Anna: hi; Ben: yo``."""

    type_name = "context"
    Settings = ContextSettings

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        TURNS.append((turn.text, turn.group_context))
        said = "; ".join(f"{line.author}: {line.text}" for line in turn.group_context)
        yield Text(f"{turn.text} | {said or 'no context'}")


class Plugin:
    @hookimpl
    def tgmux_backend_types(self) -> list[type[Backend]]:
        return [ContextBackend]


PLUGINS = [Plugin()]

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
store: {url: "memory://", timeout: 0.5}
backends:
  ctx: {type: context}
access: {deny_users: [666]}
routes:
  - match: {chat_id: -4005550000}
    backend: ctx
  - match: {chat_type: [group, supergroup]}
    backend: ctx
    group_context: 3
default: ctx
"""


@pytest.fixture(autouse=True)
def _fresh() -> None:
    TURNS.clear()


async def quiet(bot, text: str, **fields) -> None:
    """A group message not addressed to the bot: nothing is sent for it."""
    reply = await bot.send(text, **fields)
    assert reply.actions == []


async def test_the_next_addressed_message_gets_the_unaddressed_ones_once(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    await quiet(bot, "the meeting moved to 5", user_id=7, first_name="Carol", chat_id=GROUP,
                message_id=30)
    await quiet(bot, "ok", user_id=8, first_name="Dan", chat_id=GROUP, message_id=31)
    await quiet(bot, "where?", user_id=7, first_name="Carol", chat_id=GROUP, message_id=32)
    reply = await bot.send("@tgmux_bot when is the meeting?", user_id=42, chat_id=GROUP,
                           message_id=33)
    assert reply.messages == [{
        "action": "send_message", "chat_id": GROUP, "message_id": 1001,
        "text": "when is the meeting? | Carol: the meeting moved to 5; Dan: ok; Carol: where?",
        "reply_to_message_id": 33}]
    lines = TURNS[0][1]
    assert [(li.author, li.text, li.user_id, li.message_id) for li in lines] == [
        ("Carol", "the meeting moved to 5", 7, 30), ("Dan", "ok", 8, 31),
        ("Carol", "where?", 7, 32)]
    assert all(li.at > 0 for li in lines)
    # each line is given once: the next addressed message has none
    again = await bot.send("@tgmux_bot and now?", user_id=42, chat_id=GROUP, message_id=34)
    assert again.text == "and now? | no context"


async def test_at_most_n_of_them_the_newest(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    for n in range(1, 6):
        await quiet(bot, f"line {n}", user_id=7, first_name="Carol", chat_id=GROUP)
    reply = await bot.send("@tgmux_bot sum up", user_id=42, chat_id=GROUP)
    assert reply.text == "sum up | Carol: line 3; Carol: line 4; Carol: line 5"


async def test_each_forum_topic_has_its_own_context(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    forum = {"chat_id": FORUM, "chat_type": "supergroup"}
    await quiet(bot, "topic A talk", user_id=7, first_name="Carol", thread_id=5, **forum)
    await quiet(bot, "topic B talk", user_id=8, first_name="Dan", thread_id=9, **forum)
    in_b = await bot.send("@tgmux_bot what's up in B?", user_id=42, thread_id=9, **forum)
    assert in_b.text == "what's up in B? | Dan: topic B talk"
    assert in_b.messages[0]["message_thread_id"] == 9
    in_a = await bot.send("@tgmux_bot and in A?", user_id=42, thread_id=5, **forum)
    assert in_a.text == "and in A? | Carol: topic A talk"


async def test_off_by_default_and_never_for_denied_users_or_private_chats(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    await quiet(bot, "not kept: the route has no group_context", user_id=9, chat_id=PLAIN)
    assert (await bot.send("@tgmux_bot hi", user_id=42, chat_id=PLAIN)).text == \
        "hi | no context"
    await quiet(bot, "spam", user_id=666, first_name="Mallory", chat_id=GROUP)
    await quiet(bot, "hello all", user_id=7, first_name="Carol", chat_id=GROUP)
    assert (await bot.send("hi", user_id=7)).text == "hi | no context"  # private: none
    reply = await bot.send("@tgmux_bot hi", user_id=42, chat_id=GROUP)
    assert reply.text == "hi | Carol: hello all"
    assert bot.engine.store.inner.context == {}  # nothing else was kept


async def test_kept_across_a_restart(tgmux_bot, tmp_path: Path):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, store=f"sqlite:///{tmp_path}/tgmux.db")
    await quiet(bot, "before the restart", user_id=7, first_name="Carol", chat_id=GROUP)
    await bot.restart()
    reply = await bot.send("@tgmux_bot what did Carol say?", user_id=42, chat_id=GROUP)
    assert reply.text == "what did Carol say? | Carol: before the restart"


async def test_a_long_message_is_kept_cut(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    await quiet(bot, "x" * 3000, user_id=7, first_name="Carol", chat_id=GROUP)
    await bot.send("@tgmux_bot hi", user_id=42, chat_id=GROUP)
    (line,) = TURNS[0][1]
    assert line.text == "x" * 999 + "…"


async def test_a_store_outage_loses_the_context_not_the_answer(tgmux_bot, caplog):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    inner = bot.engine.store.inner

    async def down(*args, **kwargs):
        raise ConnectionError("the database is gone")

    inner.context_add = down
    await quiet(bot, "lost", user_id=7, first_name="Carol", chat_id=GROUP)
    reply = await bot.send("@tgmux_bot still there?", user_id=42, chat_id=GROUP)
    assert reply.text == "still there? | no context"
    assert bot.engine.store.degraded is not None


async def test_a_store_that_hangs_delays_the_answer_by_its_timeout_at_most(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    inner = bot.engine.store.inner

    async def hang(*args, **kwargs):
        await asyncio.Event().wait()

    await quiet(bot, "kept", user_id=7, first_name="Carol", chat_id=GROUP)
    inner.context_take = hang
    reply = await bot.send("@tgmux_bot still there?", user_id=42, chat_id=GROUP)
    assert reply.text == "still there? | no context"
    assert "no answer within 0.5 s" in bot.engine.store.degraded  # asked, not waited for


async def test_lines_no_turn_took_are_pruned_with_the_inbox(tgmux_bot, monkeypatch):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    await quiet(bot, "old news", user_id=7, first_name="Carol", chat_id=GROUP)
    monkeypatch.setattr(turns, "CONTEXT_MAX_AGE", -60.0)  # everything is old now
    await bot.engine._prune()
    reply = await bot.send("@tgmux_bot news?", user_id=42, chat_id=GROUP)
    assert reply.text == "news? | no context"
