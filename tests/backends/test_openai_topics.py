"""Conversations follow topics, through ``tgmux simulate`` and the OpenAI simulator: each topic
of a forum (and of a private chat in threaded mode) is a conversation of its own — memory,
``/history`` and ``/reset`` — and a chat without topics keeps the conversation it had before
topics were told apart (its memory's key did not change)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_openai_telegram import KEY, config, replies, simulate, user_texts

from tgmux.backends.openai.simulator import Model, OpenAISimulator
from tgmux.store import open_store
from tgmux.types import Exchange

FORUM = -1001234567890
SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(api_keys={KEY}, models=[Model("gpt-test")]) as server:
        yield server  # type: ignore[misc]


def in_topic(thread: int, text: str, user: int = 1, **more: Any) -> dict[str, Any]:
    return {"chat_id": FORUM, "user_id": user, "thread_id": thread,
            "text": f"@tgmux_bot {text}", **more}


def said(text: str) -> str:
    return f"You said: {text}"


def requests_by_message(sim: OpenAISimulator) -> dict[str, list[dict[str, Any]]]:
    """The exact messages of each request, by the user's new message (chats are answered
    concurrently: their requests come in any order)."""
    return {c.messages[-1]["content"]: c.messages for c in sim.completions}


async def test_forum_topics_are_separate_conversations_and_reset_forgets_one(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config(sim))
    out = await simulate(path, [
        in_topic(2, "a one"), in_topic(2, "a two"), in_topic(3, "b one"),
        in_topic(2, "/reset"), in_topic(3, "b two"), in_topic(2, "a three"),
        in_topic(3, "/history")])
    asked = requests_by_message(sim)
    assert len(sim.completions) == 5
    assert asked["a two"] == [SYSTEM, {"role": "user", "content": "a one"},
                              {"role": "assistant", "content": said("a one")},
                              {"role": "user", "content": "a two"}]
    # topic B's first message: nothing of topic A in the exact request
    assert asked["b one"] == [SYSTEM, {"role": "user", "content": "b one"}]
    # /reset in topic A left topic B's memory
    assert asked["b two"] == [SYSTEM, {"role": "user", "content": "b one"},
                              {"role": "assistant", "content": said("b one")},
                              {"role": "user", "content": "b two"}]
    assert asked["a three"] == [SYSTEM, {"role": "user", "content": "a three"}]
    sent = [(a["message_thread_id"], a["text"]) for a in out if a["action"] == "send_message"]
    assert sent[3] == (2, "Done: I have forgotten our conversation.")
    # /history in topic B shows topic B's conversation only
    assert sent[-1] == (3, "\n".join([
        "you: b one", f"AI: {said('b one')}",
        "you: b two", f"AI: {said('b two')} (I remember 1 earlier message; the first was: "
                      "b one)"]))


async def test_scope_user_in_a_forum_topic_is_per_user_per_topic(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config(sim, scope="user"))
    await simulate(path, [in_topic(2, "ann in a", user=1), in_topic(2, "bob in a", user=2),
                          in_topic(3, "ann in b", user=1), in_topic(2, "ann again", user=1),
                          in_topic(3, "ann b again", user=1)])
    assert sorted(user_texts(c.messages) for c in sim.completions) == sorted([
        ["ann in a"], ["bob in a"], ["ann in b"], ["ann in a", "ann again"],
        ["ann in b", "ann b again"]])


async def test_private_chat_topics_are_separate_conversations(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config(sim))
    out = await simulate(path, [
        {"user_id": 42, "text": "main one"},
        {"user_id": 42, "thread_id": 3, "text": "three one"},
        {"user_id": 42, "thread_id": 9, "text": "nine one"},
        {"user_id": 42, "thread_id": 3, "text": "/reset"},
        {"user_id": 42, "thread_id": 9, "text": "nine two"},
        {"user_id": 42, "thread_id": 3, "text": "three two"},
        {"user_id": 42, "text": "main two"}])
    assert sorted(user_texts(c.messages) for c in sim.completions) == sorted([
        ["main one"], ["three one"], ["nine one"], ["nine one", "nine two"], ["three two"],
        ["main one", "main two"]])
    assert [a.get("message_thread_id") for a in out if a["action"] == "send_message"] == \
        [None, 3, 9, 3, 9, 3, None]


async def test_a_chat_without_topics_keeps_its_conversation_and_topics_survive_a_restart(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    database = tmp_path / "tgmux.db"
    # what an earlier tgmux remembered, under the keys it used (backend/account/chat[/user])
    store = open_store(f"sqlite:///{database}")
    await store.open()
    try:
        await store.history_append("gpt/main/42", Exchange("I am Ann.", "Hello Ann."),
                                   max_turns=20, max_chars=24000)
        await store.history_append(f"gpt/main/{FORUM}", Exchange("We are a forum.", "Noted."),
                                   max_turns=20, max_chars=24000)
    finally:
        await store.close()
    path = tmp_path / "config.yaml"
    path.write_text(config(sim, f"sqlite:///{database}"))
    out = await simulate(path, [
        {"user_id": 42, "text": "Who am I?"},
        {"chat_id": FORUM, "user_id": 1, "text": "@tgmux_bot Who are we?"},
        in_topic(5, "topic five"),
        {"user_id": 42, "thread_id": 4, "text": "private topic"}])
    assert len(replies(out)) == 4
    asked = requests_by_message(sim)
    assert asked["Who am I?"] == [SYSTEM, {"role": "user", "content": "I am Ann."},
                                {"role": "assistant", "content": "Hello Ann."},
                                {"role": "user", "content": "Who am I?"}]
    assert asked["Who are we?"] == [SYSTEM, {"role": "user", "content": "We are a forum."},
                              {"role": "assistant", "content": "Noted."},
                              {"role": "user", "content": "Who are we?"}]
    # a topic (the forum's, the private chat's) starts its own conversation
    assert asked["topic five"] == [SYSTEM, {"role": "user", "content": "topic five"}]
    assert asked["private topic"] == [SYSTEM, {"role": "user", "content": "private topic"}]
    # a new process on the same store: each topic goes on with its own memory
    # (new message ids: the store remembers the ids it answered)
    await simulate(path, [in_topic(5, "still five", message_id=10),
                          {"user_id": 42, "thread_id": 4, "text": "still four",
                           "message_id": 11}])
    asked = requests_by_message(sim)
    assert user_texts(asked["still five"]) == ["topic five", "still five"]
    assert user_texts(asked["still four"]) == ["private topic", "still four"]
