"""Running an account under its lease (``tgmux run``): what happens when the lease is lost.

A lease is lost when its database connection dies (PostgreSQL restarted, the connection killed,
or found dead by the lease's probe: :mod:`tgmux.store.postgres`). Another process may run the
account from then on, so at once:

* nothing more is answered for it here: its queued messages stay pending in the store's inbox
  for whoever runs it next, its turns under way are cancelled (left "dispatched": whoever runs
  it tells their users, once, to send again) and its Telegram client disconnects (two clients
  on one session are both cut off by Telegram);
* the lease is tried again every :attr:`~tgmux.store.AccountLease.poll_interval` seconds: when
  the database is back and no one else took the account, this process runs it again (a
  database restart does not stop the bot); when another process holds it, this one exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from tgmux.store import AccountHolder, AccountLease
from tgmux.telegram.app import TelegramApp

__all__ = ["give_up", "keep_account", "take_back"]

log = logging.getLogger("tgmux.telegram")

#: Seconds stopping an account's Telegram client may take once its lease is lost.
GIVE_UP_TIMEOUT = 10.0
#: Connects an account and starts answering for it: None when running, else an exit status.
Connect = Callable[[], Awaitable[int | None]]


async def keep_account(app: TelegramApp, name: str, lease: AccountLease,
                       stopping: asyncio.Event, connect: Connect) -> int:
    """Run ``name`` (connected, its lease held) for as long as this process may: returns the
    exit status when it may not any more (1: another process holds it or Telegram refused
    after a take-back; 0: a stop came while taking it back)."""
    while True:
        await lease.wait_lost()
        await give_up(app, name)
        log.warning("account %s: answering nothing more for it (its messages stay pending in "
                    "the store); taking it back once the database answers, unless another "
                    "process has it", name)
        outcome = await take_back(lease, name, stopping)
        if outcome is not None:
            return outcome
        log.info("account %s: the lease is held again", name)
        problem = await connect()
        if problem is not None:
            return problem


async def give_up(app: TelegramApp, name: str) -> None:
    """Stop running ``name`` here at once (see the module docstring)."""
    app.engine.stop_serving(name)
    account = app.accounts[name]
    try:  # bounded: the network may be what failed
        async with asyncio.timeout(GIVE_UP_TIMEOUT):
            await account.quiesce()
            await account.disconnect()
    except (TimeoutError, OSError) as exc:
        log.warning("account %s: leaving Telegram took over %g s (%s); going on", name,
                    GIVE_UP_TIMEOUT, exc or type(exc).__name__)


def _ours(holder: AccountHolder) -> bool:
    """The holder is this process (its old connection, not gone yet on the server)."""
    return holder.pid == os.getpid() and holder.hostname == socket.gethostname()


async def take_back(lease: AccountLease, name: str, stopping: asyncio.Event) -> int | None:
    """Try the lease until it is held (None), another process holds it (1) or ``stopping``
    is set (0)."""
    failing = False
    while not stopping.is_set():
        try:  # waiting first: a standby waiting for the lease gets it before this process
            async with asyncio.timeout(lease.poll_interval):
                await stopping.wait()
            break
        except TimeoutError:
            pass
        try:
            if await lease.acquire(wait=False):
                return None
            holder = await lease.holder()
        except Exception as exc:
            if not failing:  # once per outage
                log.warning("account %s: the store does not answer (%s); trying again every "
                            "%g s", name, exc, lease.poll_interval)
            failing = True
        else:
            if holder is not None and not _ours(holder):
                log.error("account %s: now run by %s pid %d; stopping (a supervisor restarts "
                          "tgmux as a standby)", name, holder.hostname, holder.pid)
                return 1
    return 0
