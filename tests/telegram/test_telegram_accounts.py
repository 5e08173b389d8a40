"""Several accounts through the real Pyrogram clients (offline): `tgmux simulate` routes each
account by its own table and says whose each action is; /metrics moves during a run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ACCOUNTS = """
store: "memory://"
backends:
  lucy: {type: echo, prefix: "lucy: "}
  lincoln: {type: echo, prefix: "lincoln: "}
  bambi: {type: echo, prefix: "bambi: "}
default: lucy
accounts:
  support:
    telegram:
      api_id: 1
      api_hash: 0123456789abcdef0123456789abcdef
      bot_token: "1:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
      session_name: support
    routes:
      - match: {chat_type: [group, supergroup]}
        backend: lincoln
  concierge:
    telegram:
      api_id: 1
      api_hash: 0123456789abcdef0123456789abcdef
      bot_token: "2:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
      session_name: concierge
    default: bambi
"""


def simulate(config: Path, lines: list[dict], *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    return subprocess.run([sys.executable, "-m", "tgmux", "simulate", "-c", str(config),
                           *extra], input="".join(json.dumps(line) + "\n" for line in lines),
                          capture_output=True, text=True, timeout=60, env=env)


def test_each_account_is_routed_by_its_own_table(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(ACCOUNTS)
    done = simulate(config, [
        {"user_id": 42, "text": "hi"},                                # the first account
        {"account": "concierge", "user_id": 42, "text": "hi"},
        {"account": "support", "chat_id": -5, "user_id": 42, "text": "@support_bot hey"},
        {"account": "nobody", "user_id": 42, "text": "hi"},
    ])
    assert done.returncode == 1  # the line for an unknown account
    assert "input line 4: account: no account 'nobody' (the config has: support, concierge)" \
        in done.stderr
    sent = [json.loads(line) for line in done.stdout.splitlines()]
    messages = [(a["account"], a["chat_id"], a["text"]) for a in sent
                if a["action"] == "send_message"]
    assert messages == [("support", 42, "lucy: hi"), ("concierge", 42, "bambi: hi"),
                        ("support", -5, "lincoln: hey")]
    assert {a["account"] for a in sent if a["action"] == "set_commands"} == {"support",
                                                                               "concierge"}


def test_a_single_account_config_prints_no_account_field(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text('store: "memory://"\nbackends:\n  e: {type: echo}\ndefault: e\n')
    done = simulate(config, [{"user_id": 1, "text": "x"}])
    assert done.returncode == 0, done.stderr
    assert all("account" not in json.loads(line) for line in done.stdout.splitlines())


def test_metrics_move_during_a_simulate_run(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.yaml"
    config.write_text(ACCOUNTS + f'server: {{listen: "127.0.0.1:{port}"}}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    proc = subprocess.Popen([sys.executable, "-m", "tgmux", "simulate", "-c", str(config)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)

    def scrape(path: str = "/metrics") -> str:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def replies(text: str) -> float:
        key = 'tgmux_replies_total{account="concierge",backend="bambi",outcome="ok"} '
        return next((float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith(key)), 0.0)

    try:
        assert proc.stdin is not None
        ready = json.loads(scrape("/readyz"))
        assert ready["ready"] is True and set(ready["checks"]) == {
            "store", "account support", "account concierge"}
        before = replies(scrape())
        for i in range(3):
            proc.stdin.write(json.dumps({"account": "concierge", "user_id": 7,
                                         "text": f"m{i}"}) + "\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 20
        while replies(scrape()) < before + 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        text = scrape()
        assert replies(text) == before + 3
        assert 'tgmux_messages_received_total{account="concierge"} 3.0' in text
        proc.communicate("", timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
