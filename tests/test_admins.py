"""Who is an admin: only the users ``admins`` lists. An empty list (as in
config.example.yaml) makes nobody one, and ``tgmux check`` warns about it and about backends
through which one user reaches other users' conversations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tgmux.backends.bambisleep as bambisleep_plugin
import tgmux.backends.sensay as sensay_plugin
from tgmux.access import access_warnings
from tgmux.backend import Notice, Text
from tgmux.bootstrap import load_text
from tgmux.harness import EngineHarness

TWO = """
backends:
  echo: {type: echo, prefix: "echo: "}
  other: {type: echo, prefix: "other: "}
default: echo
"""


def tgmux(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    return subprocess.run([sys.executable, "-m", "tgmux", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, env=env)


async def test_without_admins_nobody_may_use_admin_commands() -> None:
    async with EngineHarness.from_yaml(TWO + "admins: []\n") as h:
        assert await h.say("/backend other", user_id=5) == [
            Notice("Only the bot's admins can switch the AI for a chat.")]
        assert await h.say("/status", user_id=5) == [
            Notice("Only the bot's admins can use /status.")]
        assert await h.say("hi", user_id=5) == [Text("echo: hi")]  # not switched
        (shown,) = await h.say("/help", user_id=5)
        assert "/status — Each AI's health in this process (admins only)" in shown.text


async def test_listed_admins_may_and_others_may_not() -> None:
    async with EngineHarness.from_yaml(TWO + "admins: [7]\n") as h:
        assert await h.say("/backend other", user_id=5) == [
            Notice("Only the bot's admins can switch the AI for a chat.")]
        assert await h.say("/backend other", user_id=7, chat_id=5) == [
            Text("This chat now talks to: other")]
        assert await h.say("hi", user_id=5) == [Text("other: hi")]
        assert (await h.say("/status", user_id=7))[0].text.startswith("AI backends")


def test_the_demo_user_is_its_admin() -> None:
    """The README's quickstart: the person at the demo's terminal switches backends."""
    result = tgmux("demo", stdin="/backend echo\nhello\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "This chat now talks to: echo\necho: hello\n"


def test_check_warns_when_admins_is_empty(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text('store: "memory://"\nadmins: []\n' + TWO)
    result = tgmux("check", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"warning: {config}:2: admins: no admins: nobody may use /backend NAME, /status or a "
        "backend's admin-only commands (list your Telegram user id)\n")
    config.write_text('store: "memory://"\nadmins: [7]\n' + TWO)
    assert tgmux("check", str(config)).stderr == ""


def _warnings(text: str) -> list[str]:
    config, _ = load_text(text, source="c.yaml", env={},
                          plugins=[bambisleep_plugin, sensay_plugin])
    return access_warnings(config)


def test_check_warns_about_backends_that_share_users_data() -> None:
    text = """admins: [7]
backends:
  bambi: {type: bambisleep, api_key: k}
  one: {type: sensay, organization_secret: s, replica_uuid: r, user_id: "u-1"}
  fixed: {type: sensay, organization_secret: s, replica_uuid: r, user_id: "u-1",
          api_version: "2025-04-01"}
  each: {type: sensay, organization_secret: s, replica_uuid: r, user_id: "tg-{user_id}"}
  created: {type: sensay, organization_secret: s, replica_uuid: r}
default: bambi
"""
    assert _warnings(text) == [
        "c.yaml:3: backends.bambi: every Telegram user talks through one BambiSleep account, "
        "whose session history holds everyone's conversations: /sessions and /session show "
        "it to the bot's admins",
        "c.yaml:4: backends.one: user_id 'u-1' is one Sensay user for every Telegram user: "
        "the replica keeps everyone's messages in one conversation",
        "c.yaml:5: backends.fixed: user_id 'u-1' is one Sensay user for every Telegram user: "
        "the replica keeps everyone's messages in one conversation, which /history shows to "
        "anyone",
    ]


def test_each_account_without_admins_is_named() -> None:
    text = TWO + """admins: []
accounts:
  support: {telegram: {session_name: s}, admins: [1]}
  concierge: {telegram: {session_name: c}}
  sales: {telegram: {session_name: t}, admins: []}
"""
    assert _warnings(text) == [
        "c.yaml:6: admins: no admins: nobody may use /backend NAME, /status or a backend's "
        "admin-only commands (list your Telegram user id)",
        "c.yaml:10: accounts.sales.admins: no admins: nobody may use /backend NAME, /status or "
        "a backend's admin-only commands (list your Telegram user id)",
    ]
