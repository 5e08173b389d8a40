"""Faults in what tgmux reads (config files, store files, provider text) and what it echoes:
each answered with one clear line and a non-zero exit, in bounded time — never a traceback, a
hang or silence. docs/reliability.md lists them."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tgmux.backend import Backend, BackendSettings, ReplyPart, Text, TextDelta, Turn
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl
from tgmux.store import MemoryStore
from tgmux.text import split_text, utf16_len
from tgmux.types import Notice

ECHO = 'backends:\n  e: {type: echo, prefix: "echo: "}\ndefault: e\n'


def tgmux(*args: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    return subprocess.run([sys.executable, "-m", "tgmux", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines, result.stderr
    return "\n".join(lines)


# -- config files ------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "expected"), [
    (b'backends:\n  e: {type: echo, prefix: "\xff\xfe"}\ndefault: e\n',
     ":2: not UTF-8 text (byte 0xff); save the config as UTF-8"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    (b"# " + b"x" * (30 * 1024 * 1024) + b"\n", "larger than 1024 KiB"),
    (b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
     b"g: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n", "YAML aliases expanding"),
    (b'backends:\n  e: {type: echo}\n  e: {type: echo, prefix: "x"}\ndefault: e\n',
     ":3: backends.e: duplicate key (first at line 2)"),
    (ECHO.encode() + b"log_level: LOUD\n",
     ":4: log_level: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
    (ECHO.encode() + b"admins: [yes]\n",
     ":4: admins[0]: expected a number, not yes/no/true/false"),
    (b'backends:\n  e: {type: echo, prefix: "${UNCLOSED"}\ndefault: e\n',
     ":2: backends.e.prefix: cannot read '${UNCLOSED'"),
    (ECHO.encode() + b'store: "mysql://tgmux:s3cr%40t@db:3306/tgmux"\n',
     "expected sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DATABASE or memory:// "
     "(got 'mysql://tgmux:***@db:3306/tgmux')"),
    (ECHO.encode() + b'store: "postgresql://tgmux:s3cr%40t@db:99999/tgmux"\n',
     "the port is not a number from 1 to 65535"),
    (ECHO.encode() + b"telegram:\n  session_string: garbage\n",
     ":5: telegram.session_string: not a Pyrogram session string"),
    (ECHO.encode() + b"telegram:\n  bot_token: \"123:" + b"a" * 35 + b"\"\n  session_string: "
     + base64.urlsafe_b64encode(bytes(271)).rstrip(b"=") + b"\n",
     ":4: telegram: give bot_token (a bot) or session_string (a user account), not both"),
])
def test_a_bad_config_is_one_clear_error(tmp_path: Path, content: bytes, expected: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    started = time.monotonic()
    error = one_error(tgmux("check", str(config)))
    assert time.monotonic() - started < 20
    assert expected in error
    assert "s3cr" not in error


# -- store files -------------------------------------------------------------------------------


def store_config(tmp_path: Path, db: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(f'store: "sqlite:///{db}"\n{ECHO}')
    return config


#: What each command reads: one message
STDIN = {"chat": "hi\n", "check": "", "simulate": '{"user_id": 1, "text": "hi"}\n'}


@pytest.mark.parametrize("command", ["chat", "check", "simulate"])
def test_a_corrupt_store_file_exits_2_at_once(tmp_path: Path, command: str) -> None:
    db = tmp_path / "tgmux.db"
    db.write_bytes(os.urandom(8192))
    started = time.monotonic()
    error = one_error(tgmux(command, "-c", str(store_config(tmp_path, db)),
                            stdin=STDIN[command]))
    assert time.monotonic() - started < 10  # aiosqlite's thread used to keep it alive forever
    assert "store: cannot open sqlite:///" in error and "file is not a database" in error


@pytest.mark.parametrize("command", ["chat", "check", "simulate"])
def test_a_postgres_store_that_cannot_be_reached_exits_2_with_one_line(
        tmp_path: Path, command: str) -> None:
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = tmp_path / "config.yaml"
    config.write_text(f'store: "postgresql://tgmux:secret@127.0.0.1:{port}/tgmux"\n{ECHO}')
    error = one_error(tgmux(command, "-c", str(config), stdin=STDIN[command]))
    assert f"store: cannot open postgresql://tgmux:***@127.0.0.1:{port}/tgmux" in error
    assert "secret" not in error


def test_a_store_locked_by_another_process_exits_2_within_seconds(tmp_path: Path) -> None:
    db = tmp_path / "tgmux.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        error = one_error(tgmux("chat", "-c", str(store_config(tmp_path, db)), stdin="hi\n"))
        assert time.monotonic() - started < 10
        assert "database is locked" in error or "still locked" in error
    finally:
        holder.close()


def test_an_existing_store_file_readable_by_others_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "tgmux.db"
    sqlite3.connect(db).close()
    db.chmod(0o644)
    result = tgmux("chat", "-c", str(store_config(tmp_path, db)), stdin="hi\n")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_check_says_when_the_store_folder_is_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    error = one_error(tgmux("check", str(store_config(tmp_path, blocker / "sub" / "t.db"))))
    assert "store: cannot create" in error


# -- growth while running ----------------------------------------------------------------------


async def test_the_inbox_is_pruned_while_running(monkeypatch) -> None:
    from tgmux.engine import Engine

    monkeypatch.setattr(Engine, "PRUNE_INTERVAL", 0.05)
    monkeypatch.setattr(Engine, "INBOX_RETENTION", 0.0)
    async with EngineHarness.from_yaml(ECHO) as h:
        for i in range(20):
            await h.say(f"m{i}", user_id=5)
        store = h.store
        assert isinstance(store, MemoryStore)
        deadline = time.monotonic() + 5
        while store.inbox and time.monotonic() < deadline:
            await __import__("asyncio").sleep(0.05)
        assert store.inbox == {}


async def test_memory_store_keeps_a_bounded_number_of_answered_ids(monkeypatch) -> None:
    monkeypatch.setattr(MemoryStore, "MAX_DONE", 10)
    store = MemoryStore()
    for i in range(50):
        await store.inbox_accept(1, i, {"chat": {}})
        await store.inbox_done(1, i)
    assert len(store.inbox) == 10
    assert await store.inbox_accept(1, 49, {}) is False  # the newest are still deduplicated


# -- what providers send -----------------------------------------------------------------------


def test_splitting_is_linear() -> None:
    for text in ("word " * 320_000, "x" * 1_600_000, "😀" * 800_000):
        started = time.process_time()  # CPU time: a stalled process spends none
        parts = split_text(text, 4096)
        assert time.process_time() - started < 3  # was 13 s for 1.6 MB (now about 0.1 s)
        assert all(utf16_len(p) <= 4096 for p in parts)


def test_no_tiny_first_piece_before_a_word_that_needs_a_hard_cut() -> None:
    parts = split_text("e: " + "😀" * 2100, 4096)
    assert [utf16_len(p) for p in parts] == [4095, 108]


class Scripted(Backend):
    """Replies with the parts a test puts in ``SCRIPT``."""

    type_name = "scripted"
    Settings = BackendSettings
    SCRIPT: list[ReplyPart] = []
    reads = 0
    readers: Counter[str] = Counter()  # parts read, by the name of the task that read them

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        for part in Scripted.SCRIPT:
            Scripted.reads += 1
            Scripted.readers[asyncio.current_task().get_name().split("-")[1]] += 1
            yield part


class ScriptedPlugin:
    @hookimpl
    def tgmux_backend_types(self):
        return [Scripted]


SCRIPTED = "backends:\n  s: {type: scripted}\ndefault: s\nengine: {max_reply_chars: 1000}\n"


async def run_script(parts: list[ReplyPart]) -> list[ReplyPart]:
    Scripted.SCRIPT, Scripted.reads, Scripted.readers = parts, 0, Counter()
    async with EngineHarness.from_yaml(SCRIPTED, plugins=[ScriptedPlugin()]) as h:
        got = await h.say("hi", user_id=3)
        await h.engine.usage.settled()  # a cut reply is read on for its usage (tgmux.usage)
        return got


async def test_a_huge_reply_is_cut_with_a_note() -> None:
    got = await run_script([Text("x" * 5_000_000)])
    assert got == [Text("x" * 1000), Notice("The reply was cut at 1,000 characters.")]


@pytest.mark.parametrize("reports_usage", [False, True])
async def test_a_huge_stream_is_cut_and_no_longer_read_by_the_chat(
        reports_usage: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Scripted, "reports_usage", reports_usage)
    got = await run_script([TextDelta("y" * 300)] * 10_000 + [Text("y" * 3_000_000)])
    assert got == [TextDelta("y" * 300)] * 3 + [TextDelta("y" * 100),
                                                Notice("The reply was cut at 1,000 characters.")]
    # the chat's worker stopped at the cut; the rest is read in the background only for the
    # usage that a backend reporting usage sends after the text (bounded by turn_timeout and
    # the byte cap); a backend that reports none is not read on
    assert Scripted.readers == ({"chat": 4, "usage": 9_997} if reports_usage else {"chat": 4})


async def test_lone_surrogates_become_valid_text_and_split_halves_join() -> None:
    got = await run_script([TextDelta("a \ud83d"), TextDelta("\ude00 b \ud83d"),
                            TextDelta(" c"), Text("a \ud83d\ude00 b \ud83d c")])
    assert got == [TextDelta("a "), TextDelta("😀 b "), TextDelta("\ufffd c"),
                   Text("a 😀 b \ufffd c")]
    assert await run_script([Text("end \ud83d")]) == [Text("end \ufffd")]


# -- what tgmux echoes -------------------------------------------------------------------------


async def test_long_arguments_are_not_echoed_back_whole() -> None:
    async with EngineHarness.from_yaml(ECHO + "admins: [1]\n") as h:
        [switch] = await h.say("/backend " + "b" * 10_000, user_id=1)
        [unknown] = await h.say("/" + "c" * 5000, user_id=1)
    assert isinstance(switch, Notice) and len(switch.text) < 200
    assert switch.text.startswith("There is no backend 'bbb")
    assert isinstance(unknown, Notice) and "c" * 41 not in unknown.text  # then what is here
    assert unknown.text.startswith("Unknown command /" + "c" * 37 + "...")


def test_message_texts_stay_out_of_debug_logs(tmp_path: Path, restore_logging: None) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f'store: "sqlite:///{tmp_path}/t.db"\nlog_level: DEBUG\n{ECHO}')
    from tgmux.cli import _setup_logging

    _setup_logging("DEBUG")
    assert logging.getLogger("aiosqlite").getEffectiveLevel() >= logging.INFO


def test_check_shows_each_routes_group_trigger(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text('backends:\n  e: {type: echo}\nroutes:\n  - match: {chat_type: group}\n'
                      "    backend: e\n    group_trigger: always\ndefault: e\n"
                      'store: "memory://"\n')
    result = tgmux("check", str(config))
    assert result.returncode == 0, result.stderr
    assert "1. chat_type=['group'] -> e  (groups: always)" in result.stdout


def test_console_group_messages_need_a_mention(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f'store: "memory://"\n{ECHO}')
    result = tgmux("chat", "-c", str(config), "--chat-type", "group", "--chat-id", "-5",
                   stdin="chatter\n@bot hello\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello\n"


def test_backends_listing_describes_a_backend_by_its_docstring() -> None:
    from tgmux.cli import _describe

    class ThirdParty(Backend):
        """Talks to a provider nobody here wrote.

        More lines the listing does not show."""

    assert _describe(ThirdParty) == "Talks to a provider nobody here wrote."
    assert _describe(Scripted) == "Replies with the parts a test puts in ``SCRIPT``."


def test_sigterm_during_a_console_reply_finishes_it_then_exits(tmp_path: Path) -> None:
    import signal

    from child import Child, child_env, gated_config, hold, let_go, wait_file

    hold(tmp_path, "reply-1")
    proc = Child("chat", "-c", str(gated_config(tmp_path)), env=child_env(tmp_path))
    try:
        # more than the read-ahead queue holds: SIGTERM must not wait behind them
        proc.write("hi\n" + "not read yet\n" * 3000)
        wait_file(tmp_path / "reply-1", child=proc)  # the first reply is under way
        proc.signal(signal.SIGTERM)
        proc.wait_log("stop requested")
        let_go(tmp_path, "reply-1")
        code = proc.wait()
    finally:
        proc.kill()
    assert code == 0, proc.stderr()
    assert proc.stdout() == "gated: hi\n"
    assert "Traceback" not in proc.stderr()


async def test_a_restart_notice_that_cannot_be_delivered_is_logged_as_lost(caplog) -> None:
    from tgmux.bootstrap import load_text
    from tgmux.engine import Engine
    from tgmux.types import ChatIdentity, IncomingMessage

    class Undeliverable:
        async def deliver(self, chat, parts, *, reply_to_message_id):
            return [p async for p in parts if False]

    store = MemoryStore()
    message = IncomingMessage(ChatIdentity("private", 9, user_id=9, message_id=3), text="hi")
    await store.inbox_accept(9, 3, message.to_payload())
    await store.inbox_dispatched(9, 3)  # a backend had it when the process died
    config, pm = load_text(ECHO, env={})
    engine = Engine(config, pm, store, Undeliverable())
    with caplog.at_level(logging.WARNING, logger="tgmux.engine"):
        await engine.start()
        await engine.drain()
        await engine.stop()
    assert ("chat 9 message 3: the user could not be told that its answer was cut off by a "
            "restart; the notice is lost") in caplog.text
