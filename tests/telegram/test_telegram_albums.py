"""Albums and bursts through ``tgmux simulate`` (a subprocess, JSON lines in and out): an
album's items, and with ``engine.merge_window`` one user's quick messages, are one turn,
answered once; the OpenAI simulator shows the exact request. And after a kill mid-reply, the
next run tells the user once, and every merged message is done.

Nothing here waits on the machine's speed to decide what merges: the lines that must merge
are all in the store's inbox before their chat's worker takes the first of them (the chat is
busy: the provider holds its answer to an earlier message until then), so no wait decides it;
lines that must stay apart have Telegram dates far apart (``date``), or someone else, or a
command, between them."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tgmux.backends.openai.simulator import Model, OpenAISimulator

KEY = "sk-album-test"
#: three different "photos" (the simulator takes any bytes a data: URL carries)
PHOTOS = [b"\x89PNG\r\n\x1a\n" + bytes([n]) * 40 for n in (1, 2, 3)]

CONFIG = """
telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}
store: "%(store)s"
engine: {merge_window: %(window)s}
backends:
  gpt:
    type: openai
    base_url: %(url)s
    api_key: %(key)s
    model: eyes
    vision: true
    stream: false
    history: {max_turns: 0}
default: gpt
"""


class HeldSimulator(OpenAISimulator):
    """Answers its first request only once ``release`` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = asyncio.Event()
        self.release.set()
        self._first = True

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        if self._first:
            self._first = False
            await self.release.wait()
        return await super().chat_completions(request)


@pytest.fixture
async def sim() -> AsyncIterator[HeldSimulator]:
    async with HeldSimulator(api_keys={KEY}, models=[Model("eyes", vision=True)]) as server:
        yield server  # type: ignore[misc]


def write_config(tmp_path: Path, sim: OpenAISimulator, window: float = 0,
                 store: str = "memory://") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG % {"store": store, "url": sim.base_url, "key": KEY,
                              "window": window})
    return path


async def simulate(config_path: Path, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``tgmux simulate -c CONFIG`` with these input lines; its output actions (without
    blocking the loop: the simulator answers from this process)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgmux", "simulate", "-c", str(config_path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    out, err = await asyncio.wait_for(process.communicate(data), 90)
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


def inbox_states(db: Path, chat_id: int) -> dict[int, str]:
    """The chat's messages in the inbox (read beside the running process: SQLite in WAL mode)."""
    try:
        with sqlite3.connect(db) as connection:
            return dict(connection.execute(
                "SELECT message_id, state FROM inbox WHERE chat_id = ?", (chat_id,)).fetchall())
    except sqlite3.OperationalError:  # not created yet
        return {}


async def simulate_held(sim: HeldSimulator, tmp_path: Path, lines: list[dict[str, Any]], *,
                        window: float = 0) -> list[dict[str, Any]]:
    """``simulate`` with the provider holding its answer to the first line until every line
    is in the inbox (each line a message of chat 42)."""
    db = tmp_path / "held.db"
    config = write_config(tmp_path, sim, window=window, store=f"sqlite:///{db}")
    sim.release.clear()
    run = asyncio.create_task(simulate(config, lines))
    deadline = asyncio.get_running_loop().time() + 60
    while len(inbox_states(db, 42)) < len(lines):
        assert not run.done() and asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    sim.release.set()
    return await run


def replies(actions: list[dict[str, Any]]) -> list[str]:
    return [a["text"] for a in actions if a["action"] == "send_message"]


def user_content(sim: OpenAISimulator) -> list[Any]:
    return [c.messages[-1]["content"] for c in sim.completions]


def data_url(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


async def test_an_album_of_three_photos_is_one_turn_with_every_photo_and_the_caption(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    files = []
    for n, data in enumerate(PHOTOS):
        files.append(tmp_path / f"p{n}.png")
        files[-1].write_bytes(data)
    album = [{"user_id": 42, "photo": str(files[0]), "text": "which is the cat?",
              "media_group_id": "13579"},
             {"user_id": 42, "photo": str(files[1]), "media_group_id": "13579"},
             {"user_id": 42, "photo": str(files[2]), "media_group_id": "13579"}]
    out = await simulate_held(sim, tmp_path, [
        {"user_id": 42, "text": "hello"}, *album, {"user_id": 42, "text": "and now?"}])
    assert replies(out) == ["You said: hello", "You said: which is the cat? [I see 3 images]",
                            "You said: and now?"]
    assert user_content(sim) == [
        "hello",
        [{"type": "text", "text": "which is the cat?"},
         *({"type": "image_url", "image_url": {"url": data_url(d)}} for d in PHOTOS)],
        "and now?"]


async def test_two_albums_one_after_the_other_are_two_turns(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    photo.write_bytes(PHOTOS[0])
    lines = [{"user_id": 42, "photo": str(photo), "media_group_id": group,
              **({"text": f"album {group}"} if n == 0 else {})}
             for group in ("a", "b") for n in range(2)]
    out = await simulate_held(sim, tmp_path, [{"user_id": 42, "text": "hello"}, *lines])
    assert replies(out) == ["You said: hello", "You said: album a [I see 2 images]",
                            "You said: album b [I see 2 images]"]


async def test_a_burst_within_merge_window_is_one_turn_answered_once(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    # sent in the same second (Telegram's date): dated as they are read, a stalled run could
    # put more than the window between them
    now = int(time.time())
    lines = [{"user_id": 42, "text": text, "date": now}
             for text in ("so I was thinking", "about cats", "what do they eat?")]
    # (the first line was sent long before: it is a turn of its own)
    earlier = {"user_id": 42, "text": "hello", "date": now - 600}
    out = await simulate_held(sim, tmp_path, [earlier, *lines], window=2)
    assert replies(out) == ["You said: hello",
                            "You said: so I was thinking\nabout cats\nwhat do they eat?"]
    assert user_content(sim) == ["hello", "so I was thinking\nabout cats\nwhat do they eat?"]


async def test_without_merge_window_each_message_is_answered(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    lines = [{"user_id": 42, "text": text} for text in ("one", "two", "three")]
    out = await simulate(write_config(tmp_path, sim, window=0), lines)
    assert replies(out) == ["You said: one", "You said: two", "You said: three"]


async def test_a_burst_keeps_apart_other_users_commands_and_messages_sent_later(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    group = -1001234567890
    now = int(time.time())
    lines = [
        # two users of one group, one line each, at the same moment: two turns
        {"chat_id": group, "user_id": 1, "text": "@tgmux_bot ann here"},
        {"chat_id": group, "user_id": 2, "text": "@tgmux_bot bob here"},
        # a command is never merged: neither with the line before it nor with the one after
        {"user_id": 7, "text": "hello"},
        {"user_id": 7, "text": "/help"},
        {"user_id": 7, "text": "again"},
        # sent ten seconds apart (Telegram's dates), even though they come in together
        {"user_id": 8, "text": "first thought", "date": now - 60},
        {"user_id": 8, "text": "much later", "date": now - 50},
    ]
    out = await simulate(write_config(tmp_path, sim, window=2), lines)
    answered = [(a["chat_id"], a.get("reply_to_message_id")) for a in out
                if a["action"] == "send_message"]
    assert sorted(answered, key=str) == sorted(
        [(group, 1), (group, 2), (7, None), (7, None), (7, None), (8, None), (8, None)],
        key=str)
    assert sorted(user_content(sim)) == sorted([
        "ann here", "bob here", "hello", "again", "first thought", "much later"])


def test_a_burst_cut_off_by_a_kill_is_told_once_and_every_message_is_done(
        tmp_path: Path) -> None:
    from test_telegram_simulate import killed_and_run_again

    db = tmp_path / "sim.db"
    config = tmp_path / "config.yaml"
    # a window far longer than the lines take to come; the command ends the wait at once (it
    # is never merged), and it is not answered before the kill: it waits behind the burst
    config.write_text(f"store: sqlite:///{db}\nplugins: [tg_test_backends]\n"
                      "engine: {merge_window: 30}\n"
                      "backends:\n  slow: {type: slow}\ndefault: slow\n")
    second = killed_and_run_again(config, [json.dumps({"user_id": 7, "text": t})
                                           for t in ("wait 30", "and more", "and more",
                                                     "/start")])
    sent = [json.loads(line) for line in second.stdout.splitlines()]
    texts = [a["text"] for a in sent if a["action"] == "send_message"]
    assert len(texts) == 2, second.stdout + second.stderr
    assert texts[0] == ("I was restarted while answering your message “wait 30\nand more\n"
                        "and more” and may not have finished. Please send it again if you "
                        "still need an answer.")
    assert inbox_states(db, 7) == {1: "done", 2: "done", 3: "done", 4: "done"}
