"""`tgmux run` in a child process, the real `run_telegram` (leases, engine, Telegram frontend,
the real Pyrogram client) with only the network replaced by the offline Telegram: stdin lines
are messages to it, stdout lines what it sent, stderr its log."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

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
        self._pumps = [threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
                       for stream, sink in ((self.popen.stdout, self.out),
                                            (self.popen.stderr, self._err_lines))]
        for pump in self._pumps:
            pump.start()

    def output_read(self, timeout: float = 10) -> None:
        """Waits until everything the (ended) process wrote is in ``out``."""
        for pump in self._pumps:
            pump.join(timeout)

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
