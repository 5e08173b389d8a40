"""Hot reload: SIGHUP re-reads the config file; a broken file keeps the old config; unchanged
backends keep their instance, changed ones are rebuilt, removed ones finish their turns."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Literal

import pytest
from run_driver import Proc

import tgmux.backends.lucydream as lucydream_plugin
from tgmux.backend import Backend, BackendSettings, Notice, Text
from tgmux.backends.lucydream.simulator import LucyDreamSimulator
from tgmux.bootstrap import load
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl
from tgmux.reload import Reloader
from tgmux.store import open_store

KEY = "key-one"


def lucy_config(sim: LucyDreamSimulator, *, default: str = "lucy", extra: str = "",
                store: str = "memory://") -> str:
    return f"""store: {store}
backends:
  lucy:
    type: lucydream
    api_key: {KEY}
    base_url: {sim.base_url}
    timeout: 5
  echo:
    type: echo
    prefix: "echo: "
{extra}
default: {default}
"""


@pytest.fixture
async def sim():
    async with LucyDreamSimulator(api_keys={KEY}, free_messages=None) as server:
        yield server


def creates(sim: LucyDreamSimulator) -> int:
    return sum(1 for r in sim.requests if r.path.endswith("create-sub-user"))


async def started(path: Path) -> tuple[EngineHarness, Reloader]:
    config, pm = load(path, plugins=[lucydream_plugin])
    harness = EngineHarness(config, store=open_store(config.data.store.url), plugin_manager=pm)
    await harness.engine.start()
    return harness, Reloader(harness.engine, pm, path)


@pytest.fixture
async def running(sim, tmp_path: Path):
    """An engine started on a config file naming lucy and echo (lucy the default), its
    reloader, and the file."""
    path = tmp_path / "config.yaml"
    path.write_text(lucy_config(sim))
    h, reloader = await started(path)
    try:
        yield path, h, reloader
    finally:
        await h.engine.stop()


async def test_a_changed_default_routes_the_next_message_and_kept_backends_keep_state(
        running, sim, caplog) -> None:
    path, h, reloader = running
    assert await h.say("hello", user_id=42) == [Text("You said: hello")]
    lucy = h.engine.backends["lucy"]
    path.write_text(lucy_config(sim, default="echo"))
    with caplog.at_level(logging.INFO, "tgmux.reload"):
        assert await reloader.reload()
    assert f"config reloaded from {path}: default: lucy → echo" in caplog.text
    assert await h.say("next", user_id=42, message_id=2) == [Text("echo: next")]
    # back to lucy, and echo's prefix changed: lucy is the same instance (its sub-user is
    # not created again), echo is rebuilt
    echo = h.engine.backends["echo"]
    path.write_text(lucy_config(sim).replace('"echo: "', '"ECHO: "'))
    caplog.clear()
    with caplog.at_level(logging.INFO, "tgmux.reload"):
        assert await reloader.reload()
    assert "default: echo → lucy; backend echo: rebuilt" in caplog.text
    assert h.engine.backends["lucy"] is lucy
    assert h.engine.backends["echo"] is not echo
    assert await h.say("third", user_id=42, message_id=3) == [Text("You said: third")]
    assert creates(sim) == 1


async def test_a_broken_file_keeps_the_old_config_and_says_where(running, sim, caplog) -> None:
    path, h, reloader = running
    path.write_text(lucy_config(sim, default="nosuch"))
    with caplog.at_level(logging.INFO, "tgmux.reload"):
        assert not await reloader.reload()
    line = lucy_config(sim).splitlines().index("default: lucy") + 1
    assert f"{path}:{line}: default: unknown backend 'nosuch'" in caplog.text
    assert "config not reloaded (1 problem(s) above); the old config keeps running" \
        in caplog.text
    path.write_text("backends: [")  # not YAML at all
    assert not await reloader.reload()
    assert f"{path}:1: not valid YAML" in caplog.text
    path.unlink()
    assert not await reloader.reload()
    assert f"{path}: cannot read: No such file or directory" in caplog.text
    assert await h.say("still there?", user_id=42) == [Text("You said: still there?")]


async def test_what_needs_a_restart_is_said_and_not_applied(running, sim, tmp_path: Path,
                                                            caplog) -> None:
    path, h, reloader = running
    store = h.engine.store
    path.write_text(lucy_config(sim, default="echo", store=f"sqlite:///{tmp_path}/x.db",
                                extra="engine: {concurrency: 3}\n"
                                      "telegram: {api_id: 1, api_hash: "
                                      + "0123456789abcdef" * 2 + "}"))
    with caplog.at_level(logging.INFO, "tgmux.reload"):
        assert await reloader.reload()
    assert ("default: lucy → echo; not applied, needs a restart: store, "
            "engine.concurrency, telegram") in caplog.text
    assert h.engine.store is store
    assert h.engine.config.data.store.url == "memory://"
    assert h.engine.config.account().telegram.api_id is None
    assert not (tmp_path / "x.db").exists()
    assert await h.say("hi", user_id=42) == [Text("echo: hi")]


async def test_a_removed_backend_finishes_its_turn_then_closes(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    slow = "backends:\n  slow: {type: echo, stream: true, delay: 0.2}\n  fast: {type: echo}\n"
    path.write_text(f"store: memory://\n{slow}default: slow\n")
    h, reloader = await started(path)
    try:
        old = h.engine.backends["slow"]
        closed = asyncio.Event()
        real_close = old.close

        async def close() -> None:
            closed.set()
            await real_close()

        old.close = close  # type: ignore[method-assign]
        turn = asyncio.create_task(h.say("one two three four", user_id=7))
        async with asyncio.timeout(10):  # the reply is streaming: its first draft is out
            while not any(chat == 7 for chat, _ in h.delivered):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        path.write_text("store: memory://\nbackends:\n  fast: {type: echo}\ndefault: fast\n")
        assert await reloader.reload()
        assert "slow" not in h.engine.backends and not closed.is_set()
        assert (await turn)[-1] == Text("one two three four")  # after its drafts
        await asyncio.wait_for(closed.wait(), 10)  # closed soon after its turn (a hang: never)
        assert await h.say("next", user_id=7, message_id=2) == [Text("next")]
    finally:
        await h.engine.stop()


class PortSettings(BackendSettings):
    type: Literal["port"] = "port"
    port: int
    greeting: str = "hi"


class PortBackend(Backend):
    """Binds a port while it runs, as a webhook receiver does."""

    type_name = "port"
    Settings = PortSettings

    async def start(self) -> None:
        self.server = await asyncio.start_server(lambda r, w: None, "127.0.0.1",
                                                 self.settings.port)

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def reply(self, turn):
        yield Text(f"{self.settings.greeting} {turn.text}")


class port_plugin:  # a plugin object, as a module would be
    @staticmethod
    @hookimpl
    def tgmux_backend_types():
        return PortBackend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_rebuilt_backend_that_needs_what_the_old_one_holds_gets_it(
        tmp_path: Path, caplog) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(f"store: memory://\nbackends:\n  p: {{type: port, port: {port}}}\n"
                    "default: p\n")
    config, pm = load(path, plugins=[port_plugin])
    h = EngineHarness(config, store=open_store("memory://"), plugin_manager=pm)
    await h.engine.start()
    reloader = Reloader(h.engine, pm, path)
    try:
        old = h.engine.backends["p"]
        path.write_text(f"store: memory://\nbackends:\n  p: {{type: port, port: {port}, "
                        "greeting: hello}\ndefault: p\n")
        with caplog.at_level(logging.INFO, "tgmux.reload"):
            assert await reloader.reload()  # the old one was closed first, then it started
        assert h.engine.backends["p"] is not old
        assert await h.say("you", user_id=7) == [Text("hello you")]
        # a port nobody can have: the reload fails as a whole, the old config keeps running
        busy = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        taken = busy.sockets[0].getsockname()[1]
        path.write_text(f"store: memory://\nbackends:\n  p: {{type: port, port: {port}}}\n"
                        f"  q: {{type: port, port: {taken}}}\ndefault: q\n")
        caplog.clear()
        with caplog.at_level(logging.INFO, "tgmux.reload"):
            assert not await reloader.reload()
        busy.close()
        assert f"{path}:4: backends.q: could not start" in caplog.text
        assert "the old config keeps running" in caplog.text
        assert sorted(h.engine.backends) == ["p"]
        assert await h.say("again", user_id=7, message_id=2) == [Text("hello again")]
    finally:
        await h.engine.stop()


async def test_usage_and_status(sim, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    limits = ("admins: [1]\nlimits: {per_user: {messages: 10, per: 10s}, "
              "daily_per_user: 200}\n")
    path.write_text(lucy_config(sim, extra=limits))
    h, _ = await started(path)
    try:
        for n in range(3):
            await h.say(f"m{n}", user_id=42, message_id=n + 1)
        (usage,) = await h.say("/usage", user_id=42, message_id=10)
        lines = usage.text.splitlines()
        assert lines[:2] == ["Your usage:", "You: 3 of 10 messages per 10 s"]  # not counted
        assert lines[2].startswith("Today: 3 of 200 messages (resets in ")
        (admin,) = await h.say("/usage", user_id=1, message_id=11)
        assert admin.text.splitlines()[-1] == "You are an admin here: no limits apply to you."
        assert await h.say("/status", user_id=42, message_id=12) == [
            Notice("Only the bot's admins can use /status.")]
        (status,) = await h.say("/status", user_id=1, message_id=13)
        head, lucy, echo = status.text.splitlines()
        assert head == "AI backends (this process):"
        assert lucy.startswith("lucy (lucydream) · circuit closed · p50 ")
        assert lucy.endswith(" s over 3 replies")
        assert echo == "echo (echo) · circuit closed · no replies yet"
    finally:
        await h.engine.stop()


# -- through the command line ------------------------------------------------------------------


async def _line(stream: asyncio.StreamReader, timeout: float = 30) -> str:
    # 30 s: the first line waits for a cold start (about 1.5 s of CPU), slow on a loaded machine
    line = await asyncio.wait_for(stream.readline(), timeout)
    assert line, "the process ended"
    return line.decode()


async def _reply(proc: asyncio.subprocess.Process) -> dict:
    assert proc.stdout is not None
    while True:
        action = json.loads(await _line(proc.stdout))
        if action["action"] == "send_message":
            return action


async def _say(proc: asyncio.subprocess.Process, text: str, message_id: int) -> str:
    assert proc.stdin is not None
    line = {"user_id": 42, "text": text, "message_id": message_id}
    proc.stdin.write((json.dumps(line) + "\n").encode())
    await proc.stdin.drain()
    return (await _reply(proc))["text"]


async def _reloaded(proc: asyncio.subprocess.Process, wanted: str) -> tuple[str, float]:
    """SIGHUP, then the stderr line that contains ``wanted`` and the seconds it took."""
    assert proc.stderr is not None
    loop = asyncio.get_running_loop()
    sent = loop.time()
    proc.send_signal(signal.SIGHUP)
    while wanted not in (line := await _line(proc.stderr)):
        pass
    return line, loop.time() - sent


async def test_sighup_reloads_a_running_simulate(sim, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    store = f"sqlite:///{tmp_path}/tgmux.db"
    path.write_text(lucy_config(sim, store=store))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgmux", "simulate", "-c", str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        assert await _say(proc, "hello", 1) == "You said: hello"
        path.write_text(lucy_config(sim, default="echo", store=store))
        # at once, without a message to wake it: the line comes within _line's deadline (how
        # soon depends on the machine's load: not asserted)
        line, _ = await _reloaded(proc, "config reloaded")
        assert line.rstrip().endswith(f"config reloaded from {path}: default: lucy → echo")
        assert await _say(proc, "now echo", 2) == "echo: now echo"
        path.write_text(lucy_config(sim, default="nosuch", store=store))
        line, _ = await _reloaded(proc, "default:")
        assert f"{path}:" in line and "unknown backend 'nosuch'" in line
        assert "the old config keeps running" in await _line(proc.stderr)
        assert await _say(proc, "still echo", 3) == "echo: still echo"
        path.write_text(lucy_config(sim, store=store))
        await _reloaded(proc, "default: echo → lucy")
        assert await _say(proc, "lucy again", 4) == "You said: lucy again"
        assert creates(sim) == 1  # lucy kept its instance and its sub-user
        assert proc.stdin is not None
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sighup_reloads_a_running_console_chat(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    two = "backends:\n  a: {type: echo, prefix: 'a: '}\n  b: {type: echo, prefix: 'b: '}\n"
    path.write_text(f"store: memory://\n{two}default: a\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgmux", "chat", "-c", str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"one\n")
        assert await _line(proc.stdout) == "a: one\n"
        path.write_text(f"store: memory://\n{two}default: b\n")
        await _reloaded(proc, "default: a → b")
        proc.stdin.write(b"two\n")
        assert await _line(proc.stdout) == "b: two\n"
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_sighup_reloads_a_running_tgmux_run(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    base = (f"store: sqlite:///{tmp_path}/tgmux.db\ntelegram: {{api_id: 1, api_hash: "
            f"{'0123456789abcdef' * 2}, bot_token: '1:{'t' * 35}'}}\nbackends:\n"
            "  a: {type: echo, prefix: 'a: '}\n  b: {type: echo, prefix: 'b: '}\n")
    path.write_text(base + "default: a\n")
    proc = Proc(path, {**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        proc.wait_log("tgmux is running on Telegram", 20)
        proc.send(chat_type="private", chat_id=42, user_id=42, text="one")
        assert proc.reply()["text"] == "a: one"
        path.write_text(base.replace("bot_token: '1:", "bot_token: '2:") +
                        "default: b\n")
        proc.popen.send_signal(signal.SIGHUP)
        proc.wait_log("config reloaded", 30)  # at once (how soon: the machine's load)
        assert ("default: a → b; not applied, needs a restart: telegram"
                in proc.err[-1])
        proc.send(chat_type="private", chat_id=42, user_id=42, text="two")
        assert proc.reply()["text"] == "b: two"
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(20) == 0
    finally:
        proc.kill()
