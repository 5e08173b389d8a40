"""Deep links (``t.me/bot?start=PAYLOAD``: the app sends ``/start PAYLOAD``) through
``tgmux simulate``: the payload reaches plugins (``IncomingMessage.start_payload``) and a
backend that declares ``/start`` (``turn.command == "start"``, ``turn.args`` the payload); a
backend without one leaves ``/start`` to the built-in greeting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CONFIG = """
telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}
store: memory://
plugins: [tg_deeplink]
backends:
  starter: {type: starter}
  echo: {type: echo, prefix: "echo: "}
routes:
  - match: {user_id: 7}
    backend: echo
default: starter
"""
GREETING = "Hi! Send me a message and I will answer. /help lists what I can do."


def simulate(tmp_path: Path, lines: list[dict]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "tgmux", "simulate", "-c", str(config)],
        input="".join(json.dumps(line) + "\n" for line in lines), capture_output=True,
        text=True, timeout=60, env={"PYTHONPATH": str(Path(__file__).parent),
                                    "PATH": "/usr/bin:/bin"})


def texts(result: subprocess.CompletedProcess[str]) -> list[tuple[int, str]]:
    return [(a["chat_id"], a["text"]) for a in map(json.loads, result.stdout.splitlines())
            if a["action"] == "send_message"]


def test_a_deep_link_payload_reaches_the_plugin_and_a_backend_with_a_start(
        tmp_path: Path) -> None:
    result = simulate(tmp_path, [
        {"user_id": 42, "text": "/start ref-2024_spring"},
        {"user_id": 43, "text": "/start@tgmux_bot campaign42"},
        {"user_id": 44, "text": "/start"},
        {"user_id": 42, "text": "hello"}])
    assert result.returncode == 0, result.stderr
    assert texts(result) == [
        (42, "command=start args='ref-2024_spring' text='ref-2024_spring'"),
        (43, "command=start args='campaign42' text='campaign42'"),
        (44, "command=start args='' text=''"),
        (42, "starter: hello")]
    assert "plugin: start payload 'ref-2024_spring' from user 42" in result.stderr
    assert "plugin: start payload 'campaign42' from user 43" in result.stderr


def test_a_backend_without_a_start_leaves_the_greeting_and_plugins_get_the_payload(
        tmp_path: Path) -> None:
    result = simulate(tmp_path, [{"user_id": 7, "text": "/start promo"}])
    assert result.returncode == 0, result.stderr
    assert texts(result) == [(7, GREETING)]
    assert "plugin: start payload 'promo' from user 7" in result.stderr
