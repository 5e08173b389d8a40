"""``tgmux.testing``: test tgmux configs and plugins through a fake Telegram (a pytest plugin).

Installed with tgmux (entry point ``pytest11``); the fixtures need ``pytest-asyncio``::

    async def test_my_plugin(tgmux_bot):
        bot = await tgmux_bot(CONFIG_YAML, plugins=[my_plugin])
        reply = await bot.send("hello", user_id=42)
        assert reply.text == "echo: hello"
        reply = await bot.send("@tgmux_bot hi", user_id=42, chat_id=-1001234567890,
                               thread_id=5)
        assert reply.actions[0]["message_thread_id"] == 5

Each bot runs the real engine and the real Pyrogram client; only Telegram's network is
replaced (:class:`tgmux.telegram.fake.FakeTelegram`). What tgmux sends is recorded as
action dicts in the ``tgmux simulate`` output format. While a bot fixture is in use, sockets
may only reach loopback addresses (connections, datagrams and name lookups).

See docs/testing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tgmux.config import Config
    from tgmux.hooks import PluginManager
    from tgmux.telegram.app import TelegramApp
    from tgmux.telegram.fake import FakeTelegram

__all__ = ["Reply", "TgmuxBot", "guard_sockets", "tgmux_bot", "visible_messages"]

MESSAGE_ACTIONS = ("send_message", "send_photo", "send_voice", "send_audio", "send_document")


# -- no traffic beyond loopback --------------------------------------------------------------------


def _loopback(host: object) -> bool:
    if host is None or host in ("", "localhost"):
        return True
    try:
        text = host.decode() if isinstance(host, bytes) else str(host)
        return ipaddress.ip_address(text.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def guard_sockets(*, reason: str = "tgmux.testing: no network in tests") -> Iterator[None]:
    """Make every way out beyond loopback raise OSError: connections, name lookups
    (``getaddrinfo``, ``gethostbyname``, ``gethostbyname_ex``, ``gethostbyaddr``; of names and
    of addresses alike) and datagrams (``sendto``, ``sendmsg`` with an address). ``reason``
    starts the OSError's message."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    real_sendmsg = socket.socket.sendmsg
    real_getaddrinfo = socket.getaddrinfo
    real_lookups = {name: getattr(socket, name)
                    for name in ("gethostbyname", "gethostbyname_ex", "gethostbyaddr")}

    def check(sock: socket.socket, address: Any, what: str = "connect to") -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not (
                isinstance(address, tuple) and _loopback(address[0])):
            raise OSError(f"{reason} ({what} {address!r})")

    def connect(self: socket.socket, address: Any) -> Any:
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        check(self, address)
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> Any:
        check(self, args[-1] if args else None, "send to")  # (data, [flags,] address)
        return real_sendto(self, data, *args)

    def sendmsg(self: socket.socket, buffers: Any, *args: Any) -> Any:
        if len(args) >= 3 and args[2] is not None:  # (buffers, ancdata, flags, address)
            check(self, args[2], "send to")
        return real_sendmsg(self, buffers, *args)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(host):
            raise OSError(f"{reason} (lookup of {host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    def lookup(name: str) -> Callable[..., Any]:
        real = real_lookups[name]

        def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not _loopback(host):
                raise OSError(f"{reason} ({name} {host!r})")
            return real(host, *args, **kwargs)

        return guarded

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]
    socket.socket.sendmsg = sendmsg  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    for name in real_lookups:
        setattr(socket, name, lookup(name))
    try:
        yield
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]
        socket.socket.sendto = real_sendto  # type: ignore[method-assign]
        socket.socket.sendmsg = real_sendmsg  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo
        for name, real in real_lookups.items():
            setattr(socket, name, real)


# -- what tgmux sent -------------------------------------------------------------------------------


def visible_messages(actions: list[dict[str, Any]]) -> dict[int, str]:
    """Message id → text (or caption) as the chat shows it after edits and deletions, in the
    order the messages were sent. Only meaningful for the actions of one chat."""
    shown: dict[int, str] = {}
    for action in actions:
        kind = action["action"]
        if kind in MESSAGE_ACTIONS:
            shown[action["message_id"]] = action.get("text", "")
        elif kind == "edit_message" and action["message_id"] in shown:
            shown[action["message_id"]] = action["text"]
        elif kind == "delete_message":
            shown.pop(action["message_id"], None)
    return shown


@dataclass
class Reply:
    """What tgmux sent in answer to one message."""

    chat_id: int
    message_id: int
    actions: list[dict[str, Any]] = field(default_factory=list)
    ignored: bool = False  # tgmux did not take the message at all (e.g. /cmd@otherbot)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The send_* actions (messages that appeared in the chat)."""
        return [a for a in self.actions if a["action"] in MESSAGE_ACTIONS]

    @property
    def texts(self) -> list[str]:
        """Texts (and captions) of the messages as the chat finally shows them."""
        return [t for t in visible_messages(self.actions).values() if t]

    @property
    def text(self) -> str:
        """All of :attr:`texts` joined by a blank line ("" when nothing was said)."""
        return "\n\n".join(self.texts)

    def of(self, action: str) -> list[dict[str, Any]]:
        return [a for a in self.actions if a["action"] == action]

    def __len__(self) -> int:
        return len(self.actions)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.actions)


@dataclass
class Sent:
    """A message sent with :meth:`TgmuxBot.send_nowait`; ``await sent.reply()`` for its reply."""

    bot: TgmuxBot
    chat_id: int
    message_id: int
    since: int = 0  # index of the first action that can belong to the reply

    async def reply(self, timeout: float = 10.0) -> Reply:
        return await self.bot.reply_to(self.chat_id, self.message_id, timeout=timeout,
                                       since=self.since)


# -- the bot ---------------------------------------------------------------------------------------


class TgmuxBot:
    """tgmux (engine, real Pyrogram client, Telegram frontend) on a fake Telegram.

    ``config`` is a full tgmux config (YAML text, ``${VAR}`` from ``env`` or the environment);
    ``telegram:`` credentials are not needed. ``store`` overrides the config's store (default
    ``memory://``; give ``sqlite:///PATH`` to keep state across :meth:`restart`). ``plugins``
    are extra plugin objects (modules or instances with hook implementations).
    ``edit_interval``/``typing_interval`` override the config's timing (tests may go below the
    config's 1 s minimum). ``strict_flood`` (default on): the fake Telegram answers
    ``FLOOD_WAIT_X`` when tgmux goes over Telegram's flood limits (raised to the config's
    ``telegram.flood`` where those are higher). ``latency``/``seed``: each push and answer
    of the fake Telegram is delayed by a random 0..``latency`` seconds (seeded); updates come
    in Telegram's own forms (compact ones included). The Pyrogram session is a real session file
    in a temporary directory, so a restart catches up on messages sent while the bot was
    stopped.
    """

    def __init__(self, config: str, *, plugins: list[Any] | tuple[Any, ...] = (),
                 store: str | None = None, env: dict[str, str] | None = None,
                 bot_username: str = "tgmux_bot", is_bot: bool = True,
                 edit_interval: float | None = None, typing_interval: float | None = None,
                 strict_flood: bool = True, latency: float = 0.0,
                 seed: int | None = None) -> None:
        from tgmux.bootstrap import load_config_text
        from tgmux.hooks import build_plugin_manager
        from tgmux.telegram.fake import FakeTelegram, FloodModel

        pm = build_plugin_manager()
        for i, plugin in enumerate(plugins):
            pm.register_from(plugin, getattr(plugin, "__name__", f"test-plugin-{i}"), "test")
        self.pm: PluginManager = pm
        self.config: Config = load_config_text(config, source="<test config>", env=env,
                                               plugin_manager=pm)
        self.store_url = store or "memory://"
        # Telegram's flood limits, raised where the config raises telegram.flood (a test that
        # does says Telegram allows that much): a FLOOD_WAIT here is tgmux sending too fast.
        flood = (FloodModel.at_least(self.config.data.telegram.flood) if strict_flood
                 else None)
        self.telegram: FakeTelegram = FakeTelegram(bot_username=bot_username, is_bot=is_bot,
                                                   flood=flood, latency=latency, seed=seed)
        self.frontend_options: dict[str, Any] = {}
        if edit_interval is not None:
            self.frontend_options["edit_interval"] = edit_interval
        if typing_interval is not None:
            self.frontend_options["typing_interval"] = typing_interval
        self.app: TelegramApp | None = None
        self._session_dir = Path(tempfile.mkdtemp(prefix="tgmux-test-session-"))
        self._waiting: dict[tuple[int, int], asyncio.Future[bool]] = {}

    # lifecycle

    @property
    def running(self) -> bool:
        return self.app is not None

    @property
    def engine(self) -> Any:
        assert self.app is not None, "the bot is not running"
        return self.app.engine

    @property
    def client(self) -> Any:
        assert self.app is not None, "the bot is not running"
        return self.app.client

    async def start(self) -> TgmuxBot:
        from tgmux.store import open_store
        from tgmux.telegram.app import TelegramApp
        from tgmux.telegram.client import SessionFileStorage
        from tgmux.telegram.fake import offline_client

        if self.app is not None:
            return self
        storage = SessionFileStorage("tgmux-test", self._session_dir)
        client = offline_client(self.telegram, storage=storage,
                                skip_updates=self.config.data.telegram.skip_updates)
        app = TelegramApp(self.config, self.pm, client, store=open_store(self.store_url),
                          **self.frontend_options)
        self.telegram.file_replies(app.frontend)  # for reply_to(): which action answers what
        app.seen_listeners.append(self._seen)
        app.intake.listeners.append(self._submitted)
        await app.start()
        self.app = app
        if app.commands_task is not None:
            # The menu is published in the background; a test sees Telegram's first answer
            # (published, refused, or "wait N s", which is then waited out in the background).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await app.commands_attempted.wait()
        return self

    async def stop(self, timeout: float | None = None) -> None:
        """Stop as ``tgmux run`` does on SIGTERM (``timeout``: bounded drain; None: answer
        everything taken first)."""
        app, self.app = self.app, None
        if app is not None:
            await app.stop(timeout)

    async def restart(self) -> None:
        """Stop (answering what was taken) and start again, as a new process would: same
        store (when it is a file), same Telegram session, fresh memory."""
        await self.stop()
        await self.start()

    async def close(self) -> None:
        try:
            await self.stop(5.0)
        finally:
            shutil.rmtree(self._session_dir, ignore_errors=True)

    async def __aenter__(self) -> TgmuxBot:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # what was sent

    @property
    def actions(self) -> list[dict[str, Any]]:
        """Every action tgmux sent so far, in order (``tgmux simulate`` output format)."""
        return self.telegram.actions

    def chat(self, chat_id: int) -> list[dict[str, Any]]:
        """The actions sent to one chat."""
        return [a for a in self.actions if a.get("chat_id") == chat_id]

    def texts(self, chat_id: int) -> list[str]:
        """The chat's messages from tgmux, as the chat finally shows them."""
        return [t for t in visible_messages(self.chat(chat_id)).values() if t]

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool] | None = None, *,
                       action: str | None = None, chat_id: int | None = None, start: int = 0,
                       timeout: float = 10.0) -> dict[str, Any]:
        """The first action from index ``start`` on matching all the given conditions."""
        def match(a: dict[str, Any]) -> bool:
            return ((action is None or a["action"] == action)
                    and (chat_id is None or a.get("chat_id") == chat_id)
                    and (predicate is None or predicate(a)))

        return await self.telegram.wait_for(match, start=start, timeout=timeout)

    # sending

    def _future(self, key: tuple[int, int]) -> asyncio.Future[bool]:
        future = self._waiting.get(key)
        if future is None:
            future = self._waiting[key] = asyncio.get_running_loop().create_future()
        return future

    def _resolve(self, key: tuple[int, int], ignored: bool) -> None:
        future = self._future(key)
        if not future.done():
            future.set_result(ignored)

    def _seen(self, message: Any, incoming: Any) -> None:
        if incoming is None and message.chat is not None:
            self._resolve((message.chat.id, message.id), True)

    def _submitted(self, incoming: Any, done: asyncio.Future[None]) -> None:
        key = (incoming.chat.chat_id, incoming.chat.message_id)
        done.add_done_callback(lambda _: self._resolve(key, False))

    async def send_nowait(self, text: str = "", *, user_id: int = 1, **fields: Any) -> Sent:
        """Deliver a message to tgmux (fields as in a ``tgmux simulate`` input line:
        chat_id, chat_type, username, first_name, message_id, thread_id, reply_to_bot,
        photo, voice, sticker, document, media_group_id) without waiting for the reply. While
        the bot is stopped the message waits on Telegram's side and is caught up at the next
        start."""
        fields = {k: v for k, v in fields.items() if v is not None}
        updates, chat_id, message_id = self.telegram.build_incoming(user_id=user_id, text=text,
                                                                    **fields)
        key = (chat_id, message_id)
        self._waiting[key] = asyncio.get_running_loop().create_future()  # a fresh wait
        since = len(self.telegram.actions)
        await self.telegram.push(updates)
        return Sent(self, chat_id, message_id, since)

    async def send(self, text: str = "", *, user_id: int = 1, timeout: float = 10.0,
                   **fields: Any) -> Reply:
        """Deliver a message and return tgmux's complete reply to it."""
        sent = await self.send_nowait(text, user_id=user_id, **fields)
        return await sent.reply(timeout=timeout)

    async def reply_to(self, chat_id: int, message_id: int, *, timeout: float = 10.0,
                       since: int = 0) -> Reply:
        """Wait until tgmux has answered (or ignored) a message; what it sent for it (from
        action index ``since`` on)."""
        key = (chat_id, message_id)
        ignored = await asyncio.wait_for(asyncio.shield(self._future(key)), timeout)
        fake = self.telegram
        actions = [a for a, origin in zip(fake.actions[since:], fake.action_origins[since:],
                                          strict=True) if origin == key]
        return Reply(chat_id, message_id, actions, ignored=ignored)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every message sent so far is answered (or ignored), and every reply
        the engine is working on (restarted ones too) is finished."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(asyncio.shield(f) for f in self._waiting.values()))
            if self.app is not None:
                await self.app.intake.flush()
                await self.engine.drain()


# -- fixtures --------------------------------------------------------------------------------------

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures say so when used
    pytest_asyncio = None


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def tgmux_bot() -> Any:
        """A factory: ``bot = await tgmux_bot(CONFIG_YAML, **options)`` starts a
        :class:`TgmuxBot`; every bot is stopped at the end of the test, and the test fails if
        tgmux made a request the fake Telegram does not know."""
        bots: list[TgmuxBot] = []

        async def make(config: str, **options: Any) -> TgmuxBot:
            bot = TgmuxBot(config, **options)
            bots.append(bot)
            await bot.start()
            return bot

        with guard_sockets():
            yield make
            for bot in reversed(bots):
                await bot.close()
        unknown = sorted({name for bot in bots for name in bot.telegram.unknown})
        if unknown:
            pytest.fail(f"tgmux made requests the fake Telegram does not know: {unknown}")

else:  # pragma: no cover

    @pytest.fixture
    def tgmux_bot() -> Any:
        pytest.skip("the tgmux_bot fixture needs pytest-asyncio (pip install pytest-asyncio)")
