"""Two `tgmux run` processes, each in a working directory of its own, on one PostgreSQL store
and one offline Telegram (its state file): the second stands by; the first is killed with
SIGKILL; the second takes the account over with the session from the database (no shared
data directory), and answers what arrived meanwhile and what the first had not answered,
nothing twice.

Each process is the real `run_telegram` (leases, engine, Telegram frontend, the session and
update position in the store, the real Pyrogram client); only the network is the offline
Telegram, read from its state file when the process connects (so a standby meets what Telegram
holds when it takes over, as on Telegram)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from run_driver import Proc

DRIVER = r'''
import asyncio, json, sys
from pyrogram import Client
from tgmux.bootstrap import load
from tgmux.console import read_lines
from tgmux.logs import setup_logging
from tgmux.telegram import run as telegram_run
from tgmux.telegram.client import CLIENT_OPTIONS
from tgmux.telegram.fake import FakeTelegram
from tgmux.telegram.store_session import StoreSession

STATE = sys.argv[2]
held = {}

def build(config, account=None, *, store=None, **_):
    name = config.account(account).name
    client = Client("tgmux-offline", api_id=1, api_hash="0" * 32, **CLIENT_OPTIONS,
                    skip_updates=False, storage_engine=StoreSession(store, name))

    async def connect():
        fake = FakeTelegram(state=STATE)  # what Telegram holds now
        fake.listeners.append(lambda action: print(json.dumps(action), flush=True))
        held["fake"] = fake
        fake.attach(client)
        return await client.connect()

    client.connect = connect
    return client

telegram_run.build_client = build

async def feed():
    lines = read_lines(sys.stdin)
    while (line := await lines.get()) is not None:
        fields = json.loads(line)
        if "disconnect" in fields:  # the connection drops: what arrives is only logged
            held["fake"].disconnect(fields["disconnect"])
            continue
        chat_id, message_id = await held["fake"].incoming(**fields)
        print(json.dumps({"action": "logged", "chat_id": chat_id, "message_id": message_id}),
              flush=True)

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


class Node(Proc):
    """`tgmux run` (DRIVER) in a working directory of its own."""

    def __init__(self, config: Path, state: Path, workdir: Path, env: dict[str, str]) -> None:
        workdir.mkdir()
        self.workdir = workdir
        original = subprocess.Popen

        def popen(args, **kwargs):  # the DRIVER above, in workdir
            return original([sys.executable, "-c", DRIVER, str(config), str(state)],
                            cwd=workdir, **kwargs)

        subprocess.Popen = popen  # type: ignore[assignment,misc]
        try:
            super().__init__(config, env)
        finally:
            subprocess.Popen = original  # type: ignore[misc]


async def stored_session(pg_url: str, account: str) -> dict:
    conn = await asyncpg.connect(pg_url.split("?")[0], server_settings={
        "search_path": pg_url.split("search_path=")[1]})
    try:
        text = await conn.fetchval("SELECT session FROM tgmux_account_state WHERE account=$1",
                                   account)
    finally:
        await conn.close()
    assert text is not None
    return json.loads(text)


def logged(node: Proc, timeout: float = 30) -> None:
    """Until the node's offline Telegram has the message sent last (in its state file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(node.out.get(timeout=0.1))["action"] == "logged":
                return
        except queue.Empty:
            continue
    raise AssertionError("the message was not logged")


@pytest.mark.timeout(180)
def test_a_standby_on_another_node_takes_over_with_the_session_from_the_database(
        tmp_path: Path, pg_url: str) -> None:
    account = f"acct_{secrets.token_hex(4)}"  # advisory locks are database-wide
    config = tmp_path / "config.yaml"
    state = tmp_path / "telegram.db"
    config.write_text(f"""
store: "{pg_url}"
accounts:
  {account}:
    telegram: {{api_id: 1, api_hash: 0123456789abcdef0123456789abcdef,
               bot_token: "5000000001:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}
backends:
  echo: {{type: echo, prefix: "echo: "}}
default: echo
log_level: INFO
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    first = Node(config, state, tmp_path / "node-a", env)
    second = None
    answered: list[str] = []
    try:
        first.wait_log("tgmux is running on Telegram", 30)
        second = Node(config, state, tmp_path / "node-b", env)
        second.wait_log(f"account {account} is run by", 30)
        for n in range(3):
            first.send(user_id=42, text=f"before {n}")
            answered.append(first.reply(30)["text"])
        session = asyncio.run(stored_session(pg_url, account))
        # the holder goes deaf, then dies: what arrives meanwhile is only on Telegram
        first.send(disconnect=600)
        for n in range(2):
            first.send(user_id=42 + n, text=f"meanwhile {n}")
            logged(first)
        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(10)
        second.wait_log("tgmux is running on Telegram", 60)
        while len([t for t in answered if "meanwhile" in t]) < 2:
            answered.append(second.reply(30)["text"])
        second.send(user_id=42, text="after")
        answered.append(second.reply(30)["text"])
    finally:
        first.kill()
        if second is not None:
            second.popen.send_signal(signal.SIGTERM)
            try:
                second.popen.wait(20)
            finally:
                second.kill()
    assert second.popen.returncode == 0, "".join(second.err)
    # the standby used the first node's session: the same authorization, from the database
    assert asyncio.run(stored_session(pg_url, account))["auth_key"] == session["auth_key"]
    assert len(base64.b64decode(session["auth_key"])) == 256
    assert not list((tmp_path / "node-b").glob("*.session"))  # no session file anywhere
    assert sorted(answered) == ["echo: after", "echo: before 0", "echo: before 1",
                                "echo: before 2", "echo: meanwhile 0", "echo: meanwhile 1"]
