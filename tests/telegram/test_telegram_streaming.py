"""Streamed replies: drafts in private chats, a throttled edited message elsewhere, and always
the exact final text at the end."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Literal

import tg_test_backends

from tgmux.backend import Backend, BackendSettings, ReplyPart, Text, TextDelta, Turn
from tgmux.hooks import hookimpl
from tgmux.telegram.streaming import Pacing

PLUGINS = [tg_test_backends]
GROUP = -1001234567890
WORDS = "one two three four five six seven eight nine ten eleven twelve"

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
backends:
  drip: {type: drip, delay: 0.08}
  open_end: {type: drip, delay: 0.05, final: false}
  echo: {type: echo, stream: true}
routes:
  - match: {user_id: 50}
    backend: open_end
  - match: {user_id: 60}
    backend: echo
default: drip
"""


async def test_group_stream_edits_one_message_throttled_and_ends_exact(tgmux_bot, monkeypatch):
    # When each update was paced (stamped before it is sent): timed at Telegram, a stall
    # while one update is on its way shortens the gap to the next by as much.
    paced: list[float] = []
    mark_update = Pacing.mark_update

    def mark(self: Pacing, chat_id: int) -> None:
        if chat_id == GROUP:
            paced.append(time.monotonic())
        mark_update(self, chat_id)

    monkeypatch.setattr(Pacing, "mark_update", mark)
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.3)
    reply = await bot.send(f"@tgmux_bot {WORDS}", user_id=42, chat_id=GROUP)
    kinds = [a["action"] for a in reply.actions if a["action"] != "chat_action"]
    assert kinds[0] == "send_message" and set(kinds[1:]) == {"edit_message"}
    first = reply.messages[0]
    assert first["reply_to_message_id"] == reply.message_id
    assert WORDS.startswith(first["text"]) and first["text"] != WORDS
    edits = reply.of("edit_message")
    assert all(e["message_id"] == first["message_id"] for e in edits)
    assert all(WORDS.startswith(e["text"]) for e in edits)
    assert edits[-1]["text"] == WORDS  # the final text, exactly
    assert 1 <= len(edits) < len(WORDS.split()) - 1  # throttled: fewer updates than words
    assert len(paced) >= len(reply.messages) + len(edits)  # each one sent was paced
    gaps = [b - a for a, b in itertools.pairwise(paced)]
    assert min(gaps) >= 0.3 - 0.001  # never more often than the interval in one chat
    assert reply.texts == [WORDS]


async def test_private_stream_uses_drafts_then_sends_the_final_text(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.25)
    reply = await bot.send(WORDS, user_id=42)
    drafts = reply.of("send_draft")
    assert len(drafts) >= 2
    assert len({d["draft_id"] for d in drafts}) == 1  # one draft, animated
    assert all(WORDS.startswith(d["text"]) and d["text"] != WORDS for d in drafts)
    assert [len(d["text"]) for d in drafts] == sorted(len(d["text"]) for d in drafts)
    assert reply.of("edit_message") == []
    assert reply.messages == [{"action": "send_message", "chat_id": 42, "message_id": 1001,
                               "text": WORDS}]
    assert [a["action"] for a in reply.actions if a["action"] != "chat_action"][-1] == \
        "send_message"


async def test_a_stream_without_final_text_is_finalized_as_shown(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.2)
    private = await bot.send("alpha beta gamma delta", user_id=50)
    assert private.texts == ["alpha beta gamma delta"]
    assert private.messages[-1]["text"] == "alpha beta gamma delta"
    group = await bot.send("@tgmux_bot alpha beta gamma delta", user_id=50, chat_id=GROUP)
    assert group.texts == ["alpha beta gamma delta"]


async def test_a_fast_stream_is_sent_once(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send("quick brown fox", user_id=60)
    assert tg_test_backends.untimed(reply.actions) == [
        {"action": "send_message", "chat_id": 60, "message_id": 1001, "text": "quick brown fox"}]


class Shout:
    @hookimpl
    def tgmux_after_backend(self, turn, part):
        if isinstance(part, Text):
            return Text(part.text.upper())
        return None


async def test_a_plugin_changing_the_final_text_corrects_what_was_streamed(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=[*PLUGINS, Shout()], edit_interval=0.2)
    group = await bot.send(f"@tgmux_bot {WORDS}", user_id=42, chat_id=GROUP)
    assert group.texts == [WORDS.upper()]
    assert group.of("edit_message")[-1]["text"] == WORDS.upper()
    private = await bot.send(WORDS, user_id=42)
    assert private.messages[-1]["text"] == WORDS.upper()


async def test_a_long_stream_continues_in_new_messages_with_exact_chunks(tgmux_bot):
    config = CONFIG.replace("delay: 0.08", "delay: 0.002")
    bot = await tgmux_bot(config, plugins=PLUGINS, edit_interval=0.1)
    text = " ".join(["lorem ipsum dolor sit amet."] * 200)  # 5599 chars: two messages
    reply = await bot.send("@tgmux_bot repeat 200 lorem ipsum dolor sit amet.", user_id=42,
                           chat_id=GROUP, timeout=20)
    final = reply.texts
    assert len(final) == 2
    assert " ".join(final) == text
    assert all(len(t) <= 4096 for t in final)


async def test_message_not_modified_is_harmless(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.2)
    bot.telegram.fail("edit_message", "MESSAGE_NOT_MODIFIED", times=2)
    reply = await bot.send(f"@tgmux_bot {WORDS}", user_id=42, chat_id=GROUP)
    assert reply.texts == [WORDS]
    assert [r.error for r in bot.telegram.requests].count("MESSAGE_NOT_MODIFIED") == 2


async def test_drafts_refused_fall_back_to_editing(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.2)
    bot.telegram.fail("send_draft", "BOT_METHOD_INVALID")
    reply = await bot.send(WORDS, user_id=42)
    assert reply.of("send_draft") == []
    assert reply.of("edit_message")[-1]["text"] == WORDS
    assert reply.texts == [WORDS]
    # and drafts are not tried again
    again = await bot.send("a b c d e f", user_id=43)
    assert again.of("send_draft") == [] and again.texts == ["a b c d e f"]


async def test_drafts_lost_to_the_network_do_not_switch_drafts_off(tgmux_bot):
    """Drafts that got no answer (timeouts, after every retry) are not Telegram refusing
    drafts: the next update drafts again, and later replies still use drafts."""
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.1)

    async def no_wait(seconds: float) -> None:
        return None

    bot.app.frontend.sender._sleep = no_wait  # the Sender's own retry pauses (1, 2, 4 s)
    # the session's 10 attempts, and again for each of the Sender's 3 retries
    bot.telegram.fail("send_draft", "TIMEOUT", times=40)
    reply = await bot.send(WORDS, user_id=42)
    assert reply.messages == [{"action": "send_message", "chat_id": 42, "message_id": 1001,
                               "text": WORDS}]
    assert reply.of("send_draft") and not reply.of("edit_message")
    assert bot.app.frontend.drafts_supported is True
    again = await bot.send("a b c d e f", user_id=43)
    assert again.of("send_draft") and again.texts == ["a b c d e f"]


# -- drafts as Telegram's apps show them -------------------------------------------------------
# The apps drop a draft after ~30 s without an update, and let the final message replace it only
# when the message's text starts with the draft's.


class PauseSettings(BackendSettings):
    type: Literal["pause"] = "pause"


class PauseBackend(Backend):
    """Streams "thinking it over", then pauses until the test lets it go on (a model that
    goes quiet for long), then streams the rest."""

    type_name = "pause"
    Settings = PauseSettings
    resume: asyncio.Event | None = None

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        yield TextDelta("thinking it over")
        assert self.resume is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):  # without a keepalive the test fails after this
                await self.resume.wait()
        yield TextDelta(", done")
        yield Text("thinking it over, done")


class Pausing:
    @hookimpl
    def tgmux_backend_types(self) -> list[type[Backend]]:
        return [PauseBackend]


PAUSE_CONFIG = CONFIG.replace("  echo: {type: echo, stream: true}\n",
                              "  echo: {type: echo, stream: true}\n  pause: {type: pause}\n") \
    .replace("default: drip", "  - match: {user_id: 70}\n    backend: pause\ndefault: drip")


def assert_final_replaces_the_draft(reply):
    """The draft shown last is the start of the message sent after it."""
    actions = [a for a in reply.actions if a["action"] in ("send_draft", "send_message")]
    for before, after in itertools.pairwise(actions):
        if before["action"] == "send_draft" and after["action"] == "send_message":
            assert after["text"].startswith(before["text"]), (before, after)


async def test_a_draft_is_kept_alive_through_a_long_pause(tgmux_bot):
    bot = await tgmux_bot(PAUSE_CONFIG, plugins=[*PLUGINS, Pausing()], edit_interval=0.1)
    bot.app.frontend.draft_keepalive = 0.3  # Telegram's apps: ~30 s; tgmux: every 20 s
    PauseBackend.resume = resume = asyncio.Event()
    fake = bot.telegram

    def on_action(action):
        drafts = [a for a in fake.actions if a["action"] == "send_draft"
                  and a["text"] == "thinking it over"]
        if len(drafts) >= 3:  # shown, then refreshed twice with nothing new to show
            resume.set()

    fake.listeners.append(on_action)
    reply = await bot.send("hello", user_id=70)
    drafts = reply.of("send_draft")
    quiet = [d for d in drafts if d["text"] == "thinking it over"]
    assert len(quiet) >= 3, drafts
    assert len({d["draft_id"] for d in drafts}) == 1  # the same draft, refreshed
    assert reply.messages == [{"action": "send_message", "chat_id": 70, "message_id": 1001,
                               "text": "thinking it over, done"}]
    assert_final_replaces_the_draft(reply)
    # refreshes are paced: never closer than the keepalive
    index = {id(a): i for i, a in enumerate(fake.actions)}
    times = [fake.action_times[index[id(d)]] for d in quiet]
    assert all(b - a >= 0.3 * 0.95 for a, b in itertools.pairwise(times))


async def test_a_final_text_changed_at_the_start_is_drafted_before_it_is_sent(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=[*PLUGINS, Shout()], edit_interval=0.2)
    reply = await bot.send(WORDS, user_id=42)
    drafts = reply.of("send_draft")
    assert drafts[0]["text"] != drafts[0]["text"].upper()  # streamed as the backend said it
    assert reply.messages == [{"action": "send_message", "chat_id": 42, "message_id": 1001,
                               "text": WORDS.upper()}]
    # the draft the apps show last is the final text's start: the message replaces it
    assert drafts[-1]["text"] == WORDS.upper()
    assert len({d["draft_id"] for d in drafts}) == 1
    assert_final_replaces_the_draft(reply)


async def test_an_unchanged_final_text_needs_no_extra_draft(tgmux_bot):
    # one streamed draft (the first words), none after it for 30 s: with 0.2 s, a stall near
    # the end let a streamed draft show the whole text, as an extra one would
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=30)
    reply = await bot.send(WORDS, user_id=42)
    assert all(d["text"] != WORDS for d in reply.of("send_draft"))
    assert_final_replaces_the_draft(reply)


async def test_a_flood_wait_on_a_draft_refresh_holds_the_refreshes(tgmux_bot):
    bot = await tgmux_bot(PAUSE_CONFIG, plugins=[*PLUGINS, Pausing()], edit_interval=0.1)
    bot.app.frontend.draft_keepalive = 0.2
    PauseBackend.resume = resume = asyncio.Event()
    fake = bot.telegram

    def on_action(action):
        if action["action"] != "send_draft":
            return
        shown = [a for a in fake.actions if a["action"] == "send_draft"]
        if len(shown) == 1:  # the first refresh is refused: wait 1 s
            fake.fail("send_draft", "FLOOD_WAIT_1")
        elif len(shown) == 2:
            resume.set()

    fake.listeners.append(on_action)
    reply = await bot.send("hello", user_id=70)
    drafts = [r for r in fake.requests if r.name == "messages.SetTyping"
              and type(r.query.action).__name__ == "SendMessageTextDraftAction"]
    assert [r.error for r in drafts[:3]] == [None, "FLOOD_WAIT_1", None]
    assert drafts[2].at - drafts[1].at >= 1.0 * 0.95  # Telegram's wait, kept
    assert reply.texts == ["thinking it over, done"]
