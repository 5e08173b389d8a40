"""Signals and stops at every moment of ``tgmux run``, ``tgmux chat`` and ``tgmux simulate``:
SIGHUP while starting or stopping never ends the process; the HTTP server (``/healthz``, media
links) stops last. Each test waits for a mark (a file the backend writes when it gets there, a
log line), never for a fixed time (tests/child.py)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from child import Child, child_env, gated_config, hold, let_go, wait_file

TOKEN = "123456:ABCdefGhIJKlmnoPQRstuVWXyz012345678"
TELEGRAM = ("telegram: {api_id: 12345, api_hash: 0123456789abcdef0123456789abcdef, "
            f'bot_token: "{TOKEN}", data_dir: "DATA", shutdown_timeout: 10}}\n')

#: ``tgmux run`` through its command line, with only Telegram's network replaced by the
#: offline fake (as tests/run_driver.py): stdin lines are messages, stdout what it sent.
RUN_CLI = r'''
import asyncio, json, sys
import tgmux.telegram
from tgmux.console import read_lines
from tgmux.telegram import run as telegram_run
from tgmux.telegram.fake import FakeTelegram, offline_client

fake = FakeTelegram()
fake.listeners.append(lambda action: print(json.dumps(action), flush=True))
telegram_run.build_client = lambda config, account=None, **_: offline_client(fake)
real_run = telegram_run.run_telegram

async def feed():
    lines = read_lines(sys.stdin)
    while (line := await lines.get()) is not None:
        await fake.incoming(**json.loads(line))

async def run_telegram(*args, **kwargs):
    feeding = asyncio.ensure_future(feed())
    try:
        return await real_run(*args, **kwargs)
    finally:
        feeding.cancel()

tgmux.telegram.run_telegram = run_telegram
from tgmux.cli import main
sys.argv = ["tgmux", *sys.argv[1:]]
main()
'''

MESSAGE = {"chat_type": "private", "chat_id": 42, "user_id": 42, "text": "hi"}


def start(command: str, folder: Path) -> Child:
    env = child_env(folder)
    if command == "run":
        config = gated_config(folder, TELEGRAM.replace("DATA", str(folder / "data")))
        return Child("run", "-c", str(config), env=env, code=RUN_CLI)
    return Child(command, "-c", str(gated_config(folder)), env=env)


def say_hi(proc: Child, command: str, *, last: bool) -> None:
    if command == "chat":
        proc.write("hi\n", close=last)
    else:
        proc.write(json.dumps(MESSAGE) + "\n", close=last and command == "simulate")


def replies(proc: Child, command: str) -> list[str]:
    if command == "chat":
        return proc.stdout().splitlines()
    return [json.loads(line)["text"] for line in proc.stdout().splitlines()
            if json.loads(line).get("action") == "send_message"]


@pytest.mark.parametrize("command", ["chat", "simulate", "run"])
def test_sighup_while_starting_and_while_stopping_does_not_end_the_process(
        tmp_path: Path, command: str) -> None:
    hold(tmp_path, "start", "close")
    proc = start(command, tmp_path)
    try:
        wait_file(tmp_path / "start", child=proc)  # starting: the backends start
        proc.signal(signal.SIGHUP)
        proc.wait_log("SIGHUP while tgmux starts")
        let_go(tmp_path, "start")
        # the SIGHUP was not forgotten: the config is read again once the process runs
        proc.wait_log("config reloaded from")
        say_hi(proc, command, last=True)
        wait_file(tmp_path / "reply-1", child=proc)
        if command == "run":
            proc.wait_log("tgmux is running on Telegram")
            proc.signal(signal.SIGTERM)
        wait_file(tmp_path / "close", child=proc)  # stopping: the backends close
        proc.signal(signal.SIGHUP)
        proc.wait_log("SIGHUP ignored: tgmux is stopping")
        let_go(tmp_path, "close")
        code = proc.wait()
    finally:
        proc.kill()
    assert code == 0, proc.stderr()
    assert replies(proc, command) == ["gated: hi"]
    assert "Traceback" not in proc.stderr()


# -- the HTTP server stops last ------------------------------------------------------------------

SENSAY_REPLICA = "55555555-5555-4555-8555-555555555555"


async def test_simulate_with_piped_input_keeps_a_photo_link_alive_until_sensay_fetched_it(
        tmp_path: Path) -> None:
    """The input ends at once; the photo's link must outlive the reply that hands it to Sensay
    (the server used to stop before the replies were done: Sensay fetched a dead link)."""
    import asyncio
    import socket
    import sys

    from tgmux.backends.sensay.simulator import Replica, SensaySimulator

    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    (tmp_path / "photo.jpg").write_bytes(jpeg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with SensaySimulator(organization_secret="org-secret-7",
                               replicas=[Replica(SENSAY_REPLICA, "Abe")]) as sim:
        config = tmp_path / "config.yaml"
        config.write_text(f"""
store: memory://
backends:
  abe:
    type: sensay
    base_url: {sim.base_url}
    organization_secret: org-secret-7
    replica_uuid: {SENSAY_REPLICA}
    stream: false
default: abe
server:
  listen: 127.0.0.1:{port}
  public_url: http://127.0.0.1:{port}
""")
        line = json.dumps({"user_id": 42, "text": "what is this?",
                           "photo": str(tmp_path / "photo.jpg")})
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tgmux", "simulate", "-c", str(config),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=child_env(tmp_path))
        out, err = await asyncio.wait_for(proc.communicate((line + "\n").encode()), 60)
    assert proc.returncode == 0, err.decode()
    sent = [json.loads(x) for x in out.decode().splitlines()]
    assert [a["text"] for a in sent if a["action"] == "send_message"] == [
        "[Abe] what is this? (history: 0)"]
    (turn,) = sim.turns
    assert (turn.image_status, turn.image_bytes) == (200, jpeg)


@pytest.mark.parametrize("command", ["simulate", "run"])
def test_the_http_server_answers_until_the_last_reply_of_a_stop_is_done(
        tmp_path: Path, command: str) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hold(tmp_path, "reply-1")
    server = f"server: {{listen: '127.0.0.1:{port}'}}\n"
    env = child_env(tmp_path)
    if command == "run":
        config = gated_config(tmp_path, server + TELEGRAM.replace("DATA", str(tmp_path / "d")))
        proc = Child("run", "-c", str(config), env=env, code=RUN_CLI)
        proc.wait_log("tgmux is running on Telegram")
    else:
        proc = Child(command, "-c", str(gated_config(tmp_path, server)), env=env)
    try:
        say_hi(proc, command, last=False)
        wait_file(tmp_path / "reply-1", child=proc)  # the reply is under way
        proc.signal(signal.SIGTERM)
        proc.wait_log("stop requested")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200  # still served while the reply is finished
        let_go(tmp_path, "reply-1")
        code = proc.wait()
    finally:
        proc.kill()
    assert code == 0, proc.stderr()
    assert replies(proc, command) == ["gated: hi"]
