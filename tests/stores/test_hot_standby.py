"""One account, two `tgmux run` processes on one PostgreSQL database: the second stands by,
and answers the next message within seconds after the first is killed with SIGKILL.

Each process is the real `run_telegram` (leases, engine, Telegram frontend, the real Pyrogram
client) with only the network replaced by the offline Telegram; stdin lines are messages to
it, stdout lines what it sent (tests/run_driver.py)."""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import pytest
from run_driver import Proc

#: Seconds within which the standby runs the account after the holder was killed.
TAKE_OVER = 30


@pytest.mark.timeout(240)
def test_a_standby_takes_the_account_over_after_kill_9(tmp_path: Path, pg_url: str) -> None:
    account = f"acct_{secrets.token_hex(4)}"  # advisory locks are database-wide
    config = tmp_path / "config.yaml"
    # lease_timeout: the server's own bounds on a dead holder's lease (idle_session_timeout,
    # keepalives) are 2 minutes: a take-over within TAKE_OVER seconds is the kill's doing
    config.write_text(f"""
store: {{url: "{pg_url}", lease_timeout: 60}}
accounts:
  {account}:
    telegram: {{api_id: 1, api_hash: 0123456789abcdef0123456789abcdef, data_dir: "{tmp_path}/data",
               bot_token: "123456:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}
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
        assert first.reply(30)["text"] == "echo: hello first"

        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(10)
        took_over = second.wait_log("tgmux is running on Telegram", 2 * TAKE_OVER)
        # the lease died with the first process's connection (a second or two on an idle
        # machine; the bound leaves room for a loaded one)
        assert took_over < TAKE_OVER
        # (each process's offline Telegram counts message ids from 1; Telegram's go on)
        second.send(user_id=42, text="hello second", message_id=2)
        texts = [second.reply(30)["text"]]
        if texts[0].startswith("I was restarted"):
            # SIGKILL came before the first process marked its answer done: the standby
            # tells the user rather than answer twice
            texts.append(second.reply(30)["text"])
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
