"""Several Telegram accounts in one config: the config forms, and each account routed by its
own table with one engine, one store and one set of backends."""

from __future__ import annotations

import pytest

from tgmux.bootstrap import load_config_text
from tgmux.errors import ConfigError
from tgmux.harness import EngineHarness
from tgmux.types import Notice, Text

ACCOUNTS = """
backends:
  a: {type: echo, prefix: "a: "}
  b: {type: echo, prefix: "b: "}
  g: {type: echo, prefix: "g: "}
default: a
admins: [1]
accounts:
  support:
    telegram: {api_id: "${TG_API_ID}", api_hash: "${TG_API_HASH}", bot_token: "${SUPPORT_TOKEN}"}
    routes:
      - match: {chat_type: [group, supergroup]}
        backend: g
  concierge:
    telegram:
      api_id: 1
      api_hash: 0123456789abcdef0123456789abcdef
      bot_token: "2:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
      session_name: concierge
    default: b
    admins: [2]
"""


def test_each_account_has_its_routing_and_the_single_form_is_main() -> None:
    config = load_config_text(ACCOUNTS, env={})
    assert list(config.accounts) == ["support", "concierge"]
    support, concierge = config.accounts.values()
    assert (support.default, [r.backend for r in support.routes], support.admins) == ("a", ["g"],
                                                                                     [1])
    assert (concierge.default, concierge.routes, concierge.admins) == ("b", [], [2])
    single = load_config_text('backends:\n  e: {type: echo}\ndefault: e\n', env={})
    assert list(single.accounts) == ["main"]


def test_an_accounts_telegram_variables_are_only_needed_to_run() -> None:
    config = load_config_text(ACCOUNTS, env={})
    with pytest.raises(ConfigError) as caught:
        config.require_telegram("support")
    assert caught.value.problems[0].startswith(
        "<config>:10: accounts.support.telegram.api_id: environment variable TG_API_ID")
    assert config.require_telegram("concierge").bot_token == "2:" + "x" * 35


@pytest.mark.parametrize(("text", "expected"), [
    ("telegram: {api_id: 1}\naccounts:\n  x: {telegram: {api_id: 1}}\n",
     "give telegram: (one account) or accounts: (several), not both"),
    ("accounts:\n  x: {telegram: {api_id: 1}, default: nope}\n",
     "<config>:4: accounts.x.default: unknown backend 'nope'"),
    ("accounts:\n  x:\n    telegram: {api_id: 1}\n    routes:\n      - backend: nope\n",
     "<config>:7: accounts.x.routes[0].backend: unknown backend 'nope'"),
    ("accounts:\n  bad name: {telegram: {api_id: 1}, default: e}\n",
     "account name 'bad name'"),
])
def test_account_config_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text("backends:\n  e: {type: echo}\n" + text.replace("default: e\n", ""),
                         env={})
    assert any(expected in p for p in caught.value.problems), caught.value.problems


async def test_one_engine_routes_each_account_by_its_own_table() -> None:
    async with EngineHarness.from_yaml(ACCOUNTS, env={}) as h:
        assert await h.say("hi", user_id=5, account="support") == [Text("a: hi")]
        assert await h.say("hi", user_id=5, account="concierge") == [Text("b: hi")]
        assert await h.say("hey", chat_id=-7, chat_type="group", user_id=5,
                           account="support") == [Text("g: hey")]
        # admins are the account's own, else the top level's
        assert await h.say("/backend b", user_id=2, account="support") == [
            Notice("Only the bot's admins can switch the AI for a chat.")]
        assert await h.say("/backend a", user_id=2, account="concierge") == [
            Text("This chat now talks to: a")]


async def test_overrides_and_order_are_per_account() -> None:
    async with EngineHarness.from_yaml(ACCOUNTS, env={}) as h:
        assert await h.say("/backend g", user_id=1, account="support") == [
            Text("This chat now talks to: g")]
        assert await h.say("hi", user_id=1, account="support") == [Text("g: hi")]
        # the same user with the other account is another chat: no override there
        assert await h.say("hi", user_id=1, account="concierge") == [Text("b: hi")]


def test_status_lists_each_account_and_its_backlog(tmp_path) -> None:
    import subprocess
    import sys

    config = tmp_path / "config.yaml"
    config.write_text(f'store: "sqlite:///{tmp_path}/t.db"\n' + ACCOUNTS)
    done = subprocess.run([sys.executable, "-m", "tgmux", "status", "-c", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"store: sqlite:///{tmp_path}/t.db",
        "  support: not running; 0 message(s) waiting",
        "  concierge: not running; 0 message(s) waiting",
    ]


async def test_run_names_an_unknown_account_clearly() -> None:
    from tgmux.bootstrap import load_text
    from tgmux.telegram.run import run_telegram

    config, pm = load_text(ACCOUNTS, env={"TG_API_ID": "1", "TG_API_HASH": "0123456789abcdef" * 2,
                                          "SUPPORT_TOKEN": "1:" + "x" * 35})
    with pytest.raises(ConfigError, match=r"--account: no account 'nope' \(the config has: "
                                          r"support, concierge\)"):
        await run_telegram(config, pm, ["nope"])


def test_check_prints_each_accounts_routing(tmp_path) -> None:
    import subprocess
    import sys

    config = tmp_path / "config.yaml"
    config.write_text('store: "memory://"\n' + ACCOUNTS)
    done = subprocess.run([sys.executable, "-m", "tgmux", "check", str(config)],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin", "TG_API_ID": "1",
                               "TG_API_HASH": "0123456789abcdef" * 2,
                               "SUPPORT_TOKEN": "1:" + "x" * 35})
    assert done.returncode == 0, done.stderr
    assert ("account support (telegram: bot), routes (first match wins):\n"
            "  1. chat_type=['group', 'supergroup'] -> g  (groups: mention)\n"
            "  2. (default) -> a  (groups: mention)\n") in done.stdout
    assert ("account concierge (telegram: bot), routes (first match wins):\n"
            "  1. (default) -> b  (groups: mention)\n") in done.stdout
