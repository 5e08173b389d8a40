"""The config says whether an account is a bot or a user account; a session file left in
``data_dir`` never decides it: when the file's login is of the other kind, ``tgmux run`` stops
with one line naming the file, before connecting."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyrogram.storage import SQLiteStorage

import tgmux.telegram.run as telegram_run
from tgmux.bootstrap import load_config_text
from tgmux.errors import ConfigError
from tgmux.hooks import build_plugin_manager
from tgmux.telegram import run_telegram

HASH = "0123456789abcdef0123456789abcdef"
TOKEN = "123456:" + "A" * 35


def config_text(tmp_path: Path, identity: str) -> str:
    return (f"telegram:\n  api_id: 12345\n  api_hash: {HASH}\n  {identity}\n"
            f"  data_dir: {tmp_path / 'data'}\nstore: sqlite:///{tmp_path}/tgmux.db\n"
            "backends:\n  echo: {type: echo}\ndefault: echo\n")


def load(tmp_path: Path, identity: str, env: dict[str, str] | None = None):
    return load_config_text(config_text(tmp_path, identity), source="config.yaml",
                            env=env or {})


async def leave_session_file(tmp_path: Path, *, is_bot: bool) -> Path:
    """An authorized session file as an earlier run left it."""
    storage = SQLiteStorage("tgmux", workdir=tmp_path / "data")
    (tmp_path / "data").mkdir(exist_ok=True)
    await storage.open()
    await storage.dc_id(2)
    await storage.api_id(12345)
    await storage.test_mode(False)
    await storage.auth_key(b"k" * 256)
    await storage.user_id(123456 if is_bot else 777)
    await storage.is_bot(is_bot)
    await storage.date(0)
    await storage.save()
    await storage.close()
    return tmp_path / "data" / "tgmux.session"


class WouldConnect(Exception):
    pass


@pytest.fixture
def no_connect(monkeypatch):
    """Reaching the client means the checks let the run go on."""
    def build_client(*args, **kwargs):
        raise WouldConnect
    monkeypatch.setattr(telegram_run, "build_client", build_client)


async def test_an_empty_bot_token_is_no_user_account(tmp_path: Path, no_connect):
    """The reported case: bot_token from an empty variable, a user's session file left over."""
    await leave_session_file(tmp_path, is_bot=False)
    config = load(tmp_path, "bot_token: ${TG_BOT_TOKEN}", env={"TG_BOT_TOKEN": ""})
    with pytest.raises(ConfigError) as caught:
        await run_telegram(config, build_plugin_manager())
    assert caught.value.problems == [
        "config.yaml:4: telegram.bot_token: is empty, and no session_string or user_account: "
        "true says this is a user account: set bot_token for a bot; for a user account run "
        "`tgmux login` and set session_string (or set user_account: true and log in at the "
        "terminal)"]


async def test_neither_kind_said_is_an_error(tmp_path: Path, no_connect):
    await leave_session_file(tmp_path, is_bot=False)
    config = load(tmp_path, "session_name: tgmux")
    with pytest.raises(ConfigError) as caught:
        await run_telegram(config, build_plugin_manager())
    assert caught.value.problems == [
        "config.yaml:1: telegram: no bot_token, session_string or user_account: true: set "
        "bot_token for a bot; for a user account run `tgmux login` and set session_string (or "
        "set user_account: true and log in at the terminal)"]


async def test_a_bot_config_refuses_a_user_accounts_session_file(tmp_path: Path, no_connect):
    path = await leave_session_file(tmp_path, is_bot=False)
    config = load(tmp_path, f'bot_token: "{TOKEN}"')
    with pytest.raises(ConfigError) as caught:
        await run_telegram(config, build_plugin_manager())
    assert caught.value.problems == [
        f"config.yaml:1: telegram: the session file {path} holds a user account's login, but "
        "the config says a bot (bot_token): move the file away, or set session_name (or "
        "data_dir) to give this bot its own"]
    assert path.exists()  # the user's login is not thrown away


async def test_a_user_account_config_refuses_a_bots_session_file(tmp_path: Path, no_connect):
    path = await leave_session_file(tmp_path, is_bot=True)
    config = load(tmp_path, "user_account: true")
    with pytest.raises(ConfigError) as caught:
        await run_telegram(config, build_plugin_manager())
    assert caught.value.problems == [
        f"config.yaml:1: telegram: the session file {path} holds a bot's login, but the "
        "config says a user account (user_account: true): move the file away, or set "
        "session_name (or data_dir) to give this user account its own"]


@pytest.mark.parametrize(("identity", "is_bot"), [
    ("user_account: true", False), (f'bot_token: "{TOKEN}"', True),
    (f'bot_token: "{TOKEN}"', None)])
async def test_a_matching_or_absent_file_goes_on(tmp_path: Path, no_connect, identity: str,
                                                 is_bot: bool | None):
    if is_bot is not None:
        await leave_session_file(tmp_path, is_bot=is_bot)
    with pytest.raises(WouldConnect):
        await run_telegram(load(tmp_path, identity), build_plugin_manager())


def test_user_account_and_bot_token_together_are_refused_at_load(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f'bot_token: "{TOKEN}"\n  user_account: true')
    assert caught.value.problems == [
        "config.yaml:1: telegram: give bot_token (a bot) or user_account: true (a user "
        "account), not both"]


def test_tgmux_run_says_it_in_one_line(tmp_path: Path):
    path = asyncio.run(leave_session_file(tmp_path, is_bot=False))
    config = tmp_path / "config.yaml"
    config.write_text(config_text(tmp_path, f'bot_token: "{TOKEN}"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    result = subprocess.run([sys.executable, "-m", "tgmux", "run", "-c", str(config)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: {config}:1: telegram: the session file {path} holds a user account's login, "
        "but the config says a bot (bot_token): move the file away, or set session_name (or "
        "data_dir) to give this bot its own")
