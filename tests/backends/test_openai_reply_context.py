"""What the user wrote and what it answers, in the exact request the OpenAI simulator gets:
replies (to the bot's message, to another user's, with a quote) and the user's formatting
through ``tgmux simulate``; the group's recent messages (``Turn.group_context``) through the
engine."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tgmux.backends.openai as openai_plugin
from tgmux.backend import Text
from tgmux.backends.openai.simulator import Model, OpenAISimulator
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl
from tgmux.types import ChatLine, RepliedTo

KEY = "sk-reply-test"
GROUP = -4001234567
FORUM = -1001234567890
CONFIG = """
telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}
store: memory://
backends:
  gpt:
    type: openai
    base_url: %(url)s
    api_key: %(key)s
    model: gpt-test
    system_prompt: "Be brief."
    history: {max_turns: 20, max_chars: 24000}
    %(extra)s
default: gpt
"""
SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(api_keys={KEY}, models=[Model("gpt-test")]) as server:
        yield server  # type: ignore[misc]


async def simulate(sim: OpenAISimulator, tmp_path: Path, lines: list[dict[str, Any]],
                   extra: str = "", ok: bool = True, routes: str = ""
                   ) -> tuple[list[dict[str, Any]], str]:
    """``tgmux simulate`` with these input lines (``extra``: more keys of the backend;
    ``routes``: a ``routes:`` section): its output actions and its stderr."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG % {"url": sim.base_url, "key": KEY, "extra": extra} + routes)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgmux", "simulate", "-c", str(config),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    out, err = await asyncio.wait_for(process.communicate(data), 60)
    assert (process.returncode == 0) == ok, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()], err.decode()


def sent(actions: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    return [(a["chat_id"], a["message_id"], a["text"]) for a in actions
            if a["action"] == "send_message"]


async def test_a_reply_to_the_bots_message_carries_it(sim: OpenAISimulator,
                                                      tmp_path: Path) -> None:
    actions, _ = await simulate(sim, tmp_path, [
        {"user_id": 42, "first_name": "Ann", "text": "Name a capital."},
        {"user_id": 42, "text": "Another one?"},
        # the user goes back to the first answer (message 1001) and quotes part of it
        {"user_id": 42, "text": "Why that one?", "reply_to_message_id": 1001},
        {"user_id": 42, "text": "And this?", "reply_to_message_id": 1002,
         "quote": "Another"}])
    (_, _, first), (_, _, second) = sent(actions)[:2]
    assert [m for _, m, _ in sent(actions)] == [1001, 1002, 1003, 1004]
    assert second.startswith("You said: Another one? (I remember 1")
    why, this = sim.completions[2].messages, sim.completions[3].messages
    assert why == [
        SYSTEM, {"role": "user", "content": "Name a capital."},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "Another one?"}, {"role": "assistant", "content": second},
        {"role": "user", "content":
         '[In reply to your message: "You said: Name a capital."]\n\nWhy that one?'}]
    assert this[-1] == {"role": "user", "content":
                        f'[In reply to your message: "{second}" — quoting: '
                        '"Another"]\n\nAnd this?'}
    # what is remembered is what the user wrote (the context was for that turn)
    assert this[-3] == {"role": "user", "content": "Why that one?"}


async def test_a_reply_to_another_users_message_in_a_group(sim: OpenAISimulator,
                                                           tmp_path: Path) -> None:
    await simulate(sim, tmp_path, [
        {"chat_id": GROUP, "user_id": 43, "first_name": "Anna",
         "text": "The meeting is at noon, room 4."},
        {"chat_id": GROUP, "user_id": 42, "text": "@tgmux_bot is that right?",
         "reply_to_message_id": 1},
        {"chat_id": GROUP, "user_id": 42, "text": "@tgmux_bot which room?",
         "reply_to_message_id": 1, "quote": "room 4"}])
    assert [c.messages[-1]["content"] for c in sim.completions] == [
        '[In reply to Anna: "The meeting is at noon, room 4."]\n\nis that right?',
        '[In reply to Anna: "The meeting is at noon, room 4." — quoting: "room 4"]'
        "\n\nwhich room?"]


async def test_the_users_formatting_reaches_the_model_as_markdown(sim: OpenAISimulator,
                                                                  tmp_path: Path) -> None:
    text = "👋 read the docs and run pip install"
    await simulate(sim, tmp_path, [{"user_id": 42, "text": text, "entities": [
        {"type": "text_link", "offset": 8, "length": 8, "url": "https://example.com/docs"},
        {"type": "code", "offset": 25, "length": 11}, {"type": "bold", "offset": 3, "length": 4}]}])
    assert sim.completions[0].messages[-1] == {
        "role": "user",
        "content": "👋 **read** [the docs](https://example.com/docs) and run `pip install`"}
    # format: plain keeps the link's URL readable, and nothing else
    sim.completions.clear()
    await simulate(sim, tmp_path, [{"user_id": 42, "text": text, "entities": [
        {"type": "text_link", "offset": 8, "length": 8, "url": "https://example.com/docs"},
        {"type": "bold", "offset": 3, "length": 4}]}], extra="format: plain")
    assert sim.completions[0].messages[-1]["content"] == \
        "👋 read the docs (https://example.com/docs) and run pip install"


async def test_bad_reply_and_entity_lines_are_one_clear_line_each(sim: OpenAISimulator,
                                                                  tmp_path: Path) -> None:
    actions, err = await simulate(sim, tmp_path, [
        {"user_id": 42, "text": "hello"},
        {"user_id": 42, "text": "what?", "reply_to_message_id": 77},
        {"user_id": 42, "text": "what?", "reply_to_message_id": 1, "quote": "bye"},
        {"user_id": 42, "text": "abc", "entities": [{"type": "bold", "offset": 2,
                                                     "length": 5}]},
        {"user_id": 42, "text": "abc", "entities": [{"type": "text_link", "offset": 0,
                                                     "length": 3}]}], ok=False)
    assert err.splitlines() == [
        "input line 2: reply_to_message_id: chat 42 has no message 77 (an earlier input "
        "message of the chat, or a message the bot sent there: its output message_id)",
        "input line 3: quote: not a part of the text of message 1 ('hello')",
        "input line 4: entities[0]: offset 2, length 5 is not within the text (3 UTF-16 "
        "code units)",
        'input line 5: entities[0].url: a text_link needs its URL ("url": "https://…"), '
        "got None"]
    assert len(sent(actions)) == 1 and len(sim.completions) == 1  # the good line is answered


# -- the group's recent messages (Turn.group_context), through the engine ---------------------


class GroupContext:
    """Gives each turn the group's recent messages, as the group-context store does."""

    def __init__(self, lines: tuple[ChatLine, ...]) -> None:
        self.lines = lines

    @hookimpl
    def tgmux_before_backend(self, turn: Any, backend: Any) -> Any:
        return dataclasses.replace(turn, group_context=self.lines)


async def test_group_context_and_a_reply_as_earlier_user_messages(sim: OpenAISimulator) -> None:
    lines = (ChatLine("Anna", "Lunch at noon?", user_id=43), ChatLine("Bob", "Yes, at Luigi's"))
    text = f"""
backends:
  gpt: {{type: openai, base_url: "{sim.base_url}", api_key: {KEY}, model: gpt-test,
        history: {{max_turns: 0}}}}
default: gpt
"""
    async with EngineHarness.from_yaml(text, plugins=[openai_plugin, GroupContext(lines)]) as h:
        message = h.message("where is that?", user_id=42, chat_id=GROUP, chat_type="group")
        message = dataclasses.replace(message, reply_to=RepliedTo(
            text="Yes, at Luigi's", author="Bob", message_id=7))
        await (await h.engine.submit(message))
        assert [p for p in h.frontend.by_message[(GROUP, message.chat.message_id)]
                if isinstance(p, Text)][-1] == \
            Text("You said: [In reply to Bob: \"Yes, at Luigi's\"]\n\nwhere is that? "
                 "(I remember 2 earlier messages; the first was: Anna: Lunch at noon?)")
    assert sim.completions[0].messages == [
        {"role": "user", "content": "Anna: Lunch at noon?"},
        {"role": "user", "content": "Bob: Yes, at Luigi's"},
        {"role": "user", "content": "[In reply to Bob: \"Yes, at Luigi's\"]\n\nwhere is that?"}]



async def test_the_groups_recent_messages_reach_the_model_through_simulate(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    # end to end: a forum topic's lines kept by tgmux (route key group_context: 2), given once
    # to the next message the bot answers in that topic; another topic's lines are not
    forum = {"chat_id": FORUM, "chat_type": "supergroup"}
    actions, _ = await simulate(sim, tmp_path, [
        {**forum, "user_id": 43, "first_name": "Anna", "text": "too old", "thread_id": 5},
        {**forum, "user_id": 43, "first_name": "Anna", "text": "Lunch at noon?",
         "thread_id": 5},
        {**forum, "user_id": 44, "username": "bob", "text": "Yes, at Luigi's", "thread_id": 5},
        {**forum, "user_id": 45, "first_name": "Cy", "text": "other topic", "thread_id": 9},
        {**forum, "user_id": 42, "text": "@tgmux_bot where is that?", "thread_id": 5},
        {**forum, "user_id": 42, "text": "@tgmux_bot and when?", "thread_id": 5}],
        routes=f"routes:\n  - match: {{chat_id: [{FORUM}]}}\n    backend: gpt\n"
               "    group_context: 2\n")
    assert len(sent(actions)) == 2
    assert [c.messages for c in sim.completions] == [
        [SYSTEM, {"role": "user", "content": "Anna: Lunch at noon?"},
         {"role": "user", "content": "bob: Yes, at Luigi's"},
         {"role": "user", "content": "where is that?"}],
        # each line is given once (the memory keeps what the user wrote)
        [SYSTEM, {"role": "user", "content": "where is that?"},
         {"role": "assistant", "content": "You said: where is that? (I remember 2 earlier "
                                          "messages; the first was: Anna: Lunch at noon?)"},
         {"role": "user", "content": "and when?"}]]
