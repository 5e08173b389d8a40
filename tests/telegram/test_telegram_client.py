"""The client for ``tgmux run``: session storage, credentials, signals; ``tgmux login``."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import stat
from pathlib import Path

import pytest
from pyrogram import Client
from pyrogram.storage import SQLiteStorage
from pyrogram.storage.storage import UpdateState

import tgmux.telegram.run as telegram_run
from tgmux import cli
from tgmux.bootstrap import load_config_text
from tgmux.errors import ConfigError
from tgmux.hooks import build_plugin_manager
from tgmux.telegram import login, run_telegram
from tgmux.telegram.client import SessionFileStorage, build_client
from tgmux.telegram.fake import FakeTelegram, offline_client

CONFIG = """
telegram:
  api_id: ${TG_API_ID}
  api_hash: ${TG_API_HASH}
  bot_token: ${TG_BOT_TOKEN:-}
  session_string: ${TG_SESSION:-}
  data_dir: {data}
  flood: {private_per_second: 100}
store: sqlite:///{data}/tgmux.db
backends:
  echo: {type: echo, prefix: "echo: "}
default: echo
"""

#: Shaped as a session string (the fake Telegram does not know it).
SOME_SESSION = base64.urlsafe_b64encode(bytes(271)).decode().rstrip("=")

ENV = {"TG_API_ID": "12345", "TG_API_HASH": "0123456789abcdef0123456789abcdef",
       "TG_BOT_TOKEN": "123456:ABC-secret" + "x" * 25}


def config_for(tmp_path: Path, env: dict[str, str] = ENV):
    text = CONFIG.replace("{data}", str(tmp_path / "data"))
    return load_config_text(text, source="config.yaml", env=env)


async def session_string(user_id: int, *, is_bot: bool = False) -> str:
    storage = SQLiteStorage("probe", workdir=Path("."), in_memory=True)
    await storage.open()
    await storage.dc_id(2)
    await storage.api_id(12345)
    await storage.test_mode(False)
    await storage.auth_key(os.urandom(256))
    await storage.user_id(user_id)
    await storage.is_bot(is_bot)
    try:
        return await storage.export_session_string()
    finally:
        await storage.close()


def test_the_client_is_built_for_catch_up_and_order(tmp_path: Path):
    client = build_client(config_for(tmp_path))
    assert client.workers == 1
    assert client.skip_updates is False
    assert (client.fetch_replies, client.fetch_topics, client.fetch_stories) == (False,) * 3
    assert client.bot_token == "123456:ABC-secret" + "x" * 25
    assert isinstance(client.storage, SessionFileStorage)
    assert client.storage.path == tmp_path / "data" / "tgmux.session"
    assert client.storage.expected_user_id == 123456
    assert client.storage.bot_token == "123456:ABC-secret" + "x" * 25  # remembered as a hash


async def test_a_session_string_seeds_a_private_session_file(tmp_path: Path):
    first = await session_string(111)
    storage = SessionFileStorage("tgmux", tmp_path / "data", session_string=first)
    await storage.open()
    assert await storage.user_id() == 111 and not await storage.is_bot()
    await storage.update_peers([(42, 7, "user", None)])
    await storage.save()
    await storage.close()
    assert stat.S_IMODE(os.stat(storage.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700

    # the same string again: the file (peers, update state) is kept
    again = SessionFileStorage("tgmux", tmp_path / "data", session_string=first)
    await again.open()
    assert await again.get_peer_by_id(42) is not None
    await again.close()

    # another account's string: a fresh file
    other = SessionFileStorage("tgmux", tmp_path / "data",
                               session_string=await session_string(222))
    await other.open()
    assert await other.user_id() == 222
    with pytest.raises(KeyError):
        await other.get_peer_by_id(42)
    await other.close()


async def test_a_session_file_of_another_bot_is_replaced(tmp_path: Path):
    storage = SessionFileStorage("tgmux", tmp_path, expected_user_id=1)
    await storage.open()
    await storage.user_id(999)
    await storage.auth_key(b"k" * 256)
    await storage.save()
    await storage.close()
    fresh = SessionFileStorage("tgmux", tmp_path, expected_user_id=1)
    await fresh.open()
    assert await fresh.user_id() is None and await fresh.auth_key() is None
    await fresh.close()


async def test_missing_credentials_are_config_errors(tmp_path: Path):
    config = config_for(tmp_path, env={})
    with pytest.raises(ConfigError) as info:
        await run_telegram(config, build_plugin_manager())
    text = str(info.value)
    assert "config.yaml:3: telegram.api_id: environment variable TG_API_ID is not set" in text
    # a user account with neither session string nor session file, and no terminal
    config = config_for(tmp_path, env={k: v for k, v in ENV.items() if k != "TG_BOT_TOKEN"})
    with pytest.raises(ConfigError, match="run `tgmux login`"):
        await run_telegram(config, build_plugin_manager())


async def test_run_serves_until_sigterm_then_stops_cleanly(tmp_path: Path, monkeypatch,
                                                         caplog):
    caplog.set_level(logging.DEBUG)
    fake = FakeTelegram()
    config = config_for(tmp_path)
    monkeypatch.setattr(telegram_run, "build_client",
                        lambda config, account=None, **_: offline_client(
        fake, storage=SessionFileStorage("tgmux", tmp_path / "data")))
    running = asyncio.create_task(run_telegram(config, build_plugin_manager()))
    await fake.wait_for(lambda a: a["action"] == "set_commands")
    await fake.incoming(user_id=42, text="hello")
    await fake.wait_for(lambda a: a["action"] == "send_message")
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(running, 10) == 0
    assert fake.actions[-1] == {"action": "send_message", "chat_id": 42, "message_id": 1001,
                                "text": "echo: hello"}
    assert not fake.client.is_connected
    assert (tmp_path / "data" / "tgmux.session").exists()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "tgmux is running on Telegram as @tgmux_bot (bot)" in logged
    assert ENV["TG_BOT_TOKEN"] not in logged and ENV["TG_API_HASH"] not in logged


async def test_login_returns_the_session_string(monkeypatch):
    fake = FakeTelegram(is_bot=False, user_id=777, bot_username="someone")

    def client(*args, **kwargs):
        return fake.attach(Client(*args, **kwargs))

    monkeypatch.setattr(telegram_run, "Client", client)
    session = await login(12345, "0123456789abcdef0123456789abcdef", phone="+10000000000")
    probe = SQLiteStorage("probe", workdir=Path("."), session_string=session, in_memory=True)
    await probe.open()
    assert await probe.user_id() == 777 and not await probe.is_bot()
    await probe.close()


def test_a_refused_login_is_one_clear_line_and_exit_1(monkeypatch, capsys):
    fake = FakeTelegram(is_bot=False, user_id=777, bot_username="someone")
    fake.fail("*", "API_ID_INVALID", times=None)

    def client(*args, **kwargs):
        return fake.attach(Client(*args, **kwargs))

    monkeypatch.setattr(telegram_run, "Client", client)
    with pytest.raises(SystemExit) as exited:
        cli.cli.main(["login", "--api-id", "12345", "--api-hash", "0" * 32, "--phone",
                       "+10000000000"], standalone_mode=False)
    assert exited.value.code == 1  # as `run`: Telegram refused; 2 is for a config error
    assert capsys.readouterr().err.splitlines() == [
        "error: Telegram refused the login: Telegram rejected api_id/api_hash (check them at "
        "my.telegram.org)"]


async def authorized_bot_session(path: Path, token: str | None, *, user_id: int = 123456,
                                 key: bytes = b"k" * 256) -> None:
    """A session file as `tgmux run` leaves it: authorized, with peers and update state."""
    storage = SessionFileStorage("tgmux", path, expected_user_id=user_id, bot_token=token)
    await storage.open()
    await storage.dc_id(2)
    await storage.api_id(12345)
    await storage.test_mode(False)
    await storage.auth_key(key)
    await storage.user_id(user_id)
    await storage.is_bot(True)
    await storage.update_peers([(42, 7, "user", None)])
    await storage.set_update_state(UpdateState(0, 77, 0, 0, 0))
    await storage.save()
    await storage.close()


async def reopened(path: Path, token: str) -> tuple[bytes | None, int | None, int | None,
                                                   bool]:
    """(auth key, user id, pts, whether peer 42 is known) of the file opened with ``token``."""
    storage = SessionFileStorage("tgmux", path, expected_user_id=123456, bot_token=token)
    await storage.open()
    try:
        try:
            await storage.get_peer_by_id(42)
            known = True
        except KeyError:
            known = False
        states = await storage.get_update_states(0)
        pts = states[0].pts if states else None
        return await storage.auth_key(), await storage.user_id(), pts, known
    finally:
        await storage.close()


async def test_a_new_token_for_the_same_bot_authorizes_again_and_keeps_the_state(
        tmp_path: Path, caplog):
    await authorized_bot_session(tmp_path, "123456:old-token")
    # the same token: nothing changes
    assert await reopened(tmp_path, "123456:old-token") == (b"k" * 256, 123456, 77, True)
    # a new token (the old one revoked): the authorization goes, peers and update state stay
    assert await reopened(tmp_path, "123456:new-token") == (None, None, 77, True)
    assert "the bot token changed; authorizing again" in caplog.text
    assert "old-token" not in caplog.text and "new-token" not in caplog.text
    raw = (tmp_path / "tgmux.session").read_bytes()
    assert b"old-token" not in raw and b"new-token" not in raw  # only a hash is kept


async def test_a_session_file_from_before_token_hashes_is_kept(tmp_path: Path):
    await authorized_bot_session(tmp_path, None)  # no token remembered
    assert await reopened(tmp_path, "123456:token") == (b"k" * 256, 123456, 77, True)
    # from now on the token is remembered
    assert (await reopened(tmp_path, "123456:other"))[:2] == (None, None)


async def test_run_authorizes_a_bot_again_when_telegram_forgot_its_session(
        tmp_path: Path, monkeypatch, caplog):
    data = tmp_path / "data"
    await authorized_bot_session(data, ENV["TG_BOT_TOKEN"], key=b"o" * 256)
    fake = FakeTelegram(user_id=123456)
    fake.fail("updates.GetState", "AUTH_KEY_UNREGISTERED")  # the old authorization is gone
    monkeypatch.setattr(telegram_run, "build_client",
                        lambda config, account=None, **_: offline_client(
        fake, storage=SessionFileStorage("tgmux", data, bot_token=ENV["TG_BOT_TOKEN"])))
    running = asyncio.create_task(run_telegram(config_for(tmp_path), build_plugin_manager()))
    await fake.wait_for(lambda a: a["action"] == "set_commands")
    await fake.incoming(user_id=42, text="hello")
    await fake.wait_for(lambda a: a["action"] == "send_message")
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(running, 10) == 0
    assert "Telegram says AUTH_KEY_UNREGISTERED; authorizing again" in caplog.text
    auth_key, user_id, _, _ = await reopened(data, ENV["TG_BOT_TOKEN"])
    assert auth_key not in (None, b"o" * 256) and user_id == 123456  # a new authorization


@pytest.mark.parametrize(("env", "advice", "not_advice"), [
    (ENV, "check telegram.bot_token", "tgmux login"),
    ({**{k: v for k, v in ENV.items() if k != "TG_BOT_TOKEN"}, "TG_SESSION": SOME_SESSION},
     "run `tgmux login` again and set session_string", "bot_token"),
])
async def test_advice_when_telegram_does_not_know_the_session(
        tmp_path: Path, monkeypatch, caplog, env, advice, not_advice):
    fake = FakeTelegram()
    fake.fail("updates.GetState", "AUTH_KEY_UNREGISTERED", times=None)
    monkeypatch.setattr(telegram_run, "build_client",
                        lambda config, account=None, **_: offline_client(
        fake, storage=SessionFileStorage("tgmux", tmp_path / "data")))
    # refused for good (revoked): 3, so that a supervisor does not restart it into a loop
    assert await run_telegram(config_for(tmp_path, env), build_plugin_manager()) == 3
    refused = [r.getMessage() for r in caplog.records if "refused to start" in r.getMessage()]
    assert len(refused) == 1 and advice in refused[0] and not_advice not in refused[0]


async def test_an_existing_folder_keeps_its_mode(tmp_path: Path):
    # A data_dir (or simulate's --telegram-state folder) that exists is the user's: tgmux made
    # /tmp itself 0700 once (every other user, postgres included, locked out of it).
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o1777)
    storage = SessionFileStorage("tgmux", shared, session_string=await session_string(111))
    await storage.open()
    await storage.close()
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(storage.path).st_mode) == 0o600
