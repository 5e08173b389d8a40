"""LucyDream keeps a conversation per sub-user: through ``tgmux simulate``, each topic (a
forum's, a private chat's) has a sub-user of its own, chats without topics keep the sub-user
they had, and the map survives a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_openai_telegram import simulate

from tgmux.backends.lucydream.simulator import LucyDreamSimulator
from tgmux.store import open_store

FORUM = -1001234567890

CONFIG = """
telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}
store: "sqlite:///%(db)s"
backends:
  lucy: {type: lucydream, api_key: lucy-key, base_url: "%(url)s", sub_user: %(mode)s}
default: lucy
"""


@pytest.fixture
async def lucy() -> AsyncIterator[LucyDreamSimulator]:
    async with LucyDreamSimulator(api_keys=["lucy-key"], free_messages=None) as server:
        yield server  # type: ignore[misc]


def asked(lucy: LucyDreamSimulator) -> list[tuple[str, str]]:
    """(sub-user username, message) of each send-message request."""
    names = {u.user_id: u.username for u in lucy.sub_users.values()}
    return [(names[r.json["user_id"]], r.json["message"])
            for r in lucy.requests_to("send-message")]


def write_config(tmp_path: Path, lucy: LucyDreamSimulator, mode: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG % {"db": tmp_path / "tgmux.db", "url": lucy.base_url, "mode": mode})
    return path


async def test_per_user_each_topic_has_its_own_sub_user(
        lucy: LucyDreamSimulator, tmp_path: Path) -> None:
    # a sub-user made (and mapped) before topics were told apart
    old = lucy.add_sub_user("tg_42", api_key="lucy-key")
    store = open_store(f"sqlite:///{tmp_path / 'tgmux.db'}")
    await store.open()
    try:
        await store.kv_set("backend:lucy", "user:42", old.user_id)
    finally:
        await store.close()
    path = write_config(tmp_path, lucy, "per_user")
    await simulate(path, [
        {"user_id": 42, "text": "main"},
        {"user_id": 42, "thread_id": 3, "text": "private topic"},
        {"chat_id": FORUM, "user_id": 42, "thread_id": 7, "text": "@tgmux_bot forum topic"},
        {"chat_id": FORUM, "user_id": 42, "text": "@tgmux_bot forum"}])
    assert sorted(asked(lucy)) == [
        ("tg_42", "forum"), ("tg_42", "main"),
        (f"tg_42_{FORUM}_t7", "forum topic"), ("tg_42_t3", "private topic")]
    assert sorted(r.json["username"] for r in lucy.requests_to("create-sub-user")) == [
        f"tg_42_{FORUM}_t7", "tg_42_t3"]
    # /history in a topic shows that topic's conversation
    out = await simulate(path, [{"user_id": 42, "thread_id": 3, "text": "/history",
                                 "message_id": 20}])
    assert [a["text"] for a in out if a["action"] == "send_message"] == [
        "user: private topic\nassistant: You said: private topic"]


async def test_per_chat_each_forum_topic_has_its_own_sub_user_across_a_restart(
        lucy: LucyDreamSimulator, tmp_path: Path) -> None:
    path = write_config(tmp_path, lucy, "per_chat")
    lines = [{"chat_id": FORUM, "user_id": user, "thread_id": thread, "text": f"@tgmux_bot {t}"}
             for user, thread, t in ((1, 2, "a by ann"), (2, 2, "a by bob"), (1, 5, "b"))]
    await simulate(path, [*lines, {"chat_id": FORUM, "user_id": 1, "text": "@tgmux_bot main"}])
    assert sorted(asked(lucy)) == [
        (f"tg_chat_{FORUM}", "main"), (f"tg_chat_{FORUM}_t2", "a by ann"),
        (f"tg_chat_{FORUM}_t2", "a by bob"), (f"tg_chat_{FORUM}_t5", "b")]
    created = len(lucy.requests_to("create-sub-user"))
    assert created == 3
    # a new process: the topics' sub-users are found in the store, none is made again
    await simulate(path, [{"chat_id": FORUM, "user_id": 2, "thread_id": 5, "message_id": 30,
                           "text": "@tgmux_bot b again"}])
    assert asked(lucy)[-1] == (f"tg_chat_{FORUM}_t5", "b again")
    assert len(lucy.requests_to("create-sub-user")) == created
    assert not lucy.requests_to("sub-users")  # nor looked up
