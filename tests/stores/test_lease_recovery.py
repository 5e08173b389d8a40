"""`tgmux run` on PostgreSQL when its account's lease is lost (issue 20, "The database"):

* a database restart (no standby): the process takes its account back when the database is
  back and answers again, instead of exiting 1;
* the lease connection killed while a standby waits: the standby takes over and every queued
  message is answered exactly once (the old process hands its unstarted turns back);

Each process is the real `run_telegram` with only the network replaced by the offline Telegram
(tests/run_driver.py)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import queue
import secrets
import signal
import threading
import time
from pathlib import Path

import asyncpg
import pg_server
import pytest
from run_driver import Proc


def write_config(tmp_path: Path, url: str, account: str, backend: str = "") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(f"""
store: "{url}"
accounts:
  {account}:
    telegram:
      api_id: 1
      api_hash: 0123456789abcdef0123456789abcdef
      bot_token: "123456:ABCdefGhIJKlmnoPQRstuVWXyz012345678"
      data_dir: "{tmp_path}/data"
backends:
  echo: {{type: echo, prefix: "echo: "{backend}}}
default: echo
log_level: INFO
""")
    return config


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}


def stop(proc: Proc) -> int:
    proc.popen.send_signal(signal.SIGTERM)
    try:
        return proc.popen.wait(30)
    finally:
        proc.kill()


@pytest.mark.timeout(180)
def test_a_database_restart_does_not_stop_the_bot(tmp_path: Path,
                                                  private_pg: pg_server.Server) -> None:
    config = write_config(tmp_path, private_pg.url(), "main")
    proc = Proc(config, clean_env())
    try:
        proc.wait_log("tgmux is running on Telegram", 30)
        proc.send(user_id=42, text="before")
        assert proc.reply(30)["text"] == "echo: before"
        # the reply is shown before its inbox state is written: stopping the database in
        # between would leave it cut off (its user told to resend), which is not this test
        asyncio.run(inbox_done(private_pg.url(), "main", 42, 1))

        private_pg.stop("fast")  # every connection is closed: the lease is lost
        proc.wait_log("the lease was lost", 30)
        private_pg.start()
        proc.wait_log("the lease is held again", 60)
        proc.wait_log("tgmux is running on Telegram", 30)
        assert proc.popen.poll() is None
        proc.send(user_id=42, text="after", message_id=2)
        assert proc.reply(30)["text"] == "echo: after"
    finally:
        status = stop(proc)
    assert status == 0, "".join(proc.err)



async def inbox_done(url: str, account: str, chat_id: int, message_id: int,
                     timeout: float = 30) -> None:
    """Waits until the message is marked answered in the store's inbox."""
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval(
                "SELECT state FROM tgmux_inbox WHERE account = $1 AND chat_id = $2 "
                "AND message_id = $3", account, chat_id, message_id) != "done":
            assert time.monotonic() < deadline, "the answered message was never marked done"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def sent_texts(proc: Proc, into: list[str]) -> None:
    """Adds what ``proc`` sent since the last call to ``into``."""
    while not proc.out.empty():
        action = json.loads(proc.out.get())
        if action["action"] == "send_message":
            into.append(action["text"])


def first_draft(proc: Proc, timeout: float = 30) -> None:
    """Waits until ``proc`` shows a reply growing (a turn is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            action = json.loads(proc.out.get(timeout=0.1))
        except queue.Empty:
            continue
        if action["action"] == "send_draft":
            return
    raise AssertionError(f"no draft in {timeout} s; stderr: {''.join(proc.err)}")


async def kill_lease_connection(url: str, account: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        pid = await conn.fetchval("SELECT backend_pid FROM tgmux_accounts WHERE account=$1",
                                  account)
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


@pytest.mark.timeout(180)
def test_a_killed_lease_connection_hands_queued_messages_over_once(tmp_path: Path,
                                                                   pg_url: str) -> None:
    account = f"acct_{secrets.token_hex(4)}"  # advisory locks are database-wide
    # each reply takes seconds (a slow provider): the messages queue up in the first process
    config = write_config(tmp_path, pg_url, account, ", stream: true, delay: 0.7")
    first = Proc(config, clean_env())
    first.wait_log("tgmux is running on Telegram", 30)
    second = Proc(config, clean_env())
    texts: list[str] = []
    try:
        second.wait_log(f"account {account} is run by", 30)
        for n in range(1, 5):
            first.send(user_id=42, text=f"m{n} w w w", message_id=n)
        first_draft(first)  # m1 is at the provider, m2..m4 wait in the first process

        asyncio.run(kill_lease_connection(pg_url, account))
        first.wait_log("the lease was lost", 30)
        # whoever runs the account now answers m2..m4 and tells m1's user once
        deadline = time.monotonic() + 60
        while not all(any(f"m{n} w w w" in t for t in texts) for n in range(1, 5)):
            assert time.monotonic() < deadline, (texts, "".join(first.err + second.err))
            sent_texts(first, texts)
            sent_texts(second, texts)
            time.sleep(0.05)
    finally:
        for proc in (first, second):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in (first, second):
            try:
                proc.popen.wait(30)
            finally:
                proc.kill()
    for proc in (first, second):  # everything either sent, to its end
        proc.output_read()
        sent_texts(proc, texts)
    for n in range(1, 5):
        answers = [t for t in texts if f"m{n} w w w" in t]
        assert len(answers) == 1, (n, texts)


class SilentProxy:
    """A TCP proxy on 127.0.0.1 in front of PostgreSQL that, once :meth:`partition` is called,
    forwards nothing more and closes nothing (a network partition: no reset reaches anyone).
    Runs in a thread of its own (the test drives processes synchronously)."""

    def __init__(self, port: int) -> None:
        self.target_port = port
        self.port = 0
        self.silent = threading.Event()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._stop = asyncio.Event()
        self._ready.set()
        async with server:
            await self._stop.wait()
        clients = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if not self.silent.is_set():  # partitioned: swallowed, nothing closed
                    dst.write(data)
                    await dst.drain()
            if not self.silent.is_set():
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer),
                             return_exceptions=True)

    def partition(self) -> None:
        self.silent.set()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def log_time(line: str) -> float:
    """The timestamp of a log line (``2026-01-01 00:00:00,123 LEVEL …``)."""
    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


@pytest.mark.timeout(180)
def test_a_silently_partitioned_holder_notices_before_a_standby_takes_over(
        tmp_path: Path, pg_url: str) -> None:
    account = f"acct_{secrets.token_hex(4)}"
    port = int(pg_url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    proxy = SilentProxy(port)
    proxied = pg_url.replace(f":{port}/", f":{proxy.port}/")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    holder_config = write_config(tmp_path / "a", proxied, account)
    standby_config = write_config(tmp_path / "b", pg_url, account)
    # lease_timeout: 8 s. The holder notices within 2/3 of it (a probe a third apart, answered
    # within a third), the server frees the lock after twice it without a query: the holder
    # is first by about 8 s. (With 2 s: by 2 s, and a probe answered later than 0.67 s on a
    # loaded machine lost the lease before the partition.)
    for config in (holder_config, standby_config):
        text = config.read_text()
        url = text.split('store: "', 1)[1].split('"', 1)[0]
        config.write_text(text.replace(f'store: "{url}"',
                                       f'store: {{url: "{url}", lease_timeout: 8}}'))
    holder = Proc(holder_config, clean_env())
    standby = None
    try:
        holder.wait_log("tgmux is running on Telegram", 30)
        standby = Proc(standby_config, clean_env())
        standby.wait_log(f"account {account} is run by", 30)
        proxy.partition()
        holder.wait_log("the lease was lost", 30)
        lost = log_time(holder.err[-1])
        standby.wait_log("tgmux is running on Telegram", 60)
        took_over = log_time(next(line for line in standby.err if "taking over" in line))
        assert lost < took_over, "".join(holder.err + standby.err)
        standby.send(user_id=42, text="hello")
        assert standby.reply(30)["text"] == "echo: hello"
    finally:
        holder.kill()
        if standby is not None:
            stop(standby)
        proxy.close()
