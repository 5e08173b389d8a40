"""The openai backend end to end: simulator → backend → engine → real Pyrogram client →
offline Telegram. ``tgmux simulate`` itself (a subprocess, JSON lines in and out) for the
conversation memory across runs, ``/reset`` and ``scope: user``; the ``tgmux_bot`` fixture (the
same offline Telegram, in-process) for streaming and the context-length retry."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tgmux.backends.openai.simulator import Model, OpenAISimulator

KEY = "sk-telegram-test"

CONFIG = """
telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}
store: "%(store)s"
backends:
  gpt:
    type: openai
    base_url: %(url)s
    api_key: %(key)s
    model: gpt-test
    system_prompt: "Be brief."
    history: {max_turns: 20, max_chars: 24000, scope: %(scope)s}
default: gpt
"""


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(api_keys={KEY}, models=[Model("gpt-test")],
                               chunk_size=6) as server:
        yield server  # type: ignore[misc]


def config(sim: OpenAISimulator, store: str = "memory://", scope: str = "chat") -> str:
    return CONFIG % {"store": store, "url": sim.base_url, "key": KEY, "scope": scope}


async def simulate(config_path: Path, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``tgmux simulate -c CONFIG`` with these input lines; its output actions. Run without
    blocking the loop: the simulator answers from this process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgmux", "simulate", "-c", str(config_path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    out, err = await asyncio.wait_for(process.communicate(data), 60)
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


def replies(actions: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(a["chat_id"], a["text"]) for a in actions if a["action"] == "send_message"]


def user_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


async def test_simulate_remembers_across_runs_and_reset_forgets(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config(sim, f"sqlite:///{tmp_path / 'tgmux.db'}"))
    first = await simulate(path, [{"user_id": 42, "text": t}
                                  for t in ("I am Ann.", "I like tea.", "Who am I?")])
    r1 = "You said: I am Ann."
    r2 = "You said: I like tea. (I remember 1 earlier message; the first was: I am Ann.)"
    r3 = "You said: Who am I? (I remember 2 earlier messages; the first was: I am Ann.)"
    assert replies(first) == [(42, r1), (42, r2), (42, r3)]
    system = {"role": "system", "content": "Be brief."}
    assert [c.messages for c in sim.completions] == [
        [system, {"role": "user", "content": "I am Ann."}],
        [system, {"role": "user", "content": "I am Ann."}, {"role": "assistant", "content": r1},
         {"role": "user", "content": "I like tea."}],
        [system, {"role": "user", "content": "I am Ann."}, {"role": "assistant", "content": r1},
         {"role": "user", "content": "I like tea."}, {"role": "assistant", "content": r2},
         {"role": "user", "content": "Who am I?"}],
    ]
    # a new process on the same store: the conversation goes on; /reset ends it
    second = await simulate(path, [
        {"user_id": 42, "text": "Still there?", "message_id": 4},
        {"user_id": 42, "text": "/reset", "message_id": 5},
        {"user_id": 42, "text": "/history", "message_id": 6},
        {"user_id": 42, "text": "Hello again", "message_id": 7}])
    assert [text for _, text in replies(second)][1:] == [
        "Done: I have forgotten our conversation.", "Nothing remembered yet.",
        "You said: Hello again"]
    still, again = sim.completions[3:]
    assert still.messages == [*sim.completions[2].messages, {"role": "assistant", "content": r3},
                              {"role": "user", "content": "Still there?"}]
    assert again.messages == [system, {"role": "user", "content": "Hello again"}]
    assert len(sim.completions) == 5  # /reset and /history asked nobody


async def test_simulate_scope_user_keeps_two_users_in_a_group_apart(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config(sim, scope="user"))
    group = -1001234567890
    lines = [{"chat_id": group, "user_id": user, "text": f"@tgmux_bot {text}"}
             for user, text in ((1, "ann one"), (2, "bob one"), (1, "ann two"),
                                (2, "bob two"))]
    out = await simulate(path, lines)
    assert len(replies(out)) == 4
    assert [user_texts(c.messages) for c in sim.completions] == [
        ["ann one"], ["bob one"], ["ann one", "ann two"], ["bob one", "bob two"]]
    # and with scope: chat, the group is one conversation
    sim.completions.clear()
    path.write_text(config(sim, scope="chat"))
    await simulate(path, lines)
    assert user_texts(sim.completions[-1].messages) == ["ann one", "bob one", "ann two",
                                                        "bob two"]


async def test_streamed_deltas_are_drafts_and_edits_with_the_exact_final_text(
        tgmux_bot, sim: OpenAISimulator) -> None:
    sim.chunk_delay = 0.02  # long enough for several streamed updates per reply
    sim.reasoning = True  # reasoning and tool-call deltas first: never shown
    bot = await tgmux_bot(config(sim), edit_interval=0.05)
    question = "How does streaming work? Tell me everything, in detail please."
    expected = f"You said: {question}"

    private = await bot.send(question, user_id=42)
    drafts = private.of("send_draft")
    assert len(drafts) >= 2 and all(expected.startswith(d["text"]) for d in drafts)
    assert private.messages == [
        {"action": "send_message", "chat_id": 42, "message_id": 1001, "text": expected}]

    group = await bot.send(f"@tgmux_bot {question}", user_id=43, chat_id=-1001234567890,
                           message_id=70)
    (sent,) = group.of("send_message")
    assert sent["reply_to_message_id"] == 70
    assert expected.startswith(sent["text"]) and sent["text"] != expected  # a first piece
    edits = group.of("edit_message")
    assert edits and edits[-1]["text"] == expected
    assert group.texts == [expected]
    assert not any("think" in a.get("text", "") for a in bot.actions)


async def test_a_context_length_error_trims_and_the_reply_arrives(
        tgmux_bot, sim: OpenAISimulator, tmp_path: Path) -> None:
    sim.models["gpt-test"] = Model("gpt-test", context_tokens=300, reply=lambda m: "noted")
    bot = await tgmux_bot(config(sim), store=f"sqlite:///{tmp_path / 'tgmux.db'}")
    # 4 characters a token, 4 a message: the system prompt is 7 tokens, a message of 400
    # characters 104, an exchange 110: two exchanges and a new message do not fit in 300
    for n in range(3):
        assert (await bot.send(f"{n}" + "x" * 399, user_id=5)).texts == ["noted"]
    before = len(sim.requests)
    reply = await bot.send("and this one " + "y" * 387, user_id=5)
    assert reply.texts == ["noted"]
    # refused with the two remembered exchanges, answered with the newer one
    assert [len(r.json["messages"]) for r in sim.requests[before:]] == [6, 4]
    # the memory after a restart: the exchange that fitted, and the new one
    await bot.restart()
    await bot.send("last", user_id=5)
    assert [m[:4] for m in user_texts(sim.completions[-1].messages)] == ["2xxx", "and ", "last"]
