"""Telegram's failures at start and stop: a stop while connecting, no network, a server that
accepts connections and closes them. Nothing here reaches anything but 127.0.0.1; "no network"
is a private network namespace (``unshare -rn``), where every connection fails at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tgmux.telegram.client as telegram_client
import tgmux.telegram.run as telegram_run
from tgmux.bootstrap import load_config_text
from tgmux.hooks import build_plugin_manager
from tgmux.store import MemoryStore
from tgmux.telegram import run_telegram
from tgmux.telegram.client import SessionFileStorage
from tgmux.telegram.fake import HANG, FakeTelegram, offline_client

TOKEN = "123456:ABCdefGhIJKlmnoPQRstuVWXyz012345678"
API = {"api_id": "12345", "api_hash": "0123456789abcdef0123456789abcdef"}

CONFIG = """
telegram:
  api_id: {api_id}
  api_hash: {api_hash}
  {identity}
  data_dir: {data}
  shutdown_timeout: {shutdown}
store: memory://
backends:
  echo: {{type: echo}}
default: echo
"""

#: A user account's session string (an authorization Pyrogram would use without asking).
USER_SESSION = (
    "AgAAMDkA0VV3gE794ZZYyhc_tPA9SXM5INYn__9EloJJrqD2b3ixVtRWEFtutSdOcXVFQBNxWJl1stSlN05pbxk"
    "Hq7YiJYNkioC43QB4HSAY0hxIAZy1cF0EC6mCaWcF8Oe1p0Ah2KN4h1PnqpEmh_o5x0U3Xpf-H83Isi1p5VnBE58"
    "RMv0BdBKT672T8jpirIuBBD39c-7v7-hK6Oxn6PrW48GZqNVi5LyaKAX6TTQppN_o_IzN_XzlZYMJ4vNYYDvidf0"
    "_zDXpTJWYHdZm5i_huXLEr6nfL-7qQkAyxmqfEGroNWFML2IwcW5-tE994uVmP4mSbhPI6Zf_wk-Et7HqEaPCDAA"
    "AAAAAAAMJAA"
)


def config_text(tmp_path: Path, *, identity: str = f'bot_token: "{TOKEN}"',
                shutdown: float = 1.0) -> str:
    return CONFIG.format(**API, identity=identity, data=tmp_path / "data", shutdown=shutdown)


def config_for(tmp_path: Path, **options):
    return load_config_text(config_text(tmp_path, **options), source="config.yaml", env={})


# -- a stop while connecting ---------------------------------------------------------------------


def offline(fake: FakeTelegram, tmp_path: Path):
    return lambda config, account=None, **_: offline_client(
        fake, storage=SessionFileStorage("tgmux", tmp_path / "data"))


#: How soon a SIGTERM'd run must end: its shutdown_timeout (1 s), with room for a loaded machine
#: (a process can stall for a second or more); what it guards against never ends.
STOPPED_WITHIN = 1.0 + 9


async def sigterm_once(condition, running: asyncio.Task) -> float:
    """SIGTERM as soon as ``condition()`` holds; when it was sent."""
    async with asyncio.timeout(10):
        while not condition():
            assert not running.done(), running
            await asyncio.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)
    return time.monotonic()


async def test_sigterm_while_telegram_does_not_answer_stops_within_shutdown_timeout(
        tmp_path: Path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    fake = FakeTelegram()
    fake.fail("updates.GetState", HANG)  # connected, and the first request never ends
    monkeypatch.setattr(telegram_run, "build_client", offline(fake, tmp_path))
    running = asyncio.create_task(run_telegram(config_for(tmp_path), build_plugin_manager()))
    sent = await sigterm_once(lambda: any(r.name == "updates.GetState" for r in fake.requests),
                              running)
    assert await asyncio.wait_for(running, STOPPED_WITHIN) == 0
    assert time.monotonic() - sent < STOPPED_WITHIN
    assert not fake.client.is_connected  # the connection was let go
    assert "stopped before tgmux was running on Telegram" in caplog.text


async def test_sigterm_while_the_connection_hangs_stops_within_shutdown_timeout(
        tmp_path: Path, monkeypatch):
    fake = FakeTelegram()
    connecting = asyncio.Event()

    def build(config, account=None, **_):
        client = offline_client(fake, storage=SessionFileStorage("tgmux", tmp_path / "data"))

        async def connect() -> bool:
            connecting.set()
            await asyncio.Event().wait()  # a SYN nobody answers
            return False

        client.connect = connect
        return client

    monkeypatch.setattr(telegram_run, "build_client", build)
    running = asyncio.create_task(run_telegram(config_for(tmp_path), build_plugin_manager()))
    sent = await sigterm_once(connecting.is_set, running)
    assert await asyncio.wait_for(running, STOPPED_WITHIN) == 0
    assert time.monotonic() - sent < STOPPED_WITHIN


async def test_sigterm_while_a_reply_hangs_stops_within_shutdown_timeout(
        tmp_path: Path, monkeypatch):
    fake = FakeTelegram()
    monkeypatch.setattr(telegram_run, "build_client", offline(fake, tmp_path))
    running = asyncio.create_task(run_telegram(config_for(tmp_path), build_plugin_manager()))
    await fake.wait_for(lambda a: a["action"] == "set_commands")
    fake.fail("send_message", HANG, times=None)  # the reply's request never ends
    await fake.incoming(user_id=42, text="hello")
    sent = await sigterm_once(
        lambda: any(r.name == "messages.SendMessage" for r in fake.requests), running)
    assert await asyncio.wait_for(running, STOPPED_WITHIN) == 0
    assert time.monotonic() - sent < STOPPED_WITHIN


class HangingInbox(MemoryStore):
    """A store whose inserts never end once ``hang`` is set (a PostgreSQL that stopped
    answering)."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = False
        self.hanging = 0

    async def inbox_accept(self, *args, **kwargs) -> bool:
        if self.hang:
            self.hanging += 1
            await asyncio.Event().wait()
        return await super().inbox_accept(*args, **kwargs)


async def test_sigterm_while_the_store_hangs_names_each_message_in_hand_and_exits_1(
        tmp_path: Path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    store = HangingInbox()
    fake = FakeTelegram()
    monkeypatch.setattr(telegram_run, "open_store", lambda url: store)
    monkeypatch.setattr(telegram_run, "build_client", offline(fake, tmp_path))
    running = asyncio.create_task(run_telegram(config_for(tmp_path), build_plugin_manager()))
    await fake.wait_for(lambda a: a["action"] == "set_commands")
    store.hang = True
    in_hand = [(42, 7), (42, 8), (43, 9)]  # chat 42's second waits behind its first
    for chat, message in in_hand:
        await fake.incoming(user_id=chat, text=f"m{message}", message_id=message)
    await sigterm_once(lambda: store.hanging == 2, running)
    assert await asyncio.wait_for(running, 30) == 1  # not a clean stop: messages were lost
    # Each is answered (the store's deadline passed first: answered from memory) or named.
    replies = [a["text"] for a in fake.actions
               if a["action"] == "send_message" and a["chat_id"] in (42, 43)]
    named = [(chat, message) for chat, message in in_hand
             if f"chat {chat} message {message} is not answered" in caplog.text]
    assert named  # exit 1: at least one was lost, and it is named
    for chat, message in in_hand:
        assert (chat, message) in named or any(f"m{message}" in text for text in replies)


# -- a server that accepts connections and closes them ---------------------------------------------


@contextlib.asynccontextmanager
async def closing_server():
    """A TCP server on 127.0.0.1 that accepts every connection and closes it at once."""
    accepted = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(time.monotonic())
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()
        await server.wait_closed()


def redirected(port: int):
    """``build_client`` whose connections (every DC, auth key exchange included) go to
    127.0.0.1:``port``: Pyrogram makes every connection through ``connection_factory``."""
    real = telegram_client.build_client

    def build(config, account=None, **options):
        client = real(config, account, **options)
        factory = client.connection_factory
        client.connection_factory = lambda **kw: factory(
            **{**kw, "server_address": "127.0.0.1", "port": port})
        return client

    return build


async def authorized_session(data: Path, port: int, *, is_bot: bool) -> None:
    storage = SessionFileStorage("tgmux", data)
    await storage.open()
    await storage.dc_id(2)
    await storage.api_id(12345)
    await storage.test_mode(False)
    await storage.server_address("127.0.0.1")
    await storage.port(port)
    await storage.auth_key(os.urandom(256))
    await storage.user_id(123456 if is_bot else 777)
    await storage.is_bot(is_bot)
    await storage.save()
    await storage.close()


@pytest.mark.parametrize("session", ["new", "authorized"])
async def test_a_server_that_closes_every_connection_is_one_clear_error_in_bounded_time(
        tmp_path: Path, monkeypatch, caplog, session):
    async with closing_server() as (port, accepted):
        if session == "authorized":  # a user account: Pyrogram would retry for minutes
            await authorized_session(tmp_path / "data", port, is_bot=False)
            options = {"identity": "user_account: true"}
        else:  # a bot's first start: the auth key exchange
            options = {}
        monkeypatch.setattr(telegram_run, "build_client", redirected(port))
        started = time.monotonic()
        result = await asyncio.wait_for(
            run_telegram(config_for(tmp_path, **options), build_plugin_manager()), 30)
        assert time.monotonic() - started < 30
    assert result == 1 and accepted
    errors = [r.getMessage() for r in caplog.records
              if r.name == "tgmux.telegram" and r.levelname == "ERROR"]
    assert errors == ["cannot reach Telegram (the connection was closed before Telegram "
                      "answered): check the machine's network / proxy / firewall"]


# -- no network at all ---------------------------------------------------------------------------


def _unshare_works() -> str | None:
    try:
        done = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -rn is not available: {exc}"
    if done.returncode != 0:
        return f"unshare -rn fails here: {done.stderr.decode(errors='replace').strip()}"
    return None


@pytest.fixture(scope="module")
def no_network() -> list[str]:
    """The command prefix that runs a command without any network."""
    problem = _unshare_works()
    if problem:
        pytest.skip(problem)
    return ["unshare", "-rn"]


def run_offline(prefix: list[str], *args: str, cwd: Path) -> tuple[subprocess.CompletedProcess,
                                                                   float]:
    started = time.monotonic()
    done = subprocess.run([*prefix, sys.executable, "-m", "tgmux", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return done, time.monotonic() - started


def documented_exit_codes() -> dict[str, int]:
    """What docs/telegram.md says `run` and `login` exit with when Telegram cannot be reached."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "telegram.md").read_text()
    (said,) = re.findall(r"cannot be reached, `tgmux run` and `tgmux login` say so in one line "
                         r"and exit non-zero\s+\(([^)]*)\)", text)
    return {command: int(code) for command, code in re.findall(r"`(\w+)` (\d)", said)}


def assert_one_clear_error(done: subprocess.CompletedProcess, elapsed: float) -> None:
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if "cannot reach Telegram" in line]
    assert len(lines) == 1, done.stderr
    assert ("cannot reach Telegram (network unreachable): check the machine's network / "
            "proxy / firewall") in lines[0]
    assert elapsed < 30, (elapsed, done.stderr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("identity", [f'bot_token: "{TOKEN}"',
                                      f"session_string: {USER_SESSION}"],
                         ids=["bot", "user-account"])
def test_run_without_network_is_one_clear_error_in_bounded_time(tmp_path: Path, no_network,
                                                                identity):
    (tmp_path / "cfg.yaml").write_text(config_text(tmp_path, identity=identity))
    done, elapsed = run_offline(no_network, "run", "-c", "cfg.yaml", cwd=tmp_path)
    assert_one_clear_error(done, elapsed)
    assert done.returncode == documented_exit_codes()["run"] == 1


@pytest.mark.timeout(120)
def test_login_without_network_is_one_clear_error_in_bounded_time(tmp_path: Path, no_network):
    done, elapsed = run_offline(no_network, "login", "--api-id", "1", "--api-hash", "0" * 32,
                                "--phone", "+10000000000", cwd=tmp_path)
    assert_one_clear_error(done, elapsed)
    # the network's fault, not the config's (that is 2); as the docs say
    assert done.returncode == documented_exit_codes()["login"] == 1
    assert done.stderr.strip().splitlines() == [  # nothing else: Pyrogram's attempts are quiet
        "error: cannot reach Telegram (network unreachable): check the machine's network / "
        "proxy / firewall"]
