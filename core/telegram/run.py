"""What the ``tgmux run`` and ``tgmux login`` commands call, and what tgmux tells the operator
when Telegram refuses to start (authorization problems, a stale session)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from pyrogram import Client
from pyrogram.errors import RPCError

from tgmux.config import Config, TelegramConfig
from tgmux.errors import ConfigError, TgmuxError
from tgmux.hangup import stopping as sighup_ignored
from tgmux.hooks import PluginManager
from tgmux.ops import start_ops_server
from tgmux.proxy import TELEGRAM_SCHEMES, parse_proxy
from tgmux.reload import reloading
from tgmux.server import OpsServer
from tgmux.store import open_store
from tgmux.telegram.app import TelegramApp
from tgmux.telegram.client import (
    Reach,
    SessionFileStorage,
    StoreSession,
    abandon,
    build_client,
    configured_kind,
    reach_of,
    session_file_kind,
    session_mode,
    telegram_proxy,
)
from tgmux.telegram.leases import keep_account
from tgmux.telegram.revoked import ACCOUNT_ERRORS

__all__ = ["CONNECT_TIMEOUT", "REVOKED_EXIT", "LoginRefused", "TelegramUnreachable", "login",
           "run_telegram", "start_bounded", "stop_signals"]

log = logging.getLogger("tgmux.telegram")

#: Seconds starting may take before anything answered (Pyrogram alone would keep retrying
#: for minutes). Once Telegram answered, its own request timeouts apply (and an interactive
#: login waits for the person typing).
CONNECT_TIMEOUT = 25.0
#: Seconds a cancelled start may take to let go of its connection.
_ABANDON_TIMEOUT = 2.0
_CHECK_NETWORK = "check the machine's network / proxy / firewall"


class TelegramUnreachable(TgmuxError):
    """Telegram could not be reached; the command line prints it as one ``error:`` line and
    exits 1 (the config is fine: the network is not)."""


class LoginRefused(TgmuxError):
    """Telegram refused ``tgmux login`` (a wrong api_id/api_hash...): one ``error:`` line,
    exit 1, as for ``tgmux run``."""


def unreachable_message(reach: Reach, exc: BaseException | None = None) -> str:
    problem = reach.problem or (str(exc) if exc is not None and str(exc) else None) or \
        f"no answer within {CONNECT_TIMEOUT:.0f} s"
    if reach.proxy_down:
        return (f"cannot reach the Telegram proxy {reach.proxy} ({problem}): check "
                f"{reach.proxy_key} and that the proxy is running")
    if reach.proxy:
        return (f"cannot reach Telegram through the proxy {reach.proxy} ({problem}): check "
                f"{reach.proxy_key} and the proxy's own network")
    return f"cannot reach Telegram ({problem}): {_CHECK_NETWORK}"


async def start_bounded(start: Any, reach: Reach, stopping: asyncio.Event | None = None,
                        *, connect_timeout: float = CONNECT_TIMEOUT) -> bool:
    """Await ``start`` (a coroutine that connects a client) until it is done; True then.
    False when ``stopping`` was set first (the start is cancelled: it has to let go of what it
    holds). Raises :class:`TelegramUnreachable` when nothing answered within
    ``connect_timeout`` or :attr:`Reach.hopeless` says it cannot succeed; other errors of
    ``start`` propagate (RPCError: Telegram answered and refused)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(start)
    waits = [asyncio.ensure_future(reach.hopeless.wait())]
    if stopping is not None:
        waits.append(asyncio.ensure_future(stopping.wait()))
    deadline = loop.time() + connect_timeout
    try:
        while not task.done():
            timeout = None if reach.answered else deadline - loop.time()
            if timeout is not None and timeout <= 0:
                raise TelegramUnreachable(unreachable_message(reach))
            done, _ = await asyncio.wait([task, *waits], timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                break
            if stopping is not None and stopping.is_set():
                return False
            if reach.hopeless.is_set() and not reach.answered:
                raise TelegramUnreachable(unreachable_message(reach))
        try:
            task.result()
        except (OSError, KeyError) as exc:
            if reach.answered:
                raise
            raise TelegramUnreachable(unreachable_message(reach, exc)) from None
        return True
    finally:
        for wait in waits:
            wait.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=_ABANDON_TIMEOUT)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved (it was either raised above or not wanted)


_AUTH_PROBLEMS = {
    "ACCESS_TOKEN_INVALID": "Telegram rejected the bot token (check telegram.bot_token)",
    "ACCESS_TOKEN_EXPIRED": "the bot token was revoked; get a new one from @BotFather",
    "USER_DEACTIVATED": "this Telegram account was deleted",
    "USER_DEACTIVATED_BAN": "this Telegram account was banned",
    "API_ID_INVALID": "Telegram rejected api_id/api_hash (check them at my.telegram.org)",
}
#: ``tgmux run``'s exit status when Telegram refuses every account left (revoked, banned): a
#: supervisor should not restart it (a new login or token is needed first).
REVOKED_EXIT = 3
#: Refusals that starting again cannot cure.
_ACCOUNT_REFUSALS = ACCOUNT_ERRORS | {"ACCESS_TOKEN_INVALID", "ACCESS_TOKEN_EXPIRED"}
#: The session's authorization is gone (logged out, revoked, token changed...).
_STALE_SESSION = {
    "AUTH_KEY_UNREGISTERED": "is not logged in any more",
    "AUTH_KEY_INVALID": "is not valid any more",
    "SESSION_REVOKED": "was terminated (e.g. from another device)",
    "SESSION_EXPIRED": "expired",
}


def _refusal(code: str, exc: RPCError, tg: TelegramConfig) -> str:
    """What to tell the operator when Telegram refused to start."""
    if code in _AUTH_PROBLEMS:
        return _AUTH_PROBLEMS[code]
    if code not in _STALE_SESSION:
        return str(exc)
    path = Path(tg.data_dir).expanduser() / f"{tg.session_name}.session"
    what = f"the session {_STALE_SESSION[code]}"
    if tg.bot_token:
        return (f"{what} and authorizing again with bot_token did not help: check "
                f"telegram.bot_token (@BotFather /token shows the current one); to start from "
                f"scratch delete {path}")
    if tg.session_string:
        return f"{what}; run `tgmux login` again and set session_string to the new string"
    return (f"{what}; delete {path} and start `tgmux run` in a terminal to log in again, or "
            "run `tgmux login` and set session_string")


def _check_session(config: Config, account: str) -> str | None:
    """The session file, if any, holds a login of the kind the config says (a bot's file
    never turns a user-account config into a bot, nor the other way round). A user account
    with no credentials nor session file, and no terminal to log in: what to say unless the
    store holds its session (None: nothing to check there)."""
    tg = config.accounts[account].telegram
    path = Path(tg.data_dir).expanduser() / f"{tg.session_name}.session"
    found = session_file_kind(path)
    wanted, said = configured_kind(tg)
    if found is not None and found != wanted:
        whose = "a bot's" if found == "bot" else "a user account's"
        raise ConfigError(
            f"{config.where(config.accounts[account].telegram_path)}: the session file {path} "
            f"holds {whose} login, but the config says a {wanted} ({said}): move the file "
            f"away, or set session_name (or data_dir) to give this {wanted} its own")
    if tg.bot_token or tg.session_string or path.exists() or sys.stdin.isatty():
        return None
    return (f"{config.where(config.accounts[account].telegram_path)}: no bot_token or "
            f"session_string, no session file {path} and no session in the store: run "
            "`tgmux login --config CONFIG` (it writes the session into the store), or set "
            "session_string (or start `tgmux run` in a terminal once to log in there)")


async def _sessions_in_store(config: Config, accounts: list[str]) -> set[str]:
    """Which of ``accounts`` the store holds a session for (written by `tgmux login
    --config`); none when it cannot be read (the caller's message says what to do)."""
    store = open_store(config.data.store.url)
    try:
        await store.open()
    except Exception:
        return set()
    try:
        return {name for name in accounts if await store.session_read(name) is not None}
    except Exception:
        return set()
    finally:
        with contextlib.suppress(Exception):
            await store.close()


@contextlib.contextmanager
def stop_signals(stopping: asyncio.Event,
                 on_signal: Callable[[], None] | None = None) -> Iterator[None]:
    """While inside: SIGINT and SIGTERM set ``stopping`` (and call ``on_signal``) once; a
    second one acts as usual (Ctrl-C interrupts for real, SIGTERM ends the process). Where the
    loop cannot take signal handlers (not the main thread, Windows) nothing changes."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def handler() -> None:
        for sig in signals:  # a second signal interrupts for real
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        stopping.set()
        if on_signal is not None:
            on_signal()

    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, handler)
    try:
        yield
    finally:
        for sig in signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


async def run_telegram(config: Config, plugin_manager: PluginManager,
                       accounts: list[str] | None = None) -> int:
    """``tgmux run``: serve the accounts (``accounts``: these only) until SIGINT/SIGTERM, then
    stop gracefully; 0 when stopped that way, 1 when Telegram refused to start or another
    process took an account over (a lost lease is taken back when the database answers again
    and no one else took it: :mod:`tgmux.telegram.leases`).

    Each account is run under its lease in the store (:meth:`tgmux.store.Store.hold_account`):
    with PostgreSQL, an account held by another process is waited for (a hot standby) and
    taken over when that process is gone. SIGHUP reloads the config file (:mod:`tgmux.reload`)."""
    names = list(config.accounts) if not accounts else list(dict.fromkeys(accounts))
    unknown = [n for n in names if n not in config.accounts]
    if unknown:
        raise ConfigError(f"--account: no account {', '.join(map(repr, unknown))} (the config "
                          f"has: {', '.join(config.accounts)})")
    problems: list[str] = []
    unless_stored: dict[str, str] = {}
    for name in names:
        try:
            config.require_telegram(name)
            if (problem := _check_session(config, name)) is not None:
                unless_stored[name] = problem
        except ConfigError as exc:
            problems += exc.problems
    if unless_stored:
        stored = await _sessions_in_store(config, list(unless_stored))
        problems += [p for name, p in unless_stored.items() if name not in stored]
    if problems:
        raise ConfigError(problems)
    store = open_store(config.data.store.url)
    clients = {name: build_client(config, name, store=store) for name in names}
    app = TelegramApp(config, plugin_manager, clients, store=store, serve=[])
    tg = config.accounts[names[0]].telegram
    stopping = asyncio.Event()

    def on_signal() -> None:
        if any(account.running for account in app.accounts.values()):
            log.info("stop requested; finishing replies (up to %.0f s). Press Ctrl-C again "
                     "to quit at once.", tg.shutdown_timeout)
        else:
            log.info("stop requested while connecting to Telegram; giving up")

    with stop_signals(stopping, on_signal):
        return await _run_accounts(app, names, stopping, tg)


async def _run_accounts(app: TelegramApp, names: list[str], stopping: asyncio.Event,
                        tg: TelegramConfig) -> int:
    store = app.engine.store
    leases = {name: await store.hold_account(name) for name in names}
    for lease in leases.values():  # a silent loss is noticed within it (before a standby acts)
        lease.timeout = app.config.data.store.lease_timeout
    running = _Running()
    outcome = 1
    try:
        outcome = await _serve_accounts(app, names, leases, stopping, running)
    finally:
        await _shut_down(app, leases, running, tg)
    lost = len(app.lost) + len(app.lost_in_memory())  # each logged by chat and message id
    if lost:
        log.error("stopped with %d message(s) not answered (named above)", lost)
        return outcome or 1
    return outcome


class _Running:
    """What serving started, for the shut-down to stop."""

    def __init__(self) -> None:
        self.server: OpsServer | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.reload = contextlib.ExitStack()


async def _serve_accounts(app: TelegramApp, names: list[str], leases: dict[str, Any],
                          stopping: asyncio.Event, running: _Running) -> int:
    await app.start()  # the store and the backends; accounts join as they are held
    running.reload.enter_context(reloading(app.engine, app.engine.pm))  # SIGHUP
    running.server = server = await start_ops_server(app.config, app.engine)
    if server is not None:
        for name in names:
            server.add_check(f"account {name}", app.accounts[name].ready)
    tasks = running.tasks
    for name in names:
        lease = leases[name]
        if await lease.acquire(wait=False):
            problem = await _connect(app, name, stopping)
            if problem is not None:
                return problem
            tasks.append(asyncio.create_task(
                keep_account(app, name, lease, stopping, partial(_connect, app, name, stopping)),
                name=f"hold-{name}"))
        else:
            holder = await lease.holder()
            where = (f"{holder.hostname} pid {holder.pid} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.since))}"
                     if holder else "another process")
            log.info("account %s is run by %s; standing by to take it over", name, where)
            tasks.append(asyncio.create_task(_standby(app, name, lease, stopping),
                                             name=f"standby-{name}"))
    for name in names:
        tasks.append(asyncio.create_task(_revoked(app, name), name=f"revoked-{name}"))
    outcome = 0
    waiting = asyncio.create_task(stopping.wait())
    done = await _until_not_revoked(app, names, [waiting, *tasks])
    if not done:
        log.error("no account is left to run (Telegram refuses each); stopping with exit "
                  "status %d (a supervisor should not restart it)", REVOKED_EXIT)
        outcome = REVOKED_EXIT
    elif waiting not in done:
        for task in done:
            if task.exception() is not None:
                log.error("%s failed: %s", task.get_name(), task.exception())
                outcome = 1
            elif task.result() not in (None, 0):
                outcome = task.result()
    waiting.cancel()
    return outcome


async def _revoked(app: TelegramApp, name: str) -> None:
    """Ends when Telegram refused the account while it ran (logged where it was seen); it
    takes no more updates (its lease is kept: a standby does not take it over meanwhile)."""
    account = app.accounts[name]
    await account.revoked_event.wait()
    await account.quiesce()


async def _until_not_revoked(app: TelegramApp, names: list[str],
                             tasks: list[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Wait for the first of ``tasks`` to end, going on while what ends is an account
    Telegram refused (with its other tasks) and others are left; empty when none is left."""
    left, pending = set(names), set(tasks)
    while True:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        revoked = {t for t in done if t.get_name().startswith("revoked-")}
        if done - revoked:
            return done - revoked
        for task in revoked:
            name = task.get_name().removeprefix("revoked-")
            left.discard(name)
            for other in [t for t in pending if t.get_name() in (f"lost-{name}",
                                                                  f"standby-{name}")]:
                other.cancel()
                pending.discard(other)
        if not left:
            return set()


async def _shut_down(app: TelegramApp, leases: dict[str, Any], running: _Running,
                     tg: TelegramConfig) -> None:
    running.reload.close()  # no reload while stopping
    sighup_ignored()  # (also when the start never got as far as the reloader)
    for task in running.tasks:
        task.cancel()
    await asyncio.gather(*running.tasks, return_exceptions=True)
    try:
        # a backstop past the stop's own limits, which give up what is in hand and say so
        async with asyncio.timeout(app.stop_limit(tg.shutdown_timeout) + _ABANDON_TIMEOUT):
            await app.stop(tg.shutdown_timeout)
    except TimeoutError:
        log.warning("stopping took longer than %.0f s; quitting", tg.shutdown_timeout)
        app.give_up()  # what is still in an intake: logged by chat and message id
    with contextlib.suppress(Exception):  # TimeoutError: a hung store; the lock dies with us
        async with asyncio.timeout(_ABANDON_TIMEOUT):
            for lease in leases.values():
                with contextlib.suppress(Exception):
                    await lease.release()
    if running.server is not None:  # last: replies being finished hand out its media links
        await running.server.stop()
    log.info("stopped")


async def _standby(app: TelegramApp, name: str, lease: Any, stopping: asyncio.Event) -> int:
    await lease.acquire(wait=True)
    log.info("account %s: taking over", name)
    problem = await _connect(app, name, stopping)
    if problem is not None:
        return problem
    return await keep_account(app, name, lease, stopping, partial(_connect, app, name, stopping))


async def _connect(app: TelegramApp, name: str, stopping: asyncio.Event) -> int | None:
    """Connect one account and start answering for it; None when running, else the exit
    status (1: Telegram refused or cannot be reached; 0: a stop came first)."""
    account = app.accounts[name]
    tg, client = account.tg, account.client
    reach = reach_of(client)
    prefix = f"{name}: " if len(app.accounts) > 1 else ""
    log.info("%sconnecting to Telegram (%s, session in the store)", prefix, session_mode(tg))
    storage = client.storage
    for attempt in (1, 2):
        try:
            if not await start_bounded(app.connect_account(name), reach, stopping):
                log.info("stopped before tgmux was running on Telegram")
                return 0
            break
        except RPCError as exc:
            code = str(exc.ID or exc.NAME)
            if (attempt == 1 and tg.bot_token and code in _STALE_SESSION
                    and isinstance(storage, (SessionFileStorage, StoreSession))):
                # A bot's session is only an authorization made with its token: make
                # another one (Pyrogram does, with the token, when the file has none).
                storage.forget_authorization(f"Telegram says {code}")
                continue
            log.error("%sTelegram refused to start: %s", prefix, _refusal(code, exc, tg))
            # revoked, banned: starting again cannot help (no restart loop, no standby loop)
            return REVOKED_EXIT if code in _ACCOUNT_REFUSALS else 1
        except TelegramUnreachable as exc:
            log.error("%s%s", prefix, exc)
            return 1
        except (OSError, TimeoutError) as exc:  # Telegram answered, then did not
            log.error("%sTelegram stopped answering while tgmux started (%s): %s", prefix,
                      exc or type(exc).__name__, _CHECK_NETWORK)
            return 1
    try:  # the account's messages from before, then the new ones: the store's part
        await app.serve_account(name)
    except Exception as exc:
        log.error("%scannot answer: the store failed (%s): %s", prefix, type(exc).__name__,
                  exc)
        return 1
    me = client.me
    who = f"@{me.username}" if me and me.username else f"id {me.id if me else '?'}"
    kind = "bot" if me and me.is_bot else "user account"
    log.info("%stgmux is running on Telegram as %s (%s); Ctrl-C stops", prefix, who, kind)
    return None


async def login(api_id: int, api_hash: str, *, phone: str | None = None,
                proxy: str | None = None) -> str:
    """``tgmux login``: log a user account in interactively (phone, code, 2FA password, as
    Pyrogram asks for them) and return its session string. Keeps nothing on disk. ``proxy``:
    as ``telegram.proxy``."""
    reach = Reach(parse_proxy(proxy, TELEGRAM_SCHEMES).shown if proxy else None, "--proxy")
    client = Client("tgmux-login", api_id=api_id, api_hash=api_hash, in_memory=True,
                    phone_number=phone, no_updates=True, connection_factory=reach.connection,
                    proxy=telegram_proxy(proxy))
    with _quiet(_CONNECTION_LOGGERS):  # each attempt's errors; tgmux says it once
        try:
            await start_bounded(_start_client(client), reach)
        except RPCError as exc:  # api_id/api_hash refused...: one line, exit 1 (as `run`)
            code = str(exc.ID or exc.NAME)
            raise LoginRefused(f"Telegram refused the login: "
                               f"{_AUTH_PROBLEMS.get(code, str(exc))}") from None
    try:
        return await client.export_session_string()
    finally:
        await client.stop()


#: Pyrogram's loggers that log every connection attempt's failure (as ERROR and WARNING)
_CONNECTION_LOGGERS = ("pyrogram.connection", "pyrogram.session")


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


async def _start_client(client: Client) -> None:
    """``client.start()``, letting go of the connection when it is cancelled (Pyrogram
    disconnects on errors only)."""
    try:
        await client.start()
    except BaseException:
        await abandon(client)
        raise

