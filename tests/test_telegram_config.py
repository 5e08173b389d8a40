"""The ``telegram:`` section checked at load, with file:line: the shape of api_id, api_hash
and bot_token (after ``${VAR}`` expansion), and accounts that would be one Telegram login."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tgmux.bootstrap import load_config_text
from tgmux.errors import ConfigError

HASH = "0123456789abcdef0123456789abcdef"
TOKEN = "123456:" + "A" * 30 + "b-c_d"  # @BotFather's shape: digits, ':', 35 characters
ECHO = "backends:\n  e: {type: echo}\ndefault: e\n"


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, source="c.yaml", env=env or {})
    return caught.value.problems


def telegram(**keys: str) -> str:
    return "telegram:\n" + "".join(f"  {k}: {v}\n" for k, v in keys.items()) + ECHO


def test_well_formed_credentials_load() -> None:
    config = load_config_text(telegram(api_id="12345", api_hash=HASH, bot_token=f'"{TOKEN}"'),
                              env={})
    tg = config.require_telegram()
    assert (tg.api_id, tg.api_hash, tg.bot_token) == (12345, HASH, TOKEN)
    # the same from the environment
    env = {"TG_API_ID": "12345", "TG_API_HASH": HASH.upper(), "TG_BOT_TOKEN": TOKEN}
    config = load_config_text(telegram(api_id="${TG_API_ID}", api_hash="${TG_API_HASH}",
                                       bot_token="${TG_BOT_TOKEN}"), env=env)
    assert config.require_telegram().bot_token == TOKEN


@pytest.mark.parametrize(("keys", "expected"), [
    ({"api_id": "0"}, "c.yaml:2: telegram.api_id: expected the api_id my.telegram.org shows "
                      "(a whole number from 1 to 2147483647) (got 0)"),
    ({"api_id": "-5"}, "c.yaml:2: telegram.api_id: expected the api_id my.telegram.org shows "
                       "(a whole number from 1 to 2147483647) (got -5)"),
    ({"api_id": "4294967296"}, "c.yaml:2: telegram.api_id: expected the api_id "
                               "my.telegram.org shows (a whole number from 1 to 2147483647) "
                               "(got 4294967296)"),
    ({"api_hash": "abc"}, "c.yaml:2: telegram.api_hash: expected the 32 hexadecimal digits "
                          "my.telegram.org shows (got a str; value not shown)"),
    ({"api_hash": HASH[:-1] + "g"}, "c.yaml:2: telegram.api_hash: expected the 32 "
                                    "hexadecimal digits my.telegram.org shows (got a str; "
                                    "value not shown)"),
    ({"bot_token": '"123:abc"'}, "c.yaml:2: telegram.bot_token: expected the token "
                                 "@BotFather gave: the bot's number, ':' and 35 letters, "
                                 "digits, - or _ (got a str; value not shown)"),
    ({"bot_token": f'"x{TOKEN}"'}, "c.yaml:2: telegram.bot_token: expected the token "
                                   "@BotFather gave: the bot's number, ':' and 35 letters, "
                                   "digits, - or _ (got a str; value not shown)"),
])
def test_malformed_credentials_are_refused_at_load(keys: dict[str, str], expected: str) -> None:
    assert problems(telegram(**keys)) == [expected]


def test_malformed_values_from_the_environment_name_the_line() -> None:
    env = {"TG_API_ID": "0", "TG_API_HASH": "not-a-hash", "TG_BOT_TOKEN": "1:short"}
    found = problems(telegram(api_id="${TG_API_ID}", api_hash="${TG_API_HASH}",
                              bot_token="${TG_BOT_TOKEN}"), env)
    assert [p.split(": ")[0:2] for p in found] == [
        ["c.yaml:2", "telegram.api_id"], ["c.yaml:3", "telegram.api_hash"],
        ["c.yaml:4", "telegram.bot_token"]]
    assert not any("not-a-hash" in p or "1:short" in p for p in found)  # secrets not echoed


def test_check_and_run_say_one_line_for_api_id_0(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text('store: "memory://"\n' + telegram(api_id="0", api_hash=HASH,
                                                        bot_token=f'"{TOKEN}"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    for args in (["check", str(config)], ["run", "-c", str(config)]):
        result = subprocess.run([sys.executable, "-m", "tgmux", *args], capture_output=True,
                                text=True, timeout=120, env=env)
        assert (result.returncode, result.stderr) == (2, (
            f"error: {config}:3: telegram.api_id: expected the api_id my.telegram.org shows "
            "(a whole number from 1 to 2147483647) (got 0)\n")), args


# -- accounts that would be one login ------------------------------------------------------


def accounts(a: str, b: str) -> str:
    return ECHO + f"accounts:\n  a:\n    telegram: {{{a}}}\n  b:\n    telegram: {{{b}}}\n"


def test_two_accounts_with_one_bot_token_are_refused() -> None:
    text = accounts(f'bot_token: "{TOKEN}", session_name: a',
                    f'bot_token: "{TOKEN}", session_name: b')
    assert problems(text) == [
        "c.yaml:8: accounts.b.telegram.bot_token: the same bot token as accounts.a (line 6): "
        "one bot can be one account only"]
    # from the environment too
    text = accounts('bot_token: "${T1}", session_name: a', 'bot_token: "${T2}", session_name: b')
    assert problems(text, {"T1": TOKEN, "T2": TOKEN}) == [
        "c.yaml:8: accounts.b.telegram.bot_token: the same bot token as accounts.a (line 6): "
        "one bot can be one account only"]


def test_two_accounts_with_one_session_string_are_refused() -> None:
    session = base64.urlsafe_b64encode(bytes(271)).decode().rstrip("=")  # a session's shape
    text = accounts(f"session_string: {session}, session_name: a",
                    f"session_string: {session}, session_name: b")
    assert problems(text) == [
        "c.yaml:8: accounts.b.telegram.session_string: the same session string as accounts.a "
        "(line 6): one login can be one account only"]


def test_two_accounts_on_one_session_file_are_refused(tmp_path: Path) -> None:
    text = accounts(f'bot_token: "{TOKEN}", data_dir: {tmp_path}/x',
                    f'bot_token: "1{TOKEN}", data_dir: {tmp_path}/y/../x')
    assert problems(text) == [
        f"c.yaml:8: accounts.b.telegram: the same session file as accounts.a (line 6), "
        f"{tmp_path}/x/tgmux.session: give each account its own session_name (or data_dir)"]
    load_config_text(text.replace("y/../x", "y"), env={})  # apart: fine


@pytest.mark.parametrize(("args", "expected"), [
    (["--api-id", "0", "--api-hash", HASH],
     "Invalid value for '--api-id': 0 is not in the range 1<=x<=2147483647."),
    (["--api-id", "12345", "--api-hash", "abc"],
     "Invalid value for '--api-hash': expected the 32 hexadecimal digits my.telegram.org shows"),
])
def test_login_checks_its_credentials_before_connecting(args: list[str], expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TGMUX_", "TG_"))}
    result = subprocess.run([sys.executable, "-m", "tgmux", "login", *args, "--phone", "+1"],
                            capture_output=True, text=True, timeout=120, env=env, stdin=None)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"Error: {expected}"
