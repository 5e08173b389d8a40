"""Issue 14, Telegram path: the fake Telegram's flood model (FLOOD_WAIT_X when a limit is
exceeded), tgmux staying under it in a burst, streamed finals at once in private chats, and
typing actions only while something is being typed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Literal

from tgmux.backend import Backend, BackendSettings, ReplyPart, Text, TextDelta, Turn
from tgmux.hooks import hookimpl
from tgmux.telegram.fake import FloodModel
from tgmux.telegram.sender import FloodControl
from tgmux.testing import TgmuxBot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the model ---------------------------------------------------------------------------------


def test_over_thirty_messages_a_second_overall_is_refused_and_not_counted():
    clock = Clock()
    model = FloodModel(clock=clock)
    assert [model.admit(1000 + i) for i in range(30)] == [0] * 30
    assert model.admit(2000) == 1  # the 31st in the same second: FLOOD_WAIT_1
    clock.now += 0.5
    assert model.admit(2001) == 1  # still inside that second (refusals did not count)
    clock.now += 0.5
    assert model.admit(2002) == 0
    assert model.refused == 2


def test_a_private_chat_allows_a_short_burst_then_one_a_second():
    clock = Clock()
    model = FloodModel(clock=clock)
    assert [model.admit(42) for _ in range(4)] == [0, 0, 0, 1]  # bursts of 3
    assert model.admit(43) == 0  # another chat is not slowed
    clock.now += 1.0
    assert model.admit(42) == 0
    assert model.admit(42) == 1
    clock.now += 10.0  # quiet for long: the burst is back, no more
    assert [model.admit(42) for _ in range(4)] == [0, 0, 0, 1]


def test_twenty_messages_a_minute_in_a_group():
    clock = Clock()
    model = FloodModel(clock=clock)
    group = -1001234567890
    for _ in range(20):
        assert model.admit(group) == 0
        clock.now += 1.0
    wait = model.admit(group)
    assert 30 <= wait <= 41  # the minute since the first one
    clock.now += wait
    assert model.admit(group) == 0


# -- through tgmux ---------------------------------------------------------------------------------

ECHO = """
telegram:
  flood: {private_per_second: 100}
backends:
  echo: {type: echo}
default: echo
"""


async def test_the_fake_answers_flood_wait_and_tgmux_waits_it_out():
    """tgmux set to 100 messages/s per private chat, Telegram's 1/s (bursts of 3) enforced: a
    four-message reply gets FLOOD_WAIT on its fourth message; tgmux waits it out and the
    reply arrives whole, in order."""
    # Telegram's clock stands still until it first refuses, then runs: the fourth message
    # is refused however slowly a loaded machine sends the four (a stall of a second between
    # them refilled the bucket: nothing was refused)
    model = FloodModel()
    held_at, released_at = time.monotonic(), []
    model.clock = lambda: held_at + (time.monotonic() - released_at[0] if released_at else 0)
    admit = model.admit

    def admit_once_refused(chat_id: int) -> int:
        wait = admit(chat_id)
        if wait and not released_at:
            released_at.append(time.monotonic())
        return wait

    model.admit = admit_once_refused  # type: ignore[method-assign]
    bot = TgmuxBot(ECHO, strict_flood=False)
    bot.telegram.flood = model
    async with bot:
        text = " ".join(f"w{i}" for i in range(2500))  # ~14 000 characters: 4 messages
        reply = await bot.send(text, user_id=42, timeout=20)
        assert len(reply.messages) == 4
        assert " ".join(reply.texts) == text
        refused = [r for r in bot.telegram.requests if r.error == "FLOOD_WAIT_1"]
        assert refused and all(r.name == "messages.SendMessage" for r in refused)
        times = [t for a, t in zip(bot.actions, bot.telegram.action_times, strict=True)
                 if a["action"] == "send_message"]
        assert times[3] - refused[0].at >= 0.99  # nothing went before the wait was over


BURST = """
backends:
  echo: {type: echo}
default: echo
"""


async def test_a_burst_over_many_chats_gets_no_flood_wait_and_uses_the_budget():
    """120 replies over 40 private chats at once, Telegram's limits (30/s) enforced: none
    refused, about the whole overall budget used, and no "typing…" for replies that only
    wait for their send slot (the full 10 000 over 500 chats: bench/bench_telegram.py)."""
    stalled = 0.0  # seconds this process did not get to run (a loaded machine): no budget

    async def watch_stalls() -> None:
        nonlocal stalled
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            late = time.monotonic() - before - 0.01
            if late > 0.05:
                stalled += late

    bot = TgmuxBot(BURST)
    async with bot:
        assert bot.telegram.flood is not None  # on by default in tgmux.testing
        watching = asyncio.create_task(watch_stalls())
        sent = [await bot.send_nowait(f"m{n}", user_id=7000 + n % 40) for n in range(120)]
        replies = await asyncio.gather(*(s.reply(timeout=30) for s in sent))
        watching.cancel()
        assert [r.text for r in replies] == [f"m{n}" for n in range(120)]
        floods = [r for r in bot.telegram.requests if (r.error or "").startswith("FLOOD")]
        assert floods == []
        times = sorted(t for a, t in zip(bot.actions, bot.telegram.action_times, strict=True)
                       if a["action"] == "send_message")
        budget = 30 * max(0.0, times[-1] - times[0] - stalled) + 30
        assert len(times) / budget >= 0.9
        assert not [a for a in bot.actions if a["action"] == "chat_action"]


# -- streamed finals -------------------------------------------------------------------------------


class TokensSettings(BackendSettings):
    type: Literal["tokens"] = "tokens"


class TokensBackend(Backend):
    """Streams ten tokens 60 ms apart, then the final text at once; notes the last token."""

    type_name = "tokens"
    Settings = TokensSettings
    last_token_at: float = 0.0

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        for i in range(10):
            await asyncio.sleep(0.06)
            yield TextDelta(f"t{i} ")
        TokensBackend.last_token_at = time.monotonic()
        yield Text("the final text")


class TokensPlugin:
    @hookimpl
    def tgmux_backend_types(self) -> list[type[Backend]]:
        return [TokensBackend]


STREAM = """
backends:
  tokens: {type: tokens}
default: tokens
"""


async def test_a_private_chat_final_arrives_at_once_after_the_last_token(tgmux_bot,
                                                                          monkeypatch):
    """Drafts are not messages: the final message goes at once after the last token (it used
    to wait for the draft interval and the chat's 1/s slot: ~0.5-1 s), and the drafts keep to
    the edit interval: over 0.6 s of tokens, one draft (and one of the final text, which does
    not start with it), then the message. The interval is 30 s and the chat's slot is checked
    by who took it, not by the clock: a stalled process must not add a draft or a delay."""
    chat_slots: list[int | None] = []
    take_chat_slot = FloodControl.acquire

    async def acquire(self: FloodControl, chat_id: int | None) -> None:
        chat_slots.append(chat_id)
        await take_chat_slot(self, chat_id)

    monkeypatch.setattr(FloodControl, "acquire", acquire)
    bot = await tgmux_bot(STREAM, plugins=[TokensPlugin()], edit_interval=30)
    for user in (42, 43):
        reply = await bot.send("hi", user_id=user)
        assert reply.texts == ["the final text"]
        sent = reply.of("send_message")
        assert len(sent) == 1 and sent[0]["text"] == "the final text"
        # 0.6 s of tokens: the first draft only; the final text does not start with it, so a
        # draft of the final text comes first (Telegram's apps let the message replace a
        # draft only when it starts with the draft's text)
        drafts = reply.of("send_draft")
        assert [d["text"] for d in drafts] == ["t0", "the final text"]
        assert [a["action"] for a in reply.actions if a["action"] != "chat_action"] == [
            "send_draft", "send_draft", "send_message"]
        sent_at = bot.telegram.action_times[bot.actions.index(sent[0])]
        assert sent_at - TokensBackend.last_token_at < 10  # not the 30 s interval
        assert chat_slots.count(user) == 1  # the message's: the drafts took none


# -- typing actions --------------------------------------------------------------------------------

SLOW = """
telegram:
  flood: {private_per_second: 100}
backends:
  slow: {type: slow, delay: 0.6}
default: slow
"""


async def test_at_most_one_typing_action_per_chat_per_interval(tgmux_bot):
    import tg_test_backends

    tg_test_backends.HELD.clear()
    bot = await tgmux_bot(SLOW, plugins=[tg_test_backends], typing_interval=30.0)
    # three replies, one after the other, each past the 0.4 s grace (the first held until
    # its "typing…" is shown: a stalled machine could send it first), well within the 30 s
    # interval: one "typing…" (it used to be one per reply)
    sent = [await bot.send_nowait(text, user_id=42) for text in ("hold first", "m1", "m2")]
    await bot.wait_for(action="chat_action", chat_id=42, timeout=30)
    tg_test_backends.let_go("first")
    for s in sent:
        await s.reply(timeout=30)
    assert len([a for a in bot.actions if a["action"] == "chat_action"]) == 1
    other = await bot.send_nowait("hold other", user_id=43)  # another chat has its own
    await bot.wait_for(action="chat_action", chat_id=43, timeout=30)
    tg_test_backends.let_go("other")
    reply = await other.reply(timeout=30)
    assert [a["chat_action"] for a in reply.of("chat_action")] == ["typing"]


QUEUED = """
telegram:
  flood: {global_per_second: 1}
backends:
  echo: {type: echo}
default: echo
"""


async def test_no_typing_action_for_a_reply_only_waiting_for_its_send_slot(tgmux_bot):
    """One message a second overall: four instant replies to four chats, the last ones wait
    up to 3 s for their slot; nothing is being typed, so no "typing…" (it used to be sent
    for each after 0.4 s)."""
    bot = await tgmux_bot(QUEUED)
    started = time.monotonic()
    sent = [await bot.send_nowait(f"m{i}", user_id=100 + i) for i in range(4)]
    replies = await asyncio.gather(*(s.reply() for s in sent))
    assert [r.text for r in replies] == ["m0", "m1", "m2", "m3"]
    assert time.monotonic() - started >= 2.9  # they did wait for their slots
    assert not [a for a in bot.actions if a["action"] == "chat_action"]
