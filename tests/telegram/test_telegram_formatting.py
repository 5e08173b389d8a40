"""Markdown replies shown as formatting on Telegram: text plus entities (never a parse mode),
split with entities kept whole, streamed drafts and edits always valid and the final message
exact, a refused formatting sent again as plain text, plain backends untouched; the fake
Telegram checks entities as Telegram does."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
import tg_test_backends
from pyrogram import raw
from pyrogram.errors import RPCError

from tgmux.backend import (
    Backend,
    BackendSettings,
    Image,
    Metadata,
    ReplyPart,
    Text,
    TextDelta,
    Turn,
    Usage,
)
from tgmux.backends.openai.simulator import Model, OpenAISimulator
from tgmux.formatting import Formatted, check, render
from tgmux.hooks import hookimpl
from tgmux.telegram.fake import FakeTelegram
from tgmux.text import utf16_len
from tgmux.types import Entity

GROUP = -1001234567890
PNG = tg_test_backends.PNG


class ScriptSettings(BackendSettings):
    type: Literal["script"] = "script"
    format: Literal["markdown", "plain"] = "markdown"


class ScriptBackend(Backend):
    """Answers Markdown: "long" a 10 000-character reply, "caption X" a photo captioned X,
    "stream X" X word by word, anything else itself."""

    type_name = "script"
    Settings = ScriptSettings

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        text = turn.text
        if text == "long":
            yield Text(LONG)
        elif text.startswith("caption "):
            yield Image(data=PNG, caption=text.removeprefix("caption "))
        elif text.startswith("hidden "):  # parts nobody sees between the deltas and the text
            words = text.removeprefix("hidden ").split(" ")
            for i, word in enumerate(words):
                yield TextDelta(word if i == 0 else " " + word)
            yield Metadata({"id": "x"})
            yield Usage(model="m", input_tokens=3, output_tokens=len(words))
            yield Text(text.removeprefix("hidden "))
        elif text.startswith("stream "):
            words = text.removeprefix("stream ").split(" ")
            for i, word in enumerate(words):
                yield TextDelta(word if i == 0 else " " + word)
            yield Text(text.removeprefix("stream "))
        else:
            yield Text(text)


class Scripted:
    @hookimpl
    def tgmux_backend_types(self) -> list[type[Backend]]:
        return [ScriptBackend]


PLUGINS = [tg_test_backends, Scripted()]

#: one paragraph with every kind of entity, repeated past 10 000 characters
PARAGRAPH = ("## Part\n\n**Bold words** and *italic ones*, `inline code`, a "
             "[link](https://example.com/a) and 😀 **after an emoji**.\n\n"
             "```python\nfor i in range(3):\n    print(i)\n```\n\n")
LONG = PARAGRAPH * (10_000 // len(PARAGRAPH) + 1)

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
backends:
  md: {type: script}
  drip: {type: drip, delay: 0.06, format: markdown}
  plain: {type: echo}
routes:
  - match: {user_id: 7}
    backend: plain
  - match: {user_id: 8}
    backend: drip
  - match: {chat_type: supergroup}
    backend: drip
default: md
"""


def shown(action: dict[str, Any]) -> Formatted:
    """What an action shows, as tgmux's Formatted (checked as Telegram checks it)."""
    formatted = Formatted(action.get("text", ""), tuple(Entity.from_json(e)
                                                        for e in action.get("entities", ())))
    check(formatted)
    return formatted


def entities_of(action: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(action.get("entities", []), key=lambda e: (e["offset"], -e["length"],
                                                             e["type"]))


EXACT = [
    ("**bold** text", "bold text", [{"type": "bold", "offset": 0, "length": 4}]),
    ("an *italic* word", "an italic word", [{"type": "italic", "offset": 3, "length": 6}]),
    ("**bold _and italic_ end**", "bold and italic end",
     [{"type": "bold", "offset": 0, "length": 19}, {"type": "italic", "offset": 5,
                                                    "length": 10}]),
    ("use `x = 1` now", "use x = 1 now", [{"type": "code", "offset": 4, "length": 5}]),
    ("```python\nprint(1)\n```", "print(1)",
     [{"type": "pre", "offset": 0, "length": 8, "language": "python"}]),
    ("see [docs](https://example.com/docs)", "see docs",
     [{"type": "text_link", "offset": 4, "length": 4, "url": "https://example.com/docs"}]),
    # the emoji is 2 UTF-16 units: the bold starts at 3, not 2
    ("😀 **hi**", "😀 hi", [{"type": "bold", "offset": 3, "length": 2}]),
]


@pytest.mark.parametrize(("markdown", "text", "entities"), EXACT,
                         ids=["bold", "italic", "nested", "code", "pre", "link", "emoji"])
async def test_markdown_reply_is_sent_as_text_and_exact_entities(tgmux_bot, markdown, text,
                                                                 entities):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send(markdown, user_id=42)
    (message,) = reply.messages
    assert message["text"] == text
    assert entities_of(message) == entities


@pytest.mark.parametrize("markdown, text, entities", [
    ("# Title\n\nsome text", "Title\n\nsome text", [{"type": "bold", "offset": 0, "length": 5}]),
    ("- one\n- two\n  - nested", "• one\n• two\n  • nested", None),
    ("1. first\n2. second", "1. first\n2. second", None),
    ("> quoted\n> more", "quoted\nmore", [{"type": "blockquote", "offset": 0, "length": 11}]),
    ("| a | b |\n|---|---|\n| 1 | 2 |", "a | b\n--+--\n1 | 2",
     [{"type": "pre", "offset": 0, "length": 17}]),
    ("## Part `two`\n\nText with ~~gone~~ and ||secret||.",
     "Part two\n\nText with gone and secret.",
     [{"type": "bold", "offset": 0, "length": 5}, {"type": "code", "offset": 5, "length": 3},
      {"type": "strikethrough", "offset": 20, "length": 4},
      {"type": "spoiler", "offset": 29, "length": 6}]),
], ids=["heading", "list", "ordered", "quote", "table", "heading_code_strike_spoiler"])
async def test_headings_lists_quotes_tables_come_out_readable_and_exact(
        tgmux_bot, markdown, text, entities):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send(markdown, user_id=42)
    (message,) = reply.messages
    shown(message)  # valid for Telegram
    assert message["text"] == text
    assert message.get("entities") == entities  # left out when there are none


async def test_a_link_is_sent_without_preview_and_says_so(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send("see [docs](https://example.com/docs)", user_id=42)
    assert reply.messages[0]["link_preview"] is False
    reply = await bot.send("**no link**", user_id=42)
    assert "link_preview" not in reply.messages[0]


async def test_a_plain_backend_keeps_its_stars_and_sends_no_entities(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send("5 * 3 = 15 and **x** and *smiles*", user_id=7)
    assert reply.messages == [{"action": "send_message", "chat_id": 7, "message_id": 1001,
                               "text": "5 * 3 = 15 and **x** and *smiles*"}]


async def test_tgmux_notices_stay_plain(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send("/nosuchcommand **x**", user_id=42)
    assert all("entities" not in a for a in reply.messages)


async def test_a_10000_character_markdown_reply_is_split_with_every_piece_valid(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send("long", user_id=42, timeout=30)
    messages = reply.of("send_message")
    whole = render(LONG)
    assert len(LONG) >= 10_000 and utf16_len(whole.text) > 4096
    assert len(messages) >= 2
    for message in messages:
        formatted = shown(message)
        assert 0 < utf16_len(formatted.text) <= 4096
        kinds = {e.type for e in formatted.entities}
        assert {"bold", "italic", "code", "text_link", "pre"} <= kinds
        assert all(e.language == "python" for e in formatted.entities if e.type == "pre")
    # nothing lost: the pieces hold the whole rendered text (a cut may drop a newline)
    joined = "".join(m["text"] for m in messages)
    assert joined.replace("\n", "") == whole.text.replace("\n", "")


async def test_a_markdown_caption_is_formatted(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send("caption a **bold** cat", user_id=42)
    (photo,) = reply.messages
    assert photo["action"] == "send_photo"
    assert photo["text"] == "a bold cat"
    assert photo["entities"] == [{"type": "bold", "offset": 2, "length": 4}]


FINAL = ("**one two** three `four five` six\n\n```py\nx = 1\ny = 2\n```\n\nseven "
         "*eight* [nine](https://example.com/9) **ten**")


async def test_a_streamed_markdown_reply_in_a_private_chat_drafts_valid_final_exact(
        tgmux_bot, caplog):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.1)
    with caplog.at_level(logging.WARNING, "tgmux"):
        reply = await bot.send(FINAL, user_id=8, timeout=20)
    drafts = reply.of("send_draft")
    assert len(drafts) >= 2
    for draft in drafts:
        shown(draft)  # each draft valid
    assert any(d.get("entities") for d in drafts)  # shown formatted as it grows
    (message,) = reply.messages
    final = render(FINAL)
    assert shown(message) == final  # the final message exact
    assert not [r for r in caplog.records if "formatting" in r.getMessage()]


async def test_a_streamed_markdown_reply_in_a_group_edits_valid_final_exact(tgmux_bot, caplog):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.1)
    with caplog.at_level(logging.WARNING, "tgmux"):
        reply = await bot.send(f"@tgmux_bot {FINAL}", user_id=42, chat_id=GROUP, timeout=20)
    edits = reply.of("edit_message")
    assert edits
    for action in reply.of("send_message") + edits:
        shown(action)  # each update valid
    last = edits[-1]
    assert shown(last) == render(FINAL)
    assert not [r for r in caplog.records if "formatting" in r.getMessage()]


async def test_refused_formatting_is_sent_again_as_plain_text_once(tgmux_bot, caplog):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("send_message", "ENTITY_BOUNDS_INVALID")
    with caplog.at_level(logging.WARNING, "tgmux"):
        reply = await bot.send("**bold** text", user_id=42)
    assert reply.messages == [{"action": "send_message", "chat_id": 42, "message_id": 1001,
                               "text": "bold text"}]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["chat 42: send_message: Telegram refused the formatting "
                        "(ENTITY_BOUNDS_INVALID); sending it as plain text"]
    again = await bot.send("**bold** again", user_id=42)  # the next one formatted again
    assert again.messages[0]["entities"] == [{"type": "bold", "offset": 0, "length": 4}]


#: formatted from its first word on (a refused draft or edit is one with entities)
BOLD_FIRST = "**one** two **three** four *five* six `seven` eight **nine** ten"


async def test_refused_formatting_of_a_caption_a_draft_and_an_edit_falls_back(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.1)
    bot.telegram.fail("send_photo", "ENTITY_TEXTURL_INVALID")
    photo = await bot.send("caption a **bold** cat", user_id=42)
    assert [(m["text"], "entities" in m) for m in photo.messages] == [("a bold cat", False)]
    bot.telegram.fail("send_draft", "ENTITY_BOUNDS_INVALID")
    private = await bot.send(BOLD_FIRST, user_id=8, timeout=20)
    drafts = private.of("send_draft")
    assert "entities" not in drafts[0]  # the refused draft, plain
    assert any(d.get("entities") for d in drafts[1:])  # drafts go on, formatted
    assert shown(private.messages[-1]) == render(BOLD_FIRST)
    bot.telegram.fail("edit_message", "ENTITIES_TOO_LONG")
    group = await bot.send(f"@tgmux_bot {BOLD_FIRST}", user_id=42, chat_id=GROUP, timeout=20)
    edits = group.of("edit_message")
    assert group.of("send_message")[0]["entities"]
    assert "entities" not in edits[0]  # the refused edit, plain
    assert shown(edits[-1]) == render(BOLD_FIRST)


# -- the fake Telegram checks entities as Telegram does ------------------------------------


class Recorder:
    """Stands in for a connected client (as in test_fake_truth)."""

    is_connected = True

    async def handle_updates(self, updates: Any) -> None:
        pass


def fake_telegram() -> FakeTelegram:
    fake = FakeTelegram()
    fake.client = Recorder()  # type: ignore[assignment]
    return fake


async def _send(fake: FakeTelegram, text: str, entities: list[Any]) -> Any:
    await fake.incoming(user_id=42, text="hi")
    peer = raw.types.InputPeerUser(user_id=42, access_hash=0)
    return await fake.answer(raw.functions.messages.SendMessage(
        peer=peer, message=text, random_id=len(fake.actions) + 1, entities=entities,
        no_webpage=True), fake.client)


@pytest.mark.parametrize(("entity", "error"), [
    (raw.types.MessageEntityBold(offset=3, length=3), "ENTITY_BOUNDS_INVALID"),  # past the end
    (raw.types.MessageEntityBold(offset=0, length=0), "ENTITY_BOUNDS_INVALID"),
    # "😀 hi" is 5 UTF-16 units, 4 characters: offset 3 length 2 fits, 4 + 2 does not
    (raw.types.MessageEntityItalic(offset=4, length=2), "ENTITY_BOUNDS_INVALID"),
    (raw.types.MessageEntityTextUrl(offset=0, length=1, url="javascript:alert(1)"),
     "ENTITY_TEXTURL_INVALID"),
])
async def test_the_fake_refuses_invalid_entities(entity, error):
    fake = fake_telegram()
    with pytest.raises(RPCError) as refused:
        await _send(fake, "😀 hi", [entity])
    assert error in str(refused.value)
    assert not [a for a in fake.actions if a["action"] == "send_message"]


async def test_the_fake_records_entities_in_bot_api_form_and_shows_100_at_most():
    fake = fake_telegram()
    await _send(fake, "😀 hi", [raw.types.MessageEntityBold(offset=3, length=2),
                               raw.types.MessageEntityTextUrl(offset=0, length=2,
                                                              url="https://example.com"),
                               raw.types.MessageEntityPre(offset=3, length=2, language="py")])
    sent = fake.actions[-1]
    assert sent["entities"] == [
        {"type": "bold", "offset": 3, "length": 2},
        {"type": "text_link", "offset": 0, "length": 2, "url": "https://example.com"},
        {"type": "pre", "offset": 3, "length": 2, "language": "py"}]
    assert sent["link_preview"] is False  # a text link, sent without a preview
    many = [raw.types.MessageEntityBold(offset=i, length=1) for i in range(150)]
    await _send(fake, "x" * 150, many)
    assert len(fake.actions[-1]["entities"]) == 100  # Telegram keeps the first 100


# -- through `tgmux simulate`, and from the OpenAI backend's default --------------------------

SIMULATE_CONFIG = """
store: memory://
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
backends:
  md: {type: echo, format: markdown}
  plain: {type: echo}
routes:
  - match: {user_id: 7}
    backend: plain
default: md
"""


def simulate(config: Path, lines: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """``tgmux simulate``'s send_message lines for these input lines, and its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "tgmux", "simulate", "-c", str(config)],
        input="".join(json.dumps(line) + "\n" for line in lines), capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    actions = [json.loads(line) for line in result.stdout.splitlines()]
    return [a for a in actions if a["action"] == "send_message"], result.stderr


def test_simulate_writes_entities_link_preview_and_falls_back_to_plain(tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(SIMULATE_CONFIG)
    # the fault is for the next send_message: the first reply (one chat's replies in order)
    sent, stderr = simulate(config, [
        {"telegram": "fault", "method": "send_message", "error": "ENTITY_BOUNDS_INVALID"},
        {"user_id": 42, "text": "**refused** formatting"},
        {"user_id": 42, "text": "😀 **hi** and [docs](https://example.com/docs)"}])
    assert sent == [
        {"action": "send_message", "chat_id": 42, "message_id": 1001,
         "text": "refused formatting"},
        {"action": "send_message", "chat_id": 42, "message_id": 1002,
         "text": "😀 hi and docs",
         "entities": [{"type": "bold", "offset": 3, "length": 2},
                      {"type": "text_link", "offset": 10, "length": 4,
                       "url": "https://example.com/docs"}],
         "link_preview": False},
    ]
    assert stderr.count("Telegram refused the formatting") == 1
    assert "chat 42: send_message: Telegram refused the formatting (ENTITY_BOUNDS_INVALID)" \
        in stderr
    sent, _ = simulate(config, [{"user_id": 7, "text": "5 * 3 = 15 and **x**"}])
    assert sent == [{"action": "send_message", "chat_id": 7, "message_id": 1001,
                     "text": "5 * 3 = 15 and **x**"}]


OPENAI_CONFIG = """
telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}
backends:
  gpt: {type: openai, base_url: %s, model: gpt-test}
default: gpt
"""


async def test_openai_replies_are_markdown_by_default_streamed_and_exact(tgmux_bot):
    def answer(messages: list[dict[str, Any]]) -> str:
        return FINAL

    async with OpenAISimulator(models=[Model("gpt-test", reply=answer)], chunk_size=5,
                               chunk_delay=0.02) as sim:
        bot = await tgmux_bot(OPENAI_CONFIG % sim.base_url, edit_interval=0.1)
        private = await bot.send("hi", user_id=42, timeout=30)
        assert private.of("send_draft")
        for draft in private.of("send_draft"):
            shown(draft)
        assert shown(private.messages[-1]) == render(FINAL)
        group = await bot.send("@tgmux_bot hi", user_id=42, chat_id=GROUP, timeout=30)
        assert shown(visible(group)) == render(FINAL)


def visible(reply: Any) -> dict[str, Any]:
    """The last send or edit of the reply's (one) message: what the chat shows."""
    return [a for a in reply.actions if a["action"] in ("send_message", "edit_message")][-1]


class Rewrite:
    """A plugin that answers in place of the backend (its own part) or edits its text."""

    @hookimpl
    def tgmux_after_backend(self, turn: Turn, part: ReplyPart) -> ReplyPart:
        if isinstance(part, Text) and part.text.startswith("mine"):
            return Text("**mine** as it is")  # the plugin's own part: plain
        if isinstance(part, Text):
            return dataclasses.replace(part, text=part.text + " **edited**")  # still Markdown
        return part


async def test_a_plugins_own_part_is_plain_an_edited_part_keeps_its_format(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=[*PLUGINS, Rewrite()])
    own = await bot.send("mine", user_id=42)
    assert own.messages[0]["text"] == "**mine** as it is" and "entities" not in own.messages[0]
    edited = await bot.send("*x*", user_id=42)
    assert edited.messages[0]["text"] == "x edited"
    assert entities_of(edited.messages[0]) == [{"type": "italic", "offset": 0, "length": 1},
                                               {"type": "bold", "offset": 2, "length": 6}]


async def test_a_long_markdown_text_is_rendered_off_the_event_loop(monkeypatch):
    # odd Markdown (thousands of nested lists) costs up to ~170 ms to render: never on the loop
    import threading

    from tgmux.telegram import textsplit

    threads: list[str] = []

    def recording(text: str, *, partial: bool = False):
        threads.append(threading.current_thread().name)
        return render(text, partial=partial)

    monkeypatch.setattr(textsplit, "render", recording)
    short = "**short**"
    long = "**long** " + "word " * (textsplit.RENDER_ON_LOOP // 5)
    assert (await textsplit.rendered(short, True)).entities
    assert len(await textsplit.formatted_messages(long, True, partial=True)) == 1
    assert threads[0] == threading.main_thread().name
    assert threads[1] != threading.main_thread().name


@pytest.mark.parametrize("chat", [{"user_id": 42}, {"user_id": 42, "chat_id": GROUP,
                                                   "chat_type": "supergroup"}])
async def test_parts_nobody_sees_do_not_end_a_streamed_message(tgmux_bot, chat):
    # Metadata and Usage between the deltas and the final text: one message, the final text
    # (they ended the stream: the text came again in a second message)
    bot = await tgmux_bot(CONFIG.replace("  - match: {chat_type: supergroup}\n    backend: "
                                         "drip\n", ""), plugins=PLUGINS)
    text = "hidden one two three" if "chat_id" not in chat else "@tgmux_bot hidden one two"
    reply = await bot.send(text, **chat)
    sent = reply.of("send_message")
    assert len(sent) == 1
    final = (reply.of("edit_message") or sent)[-1]
    assert final["text"] == text.split("hidden ", 1)[1]
