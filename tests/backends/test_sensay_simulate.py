"""Sensay's per-Telegram-user mode and group context through ``tgmux simulate`` (the real
Pyrogram client on the fake Telegram) against the simulator, over a SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tgmux.backends.sensay.simulator import Replica, SensaySimulator

SECRET = "org-secret-sim"
REPLICA = "66666666-6666-4666-8666-666666666666"
COMPLETION = f"/v1/replicas/{REPLICA}/chat/completions/telegram"
HISTORY = f"/v1/replicas/{REPLICA}/chat/history/telegram"
GROUP = -1001234567890

CONFIG = """
telegram: {{flood: {{private_per_second: 100, group_per_minute: 6000}}}}
store: sqlite:///{db}
backends:
  abe:
    type: sensay
    base_url: {url}
    organization_secret: {secret}
    replica_uuid: {replica}
    stream: false
    record_group_context: true
default: abe
"""


@pytest.fixture
async def sim() -> AsyncIterator[SensaySimulator]:
    async with SensaySimulator(organization_secret=SECRET,
                               replicas=[Replica(REPLICA, "Abe")]) as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def config(tmp_path: Path, sim: SensaySimulator) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(db=tmp_path / "tgmux.db", url=sim.base_url, secret=SECRET,
                                  replica=REPLICA))
    return path


async def simulate(config: Path, lines: list[dict]) -> list[dict]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgmux", "simulate", "-c", str(config),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    out, err = await asyncio.wait_for(proc.communicate(text.encode()), 60)
    assert proc.returncode == 0, err.decode()
    return [a for a in map(json.loads, out.decode().splitlines())
            if a["action"] == "send_message"]


def calls(sim: SensaySimulator) -> list[tuple[str, str, str | None]]:
    return [(r.method, r.path, r.header("X-USER-ID")) for r in sim.requests]


async def test_two_telegram_users_two_sensay_users_once_each_across_a_restart(
        sim, config) -> None:
    sent = await simulate(config, [{"user_id": 42, "text": "hi", "message_id": 1},
                                   {"user_id": 43, "text": "hello", "message_id": 1}])
    assert sorted((a["chat_id"], a["text"]) for a in sent) == [
        (42, "[Abe] hi (history: 0)"), (43, "[Abe] hello (history: 0)")]
    creates = sorted(r.json["linkedAccounts"][0]["accountID"]
                     for r in sim.requests_to("/v1/users", "POST"))
    assert creates == ["42", "43"]
    assert {r.header("X-USER-ID-TYPE") for r in sim.requests_to(COMPLETION)} == {"telegram"}
    assert {r.header("X-API-Version") for r in sim.requests} == {"2025-04-01"}
    assert len(sim.created_users) == 2

    sim.requests.clear()  # a new process over the same store: the users are known
    sent = await simulate(config, [{"user_id": 42, "text": "back", "message_id": 2},
                                   {"user_id": 43, "text": "me too", "message_id": 2}])
    assert sorted(a["text"] for a in sent) == ["[Abe] back (history: 2)",
                                               "[Abe] me too (history: 2)"]
    assert sorted(calls(sim)) == [("POST", COMPLETION, "42"), ("POST", COMPLETION, "43")]


async def test_two_simulate_processes_racing_create_one_user(sim, config, tmp_path) -> None:
    # Two deployments (each its own store: one store is one process's, as `tgmux run`'s
    # leases make it) meet one user at once: Sensay's 409 keeps it one user.
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text().replace("tgmux.db", "other.db"))
    sim.latency = 0.3  # each request takes a while: the two first contacts overlap
    one, two = await asyncio.gather(
        simulate(config, [{"user_id": 44, "text": "from one", "message_id": 1}]),
        simulate(other, [{"user_id": 44, "text": "from two", "message_id": 2}]))
    assert [a["text"].split(" (")[0] for a in one + two] == ["[Abe] from one",
                                                            "[Abe] from two"]
    assert len(sim.created_users) == 1
    assert 1 <= len(sim.requests_to("/v1/users", "POST")) <= 2  # a second one met a 409
    assert {t.user for t in sim.turns} == {sim.user_for("telegram", "44")}


async def test_an_unaddressed_group_message_is_recorded_then_the_mention_answered(
        sim, config) -> None:
    sent = await simulate(config, [
        {"chat_id": GROUP, "chat_type": "supergroup", "chat_title": "Book club", "user_id": 7,
         "username": "carol", "text": "the meeting moved to 5", "message_id": 30},
        {"chat_id": GROUP, "user_id": 42, "text": "@tgmux_bot when is the meeting?",
         "message_id": 31},
    ])
    assert sent == [{"action": "send_message", "chat_id": GROUP, "message_id": 1001,
                     "text": "[Abe] when is the meeting? (history: 1)",
                     "reply_to_message_id": 31}]
    assert calls(sim) == [("GET", "/v1/users/me", "7"), ("POST", "/v1/users", None),
                          ("POST", HISTORY, "7"),
                          ("GET", "/v1/users/me", "42"), ("POST", "/v1/users", None),
                          ("POST", COMPLETION, "42")]
    recorded, completion = sim.requests[2], sim.requests[5]
    assert recorded.json == {"content": "the meeting moved to 5", "telegram_data": {
        "chat_type": "supergroup", "chat_id": GROUP, "chat_name": "Book club", "user_id": 7,
        "username": "carol", "message_id": 30}}
    assert recorded.header("X-USER-ID-TYPE") == completion.header("X-USER-ID-TYPE") == "telegram"
    # the chat keeps its title for the line that gave none
    assert completion.json == {"content": "when is the meeting?", "skip_chat_history": False,
                               "telegram_data": {"chat_type": "supergroup", "chat_id": GROUP,
                                                 "chat_name": "Book club", "user_id": 42,
                                                 "message_id": 31}}


async def test_topics_name_their_thread_but_share_the_users_sensay_history(
        sim, config) -> None:
    # Sensay keeps one history per user and replica: tgmux tells it the topic
    # (telegram_data.message_thread_id) but cannot give a topic a history of its own
    sent = await simulate(config, [
        {"user_id": 42, "thread_id": 3, "text": "in three", "message_id": 1},
        {"user_id": 42, "thread_id": 9, "text": "in nine", "message_id": 2}])
    # (after those: chats are answered concurrently)
    sent += await simulate(config, [{"chat_id": GROUP, "user_id": 42, "thread_id": 5,
                                     "text": "@tgmux_bot forum", "message_id": 3}])
    assert [(a["message_thread_id"], a["text"]) for a in sent] == [
        (3, "[Abe] in three (history: 0)"), (9, "[Abe] in nine (history: 2)"),
        (5, "[Abe] forum (history: 4)")]
    asked = sim.requests_to(COMPLETION)
    assert [(r.header("X-USER-ID"), r.json["telegram_data"].get("message_thread_id"))
            for r in asked] == [("42", 3), ("42", 9), ("42", 5)]


async def test_group_context_n_records_the_last_n_when_the_bot_is_asked(sim, config) -> None:
    # group_context: 2 on the group's route (no record_group_context): the lines are kept by
    # tgmux and recorded in the replica's history, each as its sender's, just before the
    # completion that answers the mention; the oldest line is beyond N
    config.write_text(config.read_text().replace("    record_group_context: true\n", "")
                      + "routes:\n  - match: {chat_type: supergroup}\n    backend: abe\n"
                        "    group_context: 2\n")
    group = {"chat_id": GROUP, "chat_type": "supergroup", "chat_title": "Book club"}
    sent = await simulate(config, [
        {**group, "user_id": 7, "username": "carol", "text": "hello all", "message_id": 29},
        {**group, "user_id": 8, "text": "the meeting moved to 5", "message_id": 30},
        {**group, "user_id": 7, "username": "carol", "text": "thanks", "message_id": 31},
        {**group, "user_id": 42, "text": "@tgmux_bot when is the meeting?", "message_id": 32},
        {**group, "user_id": 42, "text": "@tgmux_bot and where?", "message_id": 33},
    ])
    assert [a["text"] for a in sent] == ["[Abe] when is the meeting? (history: 2)",
                                         "[Abe] and where? (history: 4)"]
    assert calls(sim) == [("GET", "/v1/users/me", "8"), ("POST", "/v1/users", None),
                          ("POST", HISTORY, "8"),
                          ("GET", "/v1/users/me", "7"), ("POST", "/v1/users", None),
                          ("POST", HISTORY, "7"),
                          ("GET", "/v1/users/me", "42"), ("POST", "/v1/users", None),
                          ("POST", COMPLETION, "42"),
                          ("POST", COMPLETION, "42")]  # each line is recorded once
    first, second = [r.json for r in sim.requests_to(HISTORY)]
    assert first == {"content": "the meeting moved to 5", "telegram_data": {
        "chat_type": "supergroup", "chat_id": GROUP, "chat_name": "Book club", "user_id": 8,
        "message_id": 30}}
    assert second == {"content": "thanks", "telegram_data": {
        "chat_type": "supergroup", "chat_id": GROUP, "chat_name": "Book club", "user_id": 7,
        "username": "carol", "message_id": 31}}
    # as the completion: not a transcript in the content
    assert [r.json["content"] for r in sim.requests_to(COMPLETION)] == [
        "when is the meeting?", "and where?"]


async def test_record_group_context_with_group_context_records_each_once_as_it_comes(
        sim, config) -> None:
    config.write_text(config.read_text() + "routes:\n  - match: {chat_type: supergroup}\n"
                      "    backend: abe\n    group_context: 5\n")
    group = {"chat_id": GROUP, "chat_type": "supergroup", "user_id": 7}
    sent = await simulate(config, [
        {**group, "text": "one", "message_id": 40}, {**group, "text": "two", "message_id": 41},
        {**group, "text": "@tgmux_bot three?", "message_id": 42}])
    assert [a["text"] for a in sent] == ["[Abe] three? (history: 2)"]
    assert calls(sim) == [("GET", "/v1/users/me", "7"), ("POST", "/v1/users", None),
                          ("POST", HISTORY, "7"), ("POST", HISTORY, "7"),
                          ("POST", COMPLETION, "7")]
    assert [r.json["content"] for r in sim.requests_to(HISTORY)] == ["one", "two"]
