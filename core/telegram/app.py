"""The Telegram side wired together: Pyrogram client, engine, frontend; start and stop.

Order of things:

- updates come through Pyrogram's dispatcher (one worker) to :meth:`TelegramApp._on_message`,
  which normalizes the message and puts it in its chat's intake queue *without awaiting
  anything*, so each chat's messages keep Telegram's order; replies run in the engine,
  concurrently across chats;
- the intake (one small task per busy chat) fetches media bytes when the chat's backend takes
  that kind, then calls ``engine.submit`` (one store insert), in order;
- on start, Pyrogram catches up on what arrived while tgmux was down (``skip_updates: false``
  and a persistent session) before the engine opens: caught-up messages wait in the intake;
- bots publish their command menu in the background: start-up and replies never wait for it
  (Telegram may ask to wait before ``setBotCommands``; that wait is for that method only);
- on stop: new updates are left on Telegram's side (the session's update state is not
  advanced, so the next start catches up on them), the dispatcher finishes what it holds, the
  intake hands everything to the engine, in-flight replies finish (bounded by
  ``telegram.shutdown_timeout``; unfinished ones stay pending in the store and are answered
  after the next start), the store closes, the client disconnects.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pyrogram import Client
from pyrogram.handlers import MessageHandler
from pyrogram.types import Message

from tgmux.config import Config
from tgmux.engine import Engine
from tgmux.hooks import PluginManager
from tgmux.store import Store, open_store
from tgmux.telegram.client import abandon
from tgmux.telegram.frontend import TelegramFrontend
from tgmux.telegram.normalize import normalize
from tgmux.telegram.sender import MAX_FLOOD_RETRIES, MAX_FLOOD_WAIT, FloodWaitRequired
from tgmux.types import IncomingMessage

__all__ = ["Intake", "TelegramApp"]

log = logging.getLogger("tgmux.telegram")

#: Largest media tgmux downloads for a backend (the Bot API's own download limit).
MAX_MEDIA_BYTES = 20 * 1024 * 1024
MEDIA_TIMEOUT = 60.0


@dataclasses.dataclass
class _Pending:
    message: IncomingMessage
    source: Message | None


SubmitListener = Callable[[IncomingMessage, "asyncio.Future[None]"], None]


class Intake:
    """Per-chat queues between Pyrogram's handler and ``engine.submit``."""

    def __init__(self, engine: Engine, client: Client) -> None:
        self.engine = engine
        self.client = client
        self.listeners: list[SubmitListener] = []
        self.download_media = True
        self._queues: dict[int, deque[_Pending]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._open = asyncio.Event()

    def put(self, message: IncomingMessage, source: Message | None = None) -> None:
        """Queue a message (synchronous: call order is submit order within a chat)."""
        chat_id = message.chat.chat_id
        self._queues.setdefault(chat_id, deque()).append(_Pending(message, source))
        task = self._tasks.get(chat_id)
        if task is None or task.done():
            self._tasks[chat_id] = asyncio.create_task(self._drain(chat_id),
                                                       name=f"tgmux-intake-{chat_id}")

    def open(self) -> None:
        """Start handing messages to the engine (after it started)."""
        self._open.set()

    @property
    def busy(self) -> bool:
        return any(not t.done() for t in self._tasks.values())

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued message was submitted. After ``timeout`` the rest is
        submitted without fetching media (a store insert each: nothing is lost)."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            self.download_media = False
            await asyncio.gather(*pending, return_exceptions=True)

    async def _drain(self, chat_id: int) -> None:
        queue = self._queues[chat_id]
        try:
            await self._open.wait()
            while queue:
                item = queue[0]
                try:
                    message = await self._with_media(item)
                    done = await self.engine.submit(message)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # engine stopped, store failing: logged, not retried
                    log.error("chat %s message %s not taken: %s", chat_id,
                              item.message.chat.message_id, exc)
                    queue.popleft()
                    continue
                queue.popleft()
                for listener in list(self.listeners):
                    listener(message, done)
        finally:
            if not queue:
                self._queues.pop(chat_id, None)
                self._tasks.pop(chat_id, None)

    async def _with_media(self, item: _Pending) -> IncomingMessage:
        message, source = item.message, item.source
        media = message.media
        if media is None or source is None or not self.download_media:
            return message
        if not await self._wanted(message):
            return message
        size = getattr(getattr(source, str(getattr(source.media, "name", "")).lower(), None),
                       "file_size", 0) or 0
        if size > MAX_MEDIA_BYTES:
            log.info("chat %s: %s of %d bytes is too large to pass on", message.chat.chat_id,
                     media.kind, size)
            return message
        try:
            async with asyncio.timeout(MEDIA_TIMEOUT):
                buffer = await self.client.download_media(source, in_memory=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("chat %s: could not download the %s: %s", message.chat.chat_id,
                        media.kind, exc)
            return message
        data = bytes(buffer.getbuffer()) if buffer is not None else None
        return dataclasses.replace(message, media=dataclasses.replace(media, data=data))

    async def _wanted(self, message: IncomingMessage) -> bool:
        """Whether the chat's backend takes this kind of media and will see the message."""
        assert message.media is not None
        try:
            backend = await self.engine.backend_for(message)
        except Exception:
            log.exception("chat %s: routing failed", message.chat.chat_id)
            return False
        return backend is not None and message.media.kind in backend.accepts_media


class TelegramApp:
    """A Pyrogram client, the engine and the Telegram frontend, started and stopped together.

    ``client`` may be a real one (``tgmux run``) or one attached to
    :class:`tgmux.telegram.fake.FakeTelegram` (``tgmux simulate``, ``tgmux.testing``).
    """

    def __init__(self, config: Config, plugin_manager: PluginManager, client: Client, *,
                 store: Store | None = None, **frontend_options: Any) -> None:
        self.config = config
        self.client = client
        self.frontend = TelegramFrontend(client, config.data.telegram, **frontend_options)
        self.engine = Engine(config, plugin_manager, store or open_store(config.data.store),
                             self.frontend)
        self.intake = Intake(self.engine, client)
        #: None until the first attempt to publish the command menu ended; then whether
        #: Telegram has it (False while a flood wait holds it back)
        self.commands_published: bool | None = None
        #: set when the first attempt ended (published, refused or held back)
        self.commands_attempted = asyncio.Event()
        self.commands_task: asyncio.Task[None] | None = None
        #: called for every message Pyrogram hands us, with what the engine will get
        #: (None: ignored, e.g. our own message or a /command@otherbot)
        self.seen_listeners: list[Callable[[Message, IncomingMessage | None], None]] = []
        self._taking_updates = False
        self._started = False
        handle_updates = client.handle_updates

        async def gated(updates: Any) -> None:
            if not self._taking_updates:
                return  # stopping: left for the next start's catch-up (state not advanced)
            await handle_updates(updates)

        client.handle_updates = gated  # type: ignore[method-assign]
        client.add_handler(MessageHandler(self._on_message))

    @property
    def running(self) -> bool:
        """Started (connected, engine open) and not stopped yet."""
        return self._started

    async def _on_message(self, client: Client, message: Message) -> None:
        me = client.me
        if me is None:
            return
        incoming = normalize(message, me, self.frontend.sent_ids)
        for listener in list(self.seen_listeners):
            listener(message, incoming)
        if incoming is None:
            return
        self.intake.put(incoming, message)

    async def start(self) -> None:
        self._taking_updates = True
        try:
            await self.client.start()
        except BaseException:  # cancelled (a stop while connecting) or failed
            self._taking_updates = False
            await abandon(self.client)
            raise
        try:
            # tgmux waits out every flood wait itself (and slows the chat, not one request)
            self.client.sleep_threshold = 0
            await self.engine.start()
        except BaseException:
            self._taking_updates = False
            await self.client.stop()
            raise
        self._started = True
        me = self.client.me
        if me is not None and me.is_bot:
            # created before the intake opens: with nothing in the way it is the first request
            self.commands_task = asyncio.create_task(self._publish_commands(),
                                                     name="tgmux-command-menu")
        self.intake.open()

    async def _publish_commands(self) -> None:
        """The command menu, best effort: a flood wait is waited out here (in the
        background), a wait over an hour or a sixth one gives up (Telegram keeps the menu it
        had); any other failure is logged and not retried."""
        try:
            specs = self.engine.command_specs()
            for attempt in range(MAX_FLOOD_RETRIES + 1):
                try:
                    self.commands_published = await self.frontend.publish_commands(specs)
                    return
                except FloodWaitRequired as exc:
                    self.commands_published = False
                    self.commands_attempted.set()
                    if exc.seconds > MAX_FLOOD_WAIT or attempt == MAX_FLOOD_RETRIES:
                        log.error("command menu not published: Telegram asks to wait %.0f s; "
                                  "it keeps the menu it had", exc.seconds)
                        return
                    log.warning("command menu: Telegram asks to wait %.0f s; it will be "
                                "published then (chats are answered meanwhile)", exc.seconds)
                    await asyncio.sleep(exc.seconds)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.commands_published = False
            log.exception("command menu not published")
        finally:
            self.commands_attempted.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking updates, answer what was taken (``timeout``: bounded; None: all of
        it), close the store, disconnect."""
        if not self._started:
            return
        self._started = False
        self._taking_updates = False
        started = time.monotonic()
        if self.commands_task is not None:
            self.commands_task.cancel()
            await asyncio.gather(self.commands_task, return_exceptions=True)
        client = self.client
        if client.is_initialized:
            await client.terminate(clear_handlers=False)  # the dispatcher empties its queue
        remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        await self.intake.flush(remaining)
        try:
            if timeout is None:
                await self.engine.drain()
                await self.engine.stop()
            else:
                remaining = max(0.0, timeout - (time.monotonic() - started))
                await self.engine.stop(timeout=remaining)
        finally:
            if client.is_connected:
                await client.disconnect()

    async def __aenter__(self) -> TelegramApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(self.config.data.telegram.shutdown_timeout)
