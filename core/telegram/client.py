"""Building the Pyrogram (kurigram) ``Client`` for ``tgmux run``, and its session storage.

``tgmux run`` keeps each account's session in tgmux's store
(:class:`~tgmux.telegram.store_session.StoreSession`: a standby on another machine needs nothing
but the database); a session file an earlier tgmux left in ``<data_dir>/<session_name>.session``
is taken over once. :class:`SessionFileStorage` is that file (still used by the test kit): for a
bot token, a session string or an interactively authorized user account alike; a session string
seeds it; it is reset when the configured bot token or session string belongs to another account.

A bot's authorization belongs to the token it was made with: the session remembers a hash of
that token, and when the configured token changes (revoked in @BotFather, a new one issued) the
old authorization is dropped — peers and update state stay — and Pyrogram authorizes again with
the new token. (A session string carries its own auth key: a new string replaces the key.)
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import logging
import os
import socket
import sqlite3
from pathlib import Path
from typing import Any

from pyrogram import Client, enums
from pyrogram.connection import Connection
from pyrogram.connection.proxy import HTTPProxy, SOCKS4Proxy, SOCKS5Proxy
from pyrogram.storage import SQLiteStorage
from python_socks import ProxyConnectionError, ProxyError

from tgmux.config import Config, TelegramConfig
from tgmux.proxy import TELEGRAM_SCHEMES, parse_proxy
from tgmux.store import Store
from tgmux.telegram.store_session import StoreSession, token_digest

log = logging.getLogger("tgmux.telegram")

#: Client options every tgmux client uses (run, simulate, the test kit):
#: - one dispatcher worker: handlers see a chat's updates in arrival order (the handler only
#:   queues the message; replies run in the engine, concurrently across chats);
#: - no extra requests while parsing an update (replied-to messages, topics, stories,
#:   sticker sets): tgmux needs none of them and each would count against flood limits;
#: - plain text: what a backend wrote is what the user sees (no Markdown/HTML surprises).
CLIENT_OPTIONS: dict[str, Any] = {
    "workers": 1,
    "fetch_replies": False,
    "fetch_topics": False,
    "fetch_stories": False,
    "fetch_stickers": False,
    "parse_mode": enums.ParseMode.DISABLED,
}


class SessionFileStorage(SQLiteStorage):
    """Pyrogram's SQLite session file, private to the owner, optionally seeded from a session
    string, reset when it belongs to another account than the configured one, and authorized
    again when the bot token it was authorized with changed (see the module docstring)."""

    def __init__(self, name: str, workdir: Path, *, session_string: str | None = None,
                 expected_user_id: int | None = None, bot_token: str | None = None) -> None:
        super().__init__(name, workdir=workdir)
        self.workdir = Path(workdir)
        self.seed = session_string
        self.expected_user_id = expected_user_id
        self.bot_token = bot_token
        self._forget_next_open: str | None = None

    def forget_authorization(self, why: str) -> None:
        """At the next :meth:`open`, drop the authorization (auth key, account id) and keep
        peers and update state: Pyrogram then authorizes again (bots: with the token)."""
        self._forget_next_open = why

    async def _forget(self, why: str) -> None:
        log.warning("session file %s: %s; authorizing again (peers and update state are "
                    "kept)", self.path, why)
        await self.auth_key(None)
        await self.user_id(None)
        await self.date(0)

    async def _remembered_token(self) -> str | None:
        self.conn.execute("CREATE TABLE IF NOT EXISTS tgmux_session "
                          "(key TEXT PRIMARY KEY, value TEXT)")
        row = self.conn.execute("SELECT value FROM tgmux_session WHERE key = 'bot_token'"
                                ).fetchone()
        return None if row is None else str(row[0])

    async def _remember_token(self, digest: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO tgmux_session (key, value) "
                              "VALUES ('bot_token', ?)", (digest,))

    @property
    def path(self) -> Path:
        return self.workdir / f"{self.name}{self.FILE_EXTENSION}"

    async def _open_private(self) -> None:
        # A folder tgmux makes is private; one that exists is the user's (it may be /tmp, or a
        # shared mount): its mode is left alone, the session file itself is 0600.
        if not self.workdir.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            try:
                os.chmod(self.workdir, 0o700)  # mkdir's mode is masked by the umask
            except OSError:
                pass
        old = os.umask(0o077)
        try:
            # SQLiteStorage.open never suspends for a file session (plain sqlite3 calls), so
            # the umask covers exactly the session file and its journal.
            await SQLiteStorage.open(self)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def open(self) -> None:
        await self._open_private()
        if self.seed:
            probe = SQLiteStorage("tgmux-probe", workdir=self.workdir,
                                  session_string=self.seed, in_memory=True)
            await probe.open()
            try:
                fields = {
                    "dc_id": await probe.dc_id(),
                    "api_id": await probe.api_id(),
                    "test_mode": await probe.test_mode(),
                    "auth_key": await probe.auth_key(),
                    "user_id": await probe.user_id(),
                    "is_bot": await probe.is_bot(),
                    "server_address": await probe.server_address(),
                    "port": await probe.port(),
                }
            finally:
                await probe.close()
            if await self.auth_key() != fields["auth_key"]:
                if await self.user_id() not in (None, fields["user_id"]):
                    await self._reset("the session string belongs to another account")
                for key, value in fields.items():
                    if value is not None:
                        await getattr(self, key)(value)
                await self.date(0)
                self.conn.commit()
        elif self.expected_user_id is not None:
            stored = await self.user_id()
            if stored is not None and stored != self.expected_user_id:
                await self._reset("the bot token belongs to another bot")
        if self._forget_next_open is not None:
            why, self._forget_next_open = self._forget_next_open, None
            await self._forget(why)
        if self.bot_token:
            digest = token_digest(self.bot_token)
            remembered = await self._remembered_token()
            # a file from before tgmux remembered tokens is taken to match (if it does not,
            # Telegram says AUTH_KEY_UNREGISTERED and `tgmux run` authorizes again)
            if remembered not in (None, digest) and await self.auth_key() is not None:
                await self._forget("the bot token changed")
            await self._remember_token(digest)

    async def _reset(self, why: str) -> None:
        log.warning("session file %s: %s; starting a fresh session", self.path, why)
        self.conn.close()
        self.path.unlink(missing_ok=True)
        await self._open_private()


_ERRNO_REASONS = {
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "connection timed out",
    errno.EACCES: "connection not permitted",
    errno.EPERM: "connection not permitted",
}


def connect_problem(exc: BaseException) -> str:
    """A connection error in a few words (``network unreachable``, ``connection refused``...)."""
    if isinstance(exc, socket.gaierror):
        return f"name lookup failed: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, OSError) and exc.errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class Reach:
    """Whether Telegram was reached, watched through the client's connections
    (:meth:`connection` is the client's ``connection_factory``).

    Pyrogram retries connections on its own, forever for a session that has an authorization
    (about three minutes before a first request gives up): :attr:`hopeless` is set instead as
    soon as starting cannot succeed — a round of connection attempts failed, or the server
    closed connections before it answered anything — and :attr:`problem` says why. Once
    something answered (:attr:`answered`), Pyrogram's own retries apply again (a running
    client reconnects by itself after the network comes back)."""

    #: connections closed by the server before any answer that make it hopeless
    CLOSED_LIMIT = 2

    def __init__(self, proxy: str | None = None, proxy_key: str = "telegram.proxy") -> None:
        self.answered = False
        self.problem: str | None = None
        self.hopeless = asyncio.Event()
        self._closed = 0
        #: ``telegram.proxy`` as messages show it (no password), when one is set
        self.proxy = proxy
        self.proxy_key = proxy_key  # where the operator set it (for "check ...")
        #: the proxy itself could not be reached (rather than Telegram through it)
        self.proxy_down = False

    def connection(self, **kwargs: Any) -> Connection:
        return WatchedConnection(self, **kwargs)

    def _failed(self, exc: BaseException) -> None:
        self.proxy_down = isinstance(exc, ProxyConnectionError)
        self.problem = (f"the proxy refused: {exc}" if isinstance(exc, ProxyError)
                        else connect_problem(exc))

    def _gave_up(self) -> None:
        if not self.answered:
            self.hopeless.set()

    def _closed_early(self, exc: BaseException | None = None) -> None:
        if self.answered:
            return
        if exc is not None and not isinstance(exc.__cause__ or exc, ConnectionError):
            self.problem = connect_problem(exc)  # (Pyrogram wraps a send's error in OSError)
            return
        self.problem = "the connection was closed before Telegram answered"
        self._closed += 1
        if self._closed >= self.CLOSED_LIMIT:
            self.hopeless.set()


class WatchedConnection(Connection):
    """Pyrogram's connection (same attempts, same logs), telling :class:`Reach` what
    happened, and saying why in the ConnectionError it raises (Pyrogram's has no message)."""

    def __init__(self, reach: Reach, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reach = reach
        make_protocol = self.protocol_factory

        def watched_protocol(**options: Any) -> Any:
            protocol = make_protocol(**options)
            connect = protocol.connect

            async def watched_connect(address: tuple[str, int]) -> None:
                try:
                    await connect(address)
                except OSError as exc:
                    reach._failed(exc)
                    raise
                except ProxyError as exc:  # the proxy answered "no": a failed connect too
                    reach._failed(exc)
                    raise OSError(str(exc)) from exc

            protocol.connect = watched_connect
            return protocol

        self.protocol_factory = watched_protocol  # type: ignore[assignment]

    async def connect(self) -> None:
        try:
            await super().connect()
        except ConnectionError:
            self.reach._gave_up()
            raise ConnectionError(self.reach.problem or "cannot connect") from None

    async def send(self, data: bytes) -> None:
        try:
            await super().send(data)
        except OSError as exc:  # reset, broken pipe: the server closed the connection
            self.reach._closed_early(exc)
            raise

    async def recv(self) -> bytes | None:
        data = await super().recv()
        if data is None:
            self.reach._closed_early()
        else:
            self.reach.answered = True
        return data


async def abandon(client: Client) -> None:
    """Let go of a client that did not finish starting: stop its workers, its session and its
    storage, whatever was reached (best effort)."""
    with contextlib.suppress(Exception):
        if client.is_initialized:
            await client.terminate()
    with contextlib.suppress(Exception):
        if client.is_connected:
            await client.disconnect()
            return
    with contextlib.suppress(Exception):
        if client.session is not None:
            await client.session.stop()
    with contextlib.suppress(Exception):
        await client.storage.close()


def telegram_proxy(value: str | None) -> Any:
    """What kurigram's ``Client(proxy=...)`` takes for ``telegram.proxy`` (None: direct): its
    own proxy object, so that a password holding ``@ :`` survives (its URL parser does not
    decode them), with a ``repr`` that hides the password (kurigram logs the proxy at INFO)."""
    if value is None:
        return None
    proxy = parse_proxy(value, TELEGRAM_SCHEMES)
    kind = {"socks5": SOCKS5Proxy, "socks4": SOCKS4Proxy, "http": HTTPProxy}[proxy.scheme]
    quiet = type(kind.__name__, (kind,), {"__repr__": lambda self: proxy.shown})
    return quiet(hostname=proxy.host, port=proxy.port, username=proxy.username,
                 password=proxy.password)


def configured_kind(tg: TelegramConfig) -> tuple[str, str]:
    """("bot" or "user account", the key that says so) for a checked ``telegram:`` section."""
    if tg.bot_token:
        return "bot", "bot_token"
    if tg.session_string:
        # every layout Pyrogram reads ends with is_bot
        data = base64.urlsafe_b64decode(tg.session_string + "=" * (-len(tg.session_string) % 4))
        return ("bot" if data[-1] else "user account"), "session_string"
    return "user account", "user_account: true"


def session_file_kind(path: Path) -> str | None:
    """Whose login the session file at ``path`` holds: "bot", "user account", or None (no
    file, no login in it, or not readable: Pyrogram reports a broken file itself)."""
    if not path.exists():
        return None
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as conn:
            row = conn.execute("SELECT is_bot, auth_key FROM sessions").fetchone()
    except sqlite3.Error:
        return None
    if row is None or row[0] is None or row[1] is None:
        return None
    return "bot" if row[0] else "user account"


def session_mode(tg: TelegramConfig) -> str:
    if tg.bot_token:
        return "bot"
    if tg.session_string:
        return "user account (session string)"
    return "user account (logged in with tgmux login or at the terminal)"


def reach_of(client: Client) -> Reach:
    """What watches ``client``'s connections (:class:`Reach`); one that sees nothing for a
    client :func:`build_client` did not make (e.g. a client of the fake Telegram)."""
    reach = getattr(client, "_tgmux_reach", None)
    return reach if isinstance(reach, Reach) else Reach()


def build_client(config: Config, account: str | None = None, *, store: Store | None = None,
                 **overrides: Any) -> Client:
    """The Client of an account (None: the first) for ``tgmux run`` (credentials already
    checked by ``require_telegram``); its connections are watched (:func:`reach_of`).
    ``store``: the session lives there (:class:`StoreSession`; a session file under
    ``data_dir`` is taken over once); without one, in the session file."""
    name = config.account(account).name
    tg = config.account(account).telegram
    workdir = Path(tg.data_dir).expanduser()
    expected = None
    if tg.bot_token and ":" in tg.bot_token and tg.bot_token.split(":", 1)[0].isdigit():
        expected = int(tg.bot_token.split(":", 1)[0])
    reach = Reach(parse_proxy(tg.proxy, TELEGRAM_SCHEMES).shown if tg.proxy else None)
    storage: SQLiteStorage
    if store is not None:
        storage = StoreSession(store, name,
                               session_file=workdir / f"{tg.session_name}.session",
                               session_string=tg.session_string, expected_user_id=expected,
                               bot_token=tg.bot_token)
    else:
        storage = SessionFileStorage(tg.session_name, workdir, session_string=tg.session_string,
                                     expected_user_id=expected, bot_token=tg.bot_token)
    options: dict[str, Any] = {
        **CLIENT_OPTIONS,
        "api_id": tg.api_id,
        "api_hash": tg.api_hash,
        "bot_token": tg.bot_token,
        "workdir": workdir,
        "storage_engine": storage,
        "skip_updates": tg.skip_updates,
        "connection_factory": reach.connection,
        "proxy": telegram_proxy(tg.proxy),
        **overrides,
    }
    client = Client(tg.session_name, **options)
    client._tgmux_reach = reach  # type: ignore[attr-defined]
    return client
