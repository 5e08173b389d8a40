"""What the user wrote, as tgmux reads it from Telegram: the user's formatting (entities) and
the message a message replies to (its text, author, the quoted part), through the real
Pyrogram client on the offline Telegram."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from typing import Any

import pytest

from tgmux.hooks import hookimpl
from tgmux.telegram.fake import HANG
from tgmux.telegram.simulate import parse_input_line
from tgmux.types import Entity, IncomingMessage, RepliedTo

GROUP = -4001234567
FORUM = -1001234567890

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
backends:
  echo: {type: echo, prefix: "echo: "}
routes:
  - match: {chat_id: -4009999999}
    backend: echo
    group_trigger: always
default: echo
"""


async def wait_until(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (the fake's requests have no event)
            await asyncio.sleep(0.01)


class Seen:
    """Every message tgmux_pre_route is shown."""

    def __init__(self) -> None:
        self.messages: list[IncomingMessage] = []

    @hookimpl
    def tgmux_pre_route(self, message: IncomingMessage, engine: Any, triggered: bool) -> None:
        self.messages.append(message)


@pytest.fixture
async def bot(tgmux_bot: Any) -> Any:
    seen = Seen()
    bot = await tgmux_bot(CONFIG, plugins=[seen])
    bot.seen = seen.messages
    return bot


async def test_the_users_entities_reach_the_message_on_the_stripped_text(bot: Any) -> None:
    # "👋 " is two UTF-16 units: offsets count them; the stripped mention moves the rest
    await bot.send("@tgmux_bot 👋 see docs and run x", user_id=42, chat_id=GROUP,
                   entities=[{"type": "text_link", "offset": 18, "length": 4,
                              "url": "https://example.com/docs"},
                             {"type": "code", "offset": 31, "length": 1},
                             {"type": "bold", "offset": 14, "length": 3}])
    message = bot.seen[-1]
    assert message.text == "👋 see docs and run x"
    assert message.entities == (
        Entity("bold", 3, 3), Entity("text_link", 7, 4, url="https://example.com/docs"),
        Entity("code", 20, 1))


async def test_a_reply_to_the_bots_message_and_to_a_users_with_a_quote(bot: Any) -> None:
    first = await bot.send("hello", user_id=42, username="ann", first_name="Ann")
    bot_id = first.messages[0]["message_id"]
    await bot.send("what do you mean?", user_id=42, reply_to_message_id=bot_id)
    assert bot.seen[-1].reply_to == RepliedTo(text="echo: hello", author="tgmux",
                                              from_bot=True, message_id=bot_id)
    # in a group: a reply to another user's message, quoting part of it (not addressed)
    anna = await bot.send("the meeting is at noon, room 4", user_id=43, first_name="Anna",
                          chat_id=GROUP)
    answer = await bot.send("@tgmux_bot is that right?", user_id=42, chat_id=GROUP,
                            reply_to_message_id=anna.message_id, quote="room 4")
    assert answer.text == "echo: is that right?"
    assert bot.seen[-1].reply_to == RepliedTo(text="the meeting is at noon, room 4",
                                              author="Anna", quote="room 4",
                                              message_id=anna.message_id)
    assert bot.seen[-1].addressed


async def test_a_message_in_a_topic_does_not_reply_to_the_topics_root(bot: Any) -> None:
    await bot.send("@tgmux_bot hi", user_id=42, chat_id=FORUM, chat_type="supergroup",
                   thread_id=5, message_id=17)
    assert bot.seen[-1].reply_to is None
    await bot.send("@tgmux_bot again", user_id=42, chat_id=FORUM, thread_id=5,
                   reply_to_message_id=17)
    assert bot.seen[-1].reply_to is not None and bot.seen[-1].reply_to.text == "@tgmux_bot hi"


async def test_a_reply_whose_message_cannot_be_fetched_is_answered_without_it(
        bot: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tgmux.telegram")
    first = await bot.send("hello", user_id=42)
    bot.telegram.fail("messages.GetMessages", "FLOOD_WAIT_30")
    reply = await bot.send("and?", user_id=42, reply_to_message_id=first.messages[0]["message_id"])
    assert reply.text == "echo: and?"
    assert bot.seen[-1].reply_to is None
    assert "the message it replies to could not be fetched" in caplog.text


async def test_a_slow_fetch_of_a_replied_to_message_holds_its_chat_only(
        bot: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replied-to message is fetched in the chat's own queue, not in the account's one
    update handler: while Telegram is slow to answer it, other chats are answered; the
    chat's own later message waits its turn."""
    monkeypatch.setattr(sys.modules["tgmux.telegram.normalize"], "REPLY_FETCH_TIMEOUT", 60.0)
    anna = await bot.send("pizza or pasta?", user_id=43, first_name="Anna", chat_id=GROUP)
    await bot.restart()  # the client no longer has it: it asks Telegram, which hangs
    bot.telegram.fail("messages.GetMessages", HANG)
    asked = await bot.send_nowait("@tgmux_bot which one?", user_id=42, chat_id=GROUP,
                                  reply_to_message_id=anna.message_id)
    await wait_until(lambda: any(r.name == "messages.GetMessages" and r.error == HANG
                                 for r in bot.telegram.requests))
    after = await bot.send_nowait("@tgmux_bot and then?", user_id=42, chat_id=GROUP)
    elsewhere = await bot.send("hi", user_id=44)  # another chat: not held
    assert elsewhere.text == "echo: hi"
    assert bot.texts(GROUP) == []  # the held chat: nothing yet
    bot.telegram.release_hangs()
    assert (await asked.reply()).text == "echo: which one?"
    assert (await after.reply()).text == "echo: and then?"
    answered = [m for m in bot.seen if m.chat.chat_id == GROUP]
    assert [m.text for m in answered[-2:]] == ["which one?", "and then?"]  # in order
    assert answered[-2].reply_to == RepliedTo(text="pizza or pasta?", author="Anna",
                                              message_id=anna.message_id)


async def test_a_reply_whose_context_cannot_be_made_is_answered_and_its_chat_goes_on(
        bot: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    app = sys.modules["tgmux.telegram.app"]
    real = app.with_replied_to

    async def broken(client: Any, message: Any, incoming: IncomingMessage, *args: Any,
                     **kwargs: Any) -> IncomingMessage:
        if incoming.text == "boom":
            raise RuntimeError("a bug while making the context")
        return await real(client, message, incoming, *args, **kwargs)

    monkeypatch.setattr(app, "with_replied_to", broken)
    first = await bot.send("hello", user_id=42)
    replied = first.messages[0]["message_id"]
    assert (await bot.send("boom", user_id=42, reply_to_message_id=replied)).text == \
        "echo: boom"
    assert "preparing it failed; it goes on as it is" in caplog.text
    after = await bot.send("and?", user_id=42, reply_to_message_id=replied)
    assert after.text == "echo: and?"  # the chat's queue goes on
    assert bot.seen[-1].reply_to is not None


async def test_a_stop_does_not_wait_for_a_slow_fetch_of_a_replied_to_message(
        bot: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping, a message whose replied-to message Telegram is slow to give goes to the
    engine without it (it was given up once the flush's grace ran out: lost)."""
    monkeypatch.setattr(sys.modules["tgmux.telegram.normalize"], "REPLY_FETCH_TIMEOUT", 600.0)
    anna = await bot.send("pizza or pasta?", user_id=43, first_name="Anna", chat_id=GROUP)
    await bot.restart()
    bot.telegram.fail("messages.GetMessages", HANG)
    asked = await bot.send_nowait("@tgmux_bot which one?", user_id=42, chat_id=GROUP,
                                  reply_to_message_id=anna.message_id)
    await wait_until(lambda: any(r.name == "messages.GetMessages" and r.error == HANG
                                 for r in bot.telegram.requests))
    app = bot.app
    await asyncio.wait_for(bot.stop(), 60)
    assert not app.intake.lost
    assert (await asked.reply()).text == "echo: which one?"
    assert bot.seen[-1].reply_to is None


async def test_the_context_survives_the_inbox_payload(bot: Any) -> None:
    anna = await bot.send("the meeting is at noon", user_id=43, first_name="Anna",
                          chat_id=GROUP)
    await bot.send("@tgmux_bot sure? see the notes", user_id=42, chat_id=GROUP,
                   reply_to_message_id=anna.message_id, quote="noon",
                   entities=[{"type": "text_link", "offset": 21, "length": 5,
                              "url": "https://example.com/n"}])
    message = bot.seen[-1]
    assert message.reply_to is not None and message.entities
    assert IncomingMessage.from_payload(message.to_payload()) == message


async def test_a_reply_in_a_group_that_answers_everything_has_its_context(bot: Any) -> None:
    chat = -4009999999  # group_trigger: always: answered without a mention
    anna = await bot.send("pizza or pasta?", user_id=43, first_name="Anna", chat_id=chat)
    said = await bot.send("let's meet", user_id=43, first_name="Anna", chat_id=GROUP)
    await bot.restart()  # the client no longer has those messages: it asks Telegram
    before = len(bot.telegram.requests)
    reply = await bot.send("pasta", user_id=42, chat_id=chat,
                           reply_to_message_id=anna.message_id)
    assert reply.text == "echo: pasta"
    assert bot.seen[-1].reply_to == RepliedTo(text="pizza or pasta?", author="Anna",
                                              message_id=anna.message_id)
    assert [r.name for r in bot.telegram.requests[before:]].count("messages.GetMessages") == 1
    # in a group answering mentions only, an unaddressed reply costs no request
    before = len(bot.telegram.requests)
    await bot.send("agreed", user_id=44, chat_id=GROUP, reply_to_message_id=said.message_id)
    assert not [r for r in bot.telegram.requests[before:] if r.name.endswith("GetMessages")]


def test_simulate_input_lines_with_formatting_and_replies_are_checked() -> None:
    line = {"user_id": 1, "text": "print(1) docs", "reply_to_message_id": 3, "quote": "x",
            "entities": [{"type": "pre", "offset": 0, "length": 8, "language": "python"},
                         {"type": "text_link", "offset": 9, "length": 4,
                          "url": "https://example.com"}]}
    assert parse_input_line(json.dumps(line)) == line
    for fields, problem in [
        ({"entities": {"type": "bold"}}, "entities: expected list"),
        ({"entities": [{"type": "bold", "offset": 0}]}, "entities[0].length: expected a number"),
        ({"entities": [{"type": "bold", "offset": 0, "length": 1, "colour": 1}]},
         "entities[0]: unknown field(s): colour"),
        ({"entities": [{"type": "code", "offset": 0, "length": 1, "language": "c"}]},
         "entities[0].language: a string, for a pre entity only"),
        ({"entities": [{"type": "bold", "offset": 0, "length": 1, "url": "https://x.y"}]},
         "entities[0].url: only a text_link has a url"),
        ({"quote": "hi"}, "quote: a quote is part of the message replied to"),
        ({"reply_to_message_id": 0}, "reply_to_message_id: a message id is 1 to"),
        ({"reply_to_message_id": 2, "reply_to_bot": True}, "give one of them")]:
        with pytest.raises(ValueError, match=re.escape(problem)):
            parse_input_line(json.dumps({"user_id": 1, "text": "hi", **fields}))
