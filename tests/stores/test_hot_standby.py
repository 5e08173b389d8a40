"""One account, two `tgmux run` processes on one PostgreSQL database: the second stands by,
and answers the next message within seconds after the first is killed with SIGKILL.

Each process is the real `run_telegram` (leases, engine, Telegram frontend, the real Pyrogram
client) with only the network replaced by the offline Telegram; stdin lines are messages to
it, stdout lines what it sent."""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

DRIVER = r'''
import asyncio, json, sys
from tgmux.bootstrap import load
from tgmux.console import read_lines
from tgmux.logs import setup_logging
from tgmux.telegram import run as telegram_run
from tgmux.telegram.fake import FakeTelegram, offline_client

fake = FakeTelegram()
fake.remember_chat(chat_type="private", chat_id=42, user_id=42)  # Telegram knows the chat
fake.listeners.append(lambda action: print(json.dumps(action), flush=True))
telegram_run.build_client = lambda config, account=None, **_: offline_client(fake)

async def feed():
    lines = read_lines(sys.stdin)
    while (line := await lines.get()) is not None:
        await fake.incoming(**json.loads(line))

async def main():
    config, pm = load(sys.argv[1])
    setup_logging(config.data.log_level, config.data.log_format)
    feeding = asyncio.ensure_future(feed())
    try:
        return await telegram_run.run_telegram(config, pm)
    finally:
        feeding.cancel()

sys.exit(asyncio.run(main()))
'''


class Proc:
    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen([sys.executable, "-c", DRIVER, str(config)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env)
        self.out: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        self._err_lines: queue.Queue[str] = queue.Queue()
        for stream, sink in ((self.popen.stdout, self.out), (self.popen.stderr,
                                                             self._err_lines)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink.put(line)

    def wait_log(self, text: str, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                line = self._err_lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.err.append(line)
            if text in line:
                return time.monotonic() - started
        raise AssertionError(f"no {text!r} in {timeout} s; stderr: {''.join(self.err)}")

    def send(self, **message: object) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(message) + "\n")
        self.popen.stdin.flush()

    def reply(self, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                action = json.loads(self.out.get(timeout=0.1))
            except queue.Empty:
                continue
            if action["action"] == "send_message":
                return action
        while not self._err_lines.empty():
            self.err.append(self._err_lines.get())
        raise AssertionError(f"no reply; stderr: {''.join(self.err)}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)


@pytest.mark.timeout(120)
def test_a_standby_takes_the_account_over_after_kill_9(tmp_path: Path, pg_url: str) -> None:
    account = f"acct_{secrets.token_hex(4)}"  # advisory locks are database-wide
    config = tmp_path / "config.yaml"
    config.write_text(f"""
store: "{pg_url}"
accounts:
  {account}:
    telegram: {{api_id: 1, api_hash: h, bot_token: "123456:ABC", data_dir: "{tmp_path}/data"}}
backends:
  echo: {{type: echo, prefix: "echo: "}}
default: echo
log_level: INFO
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    first = Proc(config, env)
    second = None
    try:
        first.wait_log("tgmux is running on Telegram", 30)
        second = Proc(config, env)
        second.wait_log(f"account {account} is run by", 30)
        first.send(user_id=42, text="hello first")
        assert first.reply()["text"] == "echo: hello first"

        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(10)
        took_over = second.wait_log("tgmux is running on Telegram", 15)
        assert took_over < 10  # the lease died with the first process's connection
        # (each process's offline Telegram counts message ids from 1; Telegram's go on)
        second.send(user_id=42, text="hello second", message_id=2)
        texts = [second.reply()["text"]]
        if texts[0].startswith("I was restarted"):
            # SIGKILL came before the first process marked its answer done: the standby
            # tells the user rather than answer twice
            texts.append(second.reply()["text"])
        assert texts[-1] == "echo: hello second"
    finally:
        first.kill()
        if second is not None:
            second.popen.send_signal(signal.SIGTERM)
            try:
                second.popen.wait(20)
            finally:
                second.kill()
    assert second.popen.returncode == 0, "".join(second.err)
