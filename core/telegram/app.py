"""The Telegram side wired together: Pyrogram client, engine, frontend; start and stop.

Order of things:

- updates come through Pyrogram's dispatcher (one worker) to :meth:`TelegramApp._on_message`,
  which normalizes the message and puts it in its chat's intake queue *without awaiting
  anything*, so each chat's messages keep Telegram's order; replies run in the engine,
  concurrently across chats;
- the intake (one small task per busy chat) calls ``engine.submit`` (one store insert), in
  order; media bytes are not fetched here but when a backend reads them
  (:mod:`tgmux.telegram.media`), so the intake never decides a route;
- tgmux sequences the update stream itself (:mod:`tgmux.telegram.updates`: gaps, compact and
  too-long updates, differences under their own flood handling; the position it applied is in
  ``account.updates.positions``); on start it catches up on what arrived while tgmux was down
  (``skip_updates: false``) in the background, after the account is up: caught-up messages
  wait in the intake; those older than ``telegram.catch_up_max_age`` are not answered, their
  user is told (:mod:`tgmux.telegram.stale`);
- bots publish their command menus (by scope, :mod:`tgmux.command_menus`) in the background:
  start-up and replies never wait for them (Telegram may ask to wait before
  ``setBotCommands``; that wait is for that method only); a chat's own menu follows when the
  engine sees it (:mod:`tgmux.telegram.menus`);
- on stop: new updates are left on Telegram's side (the session's update state is not
  advanced, so the next start catches up on them), the dispatcher finishes what it holds, the
  intake hands everything to the engine, in-flight replies finish (bounded by
  ``telegram.shutdown_timeout``; unfinished ones stay pending in the store and are answered
  after the next start), the store closes, the client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from pyrogram import Client
from pyrogram.handlers import MessageHandler
from pyrogram.types import Message

from tgmux.command_menus import Menu
from tgmux.config import Config, TelegramConfig
from tgmux.engine import Engine
from tgmux.errors import ConfigError
from tgmux.hooks import PluginManager
from tgmux.logs import log_fields
from tgmux.redact import redact_urls
from tgmux.store import Store, open_store
from tgmux.telegram.client import abandon
from tgmux.telegram.frontend import TelegramFrontend
from tgmux.telegram.media import TelegramMedia
from tgmux.telegram.menus import MenuQueue
from tgmux.telegram.normalize import is_reply, normalize, with_replied_to
from tgmux.telegram.revoked import revocation_advice
from tgmux.telegram.stale import StaleMessages
from tgmux.telegram.store_session import StorePositions
from tgmux.telegram.updates import UpdateStream
from tgmux.types import ChatIdentity, IncomingMessage, MediaRef, MediaUnavailable, ReplyPart

__all__ = ["AccountFrontends", "Intake", "TelegramAccount", "TelegramApp"]

log = logging.getLogger("tgmux.telegram")

#: Seconds a stop gives the last messages to reach the store after its timeout ran out.
FLUSH_GRACE = 5.0


SubmitListener = Callable[[IncomingMessage, "asyncio.Future[None]"], None]
#: what a queued message still needs before the engine has it (:meth:`Intake.put`)
Prepare = Callable[[IncomingMessage], Awaitable[IncomingMessage]]


class Intake:
    """Per-chat queues between Pyrogram's handler and ``engine.submit``."""

    def __init__(self, engine: Engine, account: str = "main",
                 positions: StorePositions | None = None) -> None:
        self.engine = engine
        self.account = account
        #: the update position written with each accept (None: no position)
        self.positions = positions
        self.listeners: list[SubmitListener] = []
        self._queues: dict[int, deque[tuple[int, IncomingMessage, Prepare | None]]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._open = asyncio.Event()
        self._flushing = False  # stopping: messages go to the engine without their prepare
        self._preparing: set[asyncio.Task[IncomingMessage]] = set()
        #: messages given up on a stop (each logged by chat and message id): not answered
        self.lost: list[IncomingMessage] = []

    def put(self, message: IncomingMessage, prepare: Prepare | None = None) -> None:
        """Queue a message (synchronous: call order is submit order within a chat).
        ``prepare``: what the message still needs before the engine has it (the message it
        replies to, from Telegram), done in the chat's turn: a slow answer holds that chat
        only, never the account's one update handler."""
        chat_id = message.chat.chat_id
        number = 0 if self.positions is None else self.positions.taken()
        self._queues.setdefault(chat_id, deque()).append((number, message, prepare))
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
        """Hand every queued message to the engine (opening the intake if it never was): a
        store insert each. After ``timeout`` they get :data:`FLUSH_GRACE` more seconds, then
        what is left is given up (logged): the store itself does not answer. From now on no
        message waits for what it still needs (:meth:`put`'s ``prepare``): it goes without."""
        self._open.set()
        self._flushing = True
        for preparing in self._preparing:  # (a fetch from a slow Telegram: not worth a message)
            preparing.cancel()
        tasks = [t for t in self._tasks.values() if not t.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(
            tasks, timeout=None if timeout is None else timeout + FLUSH_GRACE)
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.give_up()

    def give_up(self) -> list[IncomingMessage]:
        """Stop handing messages to the engine; each one still queued is lost: logged by chat
        and message id (Telegram will not send it again), kept in :attr:`lost`, returned."""
        for task in self._tasks.values():
            task.cancel()
        lost = [message for queue in self._queues.values() for _, message, _ in queue]
        for queue in self._queues.values():
            queue.clear()
        if lost and self.positions is not None:
            self.positions.freeze("messages could not be handed to the store before a stop")
        for message in lost:
            log.error("%s: chat %s message %s is not answered: it could not be handed to the "
                      "engine before the stop (the store did not answer in time), and "
                      "Telegram will not send it again", self.account, message.chat.chat_id,
                      message.chat.message_id)
        self.lost += lost
        return lost

    async def _prepared(self, message: IncomingMessage, prepare: Prepare) -> IncomingMessage:
        """``message`` prepared, or as it is when preparing failed: it is still answered (a
        failure here must not end the chat's queue for the rest of the run)."""
        task = asyncio.ensure_future(prepare(message))
        self._preparing.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the drain itself is cancelled
            return message  # the flush cancelled the preparing: as it is
        except Exception:
            log.exception("%s: chat %s message %s: preparing it failed; it goes on as it is",
                          self.account, message.chat.chat_id, message.chat.message_id)
            return message
        finally:
            self._preparing.discard(task)
            task.cancel()  # (the drain was cancelled: not left running)

    async def _drain(self, chat_id: int) -> None:
        queue = self._queues[chat_id]
        log_fields.set({"account": self.account, "chat_id": chat_id})
        try:
            await self._open.wait()
            while queue:
                number, message, prepare = queue[0]
                if prepare is not None and not self._flushing:
                    message = await self._prepared(message, prepare)
                    queue[0] = (number, message, None)  # once, even if the engine refuses it
                positions = self.positions
                if positions is not None:  # written with the accept, when it is due
                    message = replace(message, position=positions.carry(number))
                try:
                    done = await self.engine.submit(message)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # engine stopped, store failing: logged, not retried
                    log.error("%s: chat %s message %s not taken: %s", self.account, chat_id,
                              message.chat.message_id, exc)
                    queue.popleft()
                    if positions is not None:  # fetched again by the next start
                        positions.freeze(f"chat {chat_id} message {message.chat.message_id} "
                                         "was not taken")
                    continue
                queue.popleft()
                if positions is not None:
                    positions.settled(number)
                for listener in list(self.listeners):
                    listener(message, done)
        finally:
            if not queue:
                self._queues.pop(chat_id, None)
                self._tasks.pop(chat_id, None)


class AccountFrontends:
    """The engine's one frontend over several accounts: each reply goes out through the
    frontend of the account its chat is with, each media is fetched by its account's client."""

    def __init__(self, frontends: dict[str, TelegramFrontend],
                 media: dict[str, TelegramMedia] | None = None,
                 menus: dict[str, MenuQueue] | None = None) -> None:
        self.frontends = frontends
        self.media = media or {}
        self.menus = menus or {}
        self._first = next(iter(frontends.values()))

    async def deliver(self, chat: ChatIdentity, parts: AsyncIterator[ReplyPart], *,
                      reply_to_message_id: int | None) -> list[ReplyPart]:
        frontend = self.frontends.get(chat.account, self._first)
        return await frontend.deliver(chat, parts, reply_to_message_id=reply_to_message_id)

    def publish_menus(self, account: str, menus: list[Menu]) -> None:
        """The engine's command menus for an account (bots: sent in the background)."""
        queue = self.menus.get(account)
        if queue is not None:
            queue.put(menus)

    async def fetch_media(self, ref: MediaRef) -> bytes:
        """The engine's fetcher for media replayed from the inbox (a ``MediaFetcher``)."""
        media = self.media.get(ref.account)
        if media is None:  # the account left the config since
            raise MediaUnavailable(f"no account {ref.account!r} to fetch it")
        return await media.fetch(ref)


class TelegramAccount:
    """One Telegram account of a :class:`TelegramApp`: its client, frontend and intake."""

    def __init__(self, name: str, client: Client, tg: TelegramConfig, *,
                 new_telegram: bool = False, **frontend_options: Any) -> None:
        self.name = name
        self.new_telegram = new_telegram
        self.client = client
        self.tg = tg
        self.frontend = TelegramFrontend(client, tg, **frontend_options)
        #: fetches a message's media when a backend reads it
        self.media = TelegramMedia(client)
        #: the bot's command menus on their way (nothing for a user account)
        self.menus = MenuQueue(self.frontend, name,
                               is_bot=lambda: client.me is not None and bool(client.me.is_bot))
        self.intake: Intake  # set by attach()
        #: None until the first attempt to publish the command menu ended; then whether
        #: Telegram has it (False while a flood wait holds it back)
        self.commands_published: bool | None = None
        #: set when the first attempt ended (published, refused or held back)
        self.commands_attempted = asyncio.Event()
        self.commands_task: asyncio.Task[None] | None = None
        #: called for every message Pyrogram hands us, with what the engine will get before
        #: its chat's turn adds the message it replies to (None: ignored, e.g. our own
        #: message or a /command@otherbot)
        self.seen_listeners: list[Callable[[Message, IncomingMessage | None], None]] = []
        self.taking_updates = False
        self.running = False
        #: Telegram's error once it refused the account (revoked, banned): it stops
        self.revoked: str | None = None
        self.revoked_event = asyncio.Event()

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        #: the update position, in the store with the inbox
        self.positions = StorePositions(engine.store, self.name, self.client,
                                        new_telegram=self.new_telegram)
        self.intake = Intake(engine, self.name, self.positions)
        self.frontend.flood.on_wait = (
            lambda seconds: engine.metrics.flood_wait.labels(self.name).inc(seconds))
        metrics = engine.metrics
        self.updates = UpdateStream(
            self.client, account=self.name, positions=self.positions,
            on_revoked=self._on_revoked,
            on_skipped=lambda count: metrics.updates_skipped.labels(self.name).inc(count),
            on_flood_wait=lambda seconds: metrics.flood_wait.labels(self.name).inc(seconds))
        self.stale = StaleMessages(self.tg.catch_up_max_age,
                                   lambda *a, **k: self.frontend.deliver(*a, **k), self.name,
                                   lambda: metrics.stale_messages.labels(self.name).inc())

        async def gated(updates: Any) -> None:
            if not self.taking_updates:
                return  # stopping: left for the next start's catch-up (state not advanced)
            await self.updates.handle(updates)

        self.client.handle_updates = gated  # type: ignore[method-assign]
        self.client.add_handler(MessageHandler(self._on_message))

    def _on_revoked(self, code: str) -> None:
        """Telegram refuses the account: said once; ``/readyz`` fails; ``tgmux run`` stops it."""
        if self.revoked is not None:
            return
        self.revoked = code
        me = self.client.me
        is_bot = me.is_bot if me is not None else bool(self.tg.bot_token)
        log.error("%s: %s; this account stops", self.name, revocation_advice(code, is_bot=is_bot))
        self.revoked_event.set()

    def _answers_every_message(self, message: IncomingMessage) -> bool:
        """Whether the message's route answers a group message not addressed to the bot
        (``group_trigger: always``)."""
        decision = self.engine.router_for(self.name).decide(message)
        return decision is not None and decision.group_trigger == "always"

    async def _on_message(self, client: Client, message: Message) -> None:
        me = client.me
        if me is None:
            return
        incoming = normalize(message, me, self.frontend.sent_ids, self.name, self.media.fetch)
        if incoming is not None and incoming.addressed and message.date is not None and \
                self.stale.check(incoming, message.date.timestamp()):
            incoming = None  # too old (caught up after an outage): its user is told, once
        for listener in list(self.seen_listeners):
            listener(message, incoming)
        if incoming is None:
            return

        async def with_context(incoming: IncomingMessage) -> IncomingMessage:
            # the replied-to message, when the client does not have it (in the chat's turn)
            return await with_replied_to(client, message, incoming, me, self.frontend.sent_ids,
                                         self._answers_every_message)

        needs_context = incoming.reply_to is None and is_reply(message)
        self.intake.put(incoming, with_context if needs_context else None)

    async def connect(self) -> None:
        """Start the client (catching up on what arrived while down; it waits in the intake)."""
        self.taking_updates = True
        # kurigram's own catch-up (in start(), no flood handling) is not used: the update
        # stream catches up after the account is up (tgmux.telegram.updates)
        self.client.skip_updates = True
        try:
            await self.client.start()
            await self.updates.start(catch_up=not self.tg.skip_updates)
        except BaseException:  # cancelled (a stop while connecting) or failed
            self.taking_updates = False
            await self.updates.stop()
            await abandon(self.client)
            raise
        # tgmux waits out every flood wait itself (and slows the chat, not one request)
        self.client.sleep_threshold = 0

    def open(self) -> None:
        """Hand messages to the engine (started) and publish the bot's command menu."""
        self.running = True
        me = self.client.me
        if me is not None and me.is_bot:
            # created before the intake opens: with nothing in the way it is the first request
            self.commands_task = asyncio.create_task(self._publish_commands(),
                                                     name=f"tgmux-command-menu-{self.name}")
            self.menus.after = self.commands_task  # chats' menus after the account's
        self.intake.open()

    async def _publish_commands(self) -> None:
        """The account's menus (everyone's first, then all private chats', all groups', each
        admin's), best effort: a flood wait is waited out here (in the background), a wait
        over an hour or a sixth one gives up (Telegram keeps the menu it had); any other
        failure is logged and not retried. :attr:`commands_published`: everyone's menu."""

        def held_back() -> None:
            if not self.commands_attempted.is_set():
                self.commands_published = False
                self.commands_attempted.set()

        try:
            for menu in self.engine.menus.account_menus(self.name):
                await self.menus.limiter.acquire()
                published = await self.menus.publish(menu, on_flood=held_back)
                if menu.scope.kind == "default":
                    self.commands_published = published
                    self.commands_attempted.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.commands_published = False
            log.exception("%s: command menu not published", self.name)
        finally:
            self.commands_attempted.set()

    async def quiesce(self) -> None:
        """Stop taking updates; the dispatcher finishes what it holds."""
        self.running = False
        self.taking_updates = False
        await self.updates.stop()
        await self.stale.close()
        if self.commands_task is not None:
            self.commands_task.cancel()
            await asyncio.gather(self.commands_task, return_exceptions=True)
        await self.menus.close()
        if self.client.is_initialized:
            await self.client.terminate(clear_handlers=False)

    async def disconnect(self) -> None:
        if self.client.is_connected:
            await self.client.disconnect()

    async def ready(self) -> str | None:
        """For ``/readyz``: None when connected and answering, else what is not."""
        if self.revoked is not None:
            return f"Telegram refuses the account ({self.revoked})"
        if not self.running:
            return "not running here (standing by, or not started)"
        if not self.client.is_connected:
            return "not connected to Telegram"
        return None


class TelegramApp:
    """Pyrogram clients (one per account), the engine and the Telegram frontends, started and
    stopped together.

    ``client`` is one client (for the config's first account) or a mapping account name →
    client: real ones (``tgmux run``) or ones attached to
    :class:`tgmux.telegram.fake.FakeTelegram` (``tgmux simulate``, ``tgmux.testing``).
    ``serve`` names the accounts started with :meth:`start` (default: all of them); the others
    can be started later with :meth:`start_account` (a standby taking one over).
    ``new_telegram``: the clients meet a Telegram other than the one the update positions in
    the store are from (`tgmux simulate` without ``--telegram-state``): they start from its
    current state.
    """

    def __init__(self, config: Config, plugin_manager: PluginManager,
                 client: Client | dict[str, Client], *, store: Store | None = None,
                 serve: list[str] | None = None, new_telegram: bool = False,
                 **frontend_options: Any) -> None:
        self.config = config
        clients = client if isinstance(client, dict) else {config.account().name: client}
        self.accounts = {
            name: TelegramAccount(name, c, config.accounts[name].telegram,
                                  new_telegram=new_telegram, **frontend_options)
            for name, c in clients.items()
        }
        self.serve = list(self.accounts) if serve is None else serve
        self.engine = Engine(config, plugin_manager, store or open_store(config.data.store.url),
                             AccountFrontends({n: a.frontend for n, a in self.accounts.items()},
                                              {n: a.media for n, a in self.accounts.items()},
                                              {n: a.menus for n, a in self.accounts.items()}),
                             accounts=self.serve)
        for account in self.accounts.values():
            account.attach(self.engine)
        self._started = False

    # The first account's parts, for a single-account app (tests, tgmux.testing).

    @property
    def first(self) -> TelegramAccount:
        return next(iter(self.accounts.values()))

    @property
    def client(self) -> Client:
        return self.first.client

    @property
    def frontend(self) -> TelegramFrontend:
        return self.first.frontend

    @property
    def intake(self) -> Intake:
        return self.first.intake

    @property
    def seen_listeners(self) -> list[Callable[[Message, IncomingMessage | None], None]]:
        return self.first.seen_listeners

    @property
    def commands_published(self) -> bool | None:
        return self.first.commands_published

    @property
    def commands_attempted(self) -> asyncio.Event:
        return self.first.commands_attempted

    @property
    def commands_task(self) -> asyncio.Task[None] | None:
        return self.first.commands_task

    @property
    def running(self) -> bool:
        """Started (connected, engine open) and not stopped yet."""
        return self._started

    async def start(self) -> None:
        """Connect the served accounts (together), start the engine, open the intakes."""
        serving = [self.accounts[name] for name in self.serve]
        if serving:  # the accounts' sessions and update positions are in it
            await self._open_store()
        results = await asyncio.gather(*(a.connect() for a in serving), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            with contextlib.suppress(Exception):
                await self.engine.store.close()
            for account, result in zip(serving, results, strict=True):
                if not isinstance(result, BaseException):
                    await account.quiesce()
                    await account.disconnect()
            raise failed[0]
        try:
            await self.engine.start()
        except BaseException:
            for account in serving:
                account.taking_updates = False
                await account.updates.stop()
                await account.client.stop()
            raise
        self._started = True
        for account in serving:
            account.open()

    async def _open_store(self) -> None:
        """The store, before the accounts connect (their sessions and update positions are in
        it); the engine's start finds it open. As the engine says it when it cannot."""
        try:
            await self.engine.store.open()
        except Exception as exc:
            raise ConfigError(redact_urls(f"{self.config.where(('store',))}: cannot open "
                                          f"{self.config.data.store.url}: {exc}")) from exc

    async def connect_account(self, name: str) -> None:
        """Connect one more account of a running app (its messages wait in its intake)."""
        await self.accounts[name].connect()

    async def serve_account(self, name: str) -> None:
        """Answer for a connected account: its messages from before first, then its intake.
        If that fails (the store), the account is disconnected again and the error raised."""
        account = self.accounts[name]
        try:
            await self.engine.serve_account(name)
        except BaseException:
            await account.quiesce()
            await account.intake.flush(0)  # what Telegram sent meanwhile goes to the store
            await account.disconnect()
            raise
        if name not in self.serve:
            self.serve.append(name)
        account.open()

    async def start_account(self, name: str) -> None:
        """Connect one more account in a running app and answer for it (a standby's turn)."""
        await self.connect_account(name)
        await self.serve_account(name)

    @property
    def lost(self) -> list[IncomingMessage]:
        """Messages taken from Telegram that a stop gave up (each logged): not answered."""
        return [message for account in self.accounts.values()
                for message in account.intake.lost]

    def lost_in_memory(self) -> list[tuple[str, int, int]]:
        """After a stop: messages the engine took but did not answer whose inbox state never
        reached the store (an outage): nothing keeps them pending for the next start. Each
        is logged by account, chat and message id."""
        lost = self.engine.store.unanswered_in_memory()
        for account, chat_id, message_id in lost:
            log.error("%s: chat %s message %s is not answered: the store did not answer, so it "
                      "is not kept pending for the next start, and Telegram will not send it "
                      "again", account, chat_id, message_id)
        return lost

    def give_up(self) -> None:
        """A stop ran out of time: every message still in an intake is lost (logged)."""
        for account in self.accounts.values():
            account.intake.give_up()

    @staticmethod
    def stop_limit(timeout: float) -> float:
        """Seconds ``stop(timeout)`` may take before its own limits have given up what it
        holds (and logged it): a caller's backstop waits longer than this."""
        return timeout + FLUSH_GRACE

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking updates, answer what was taken (``timeout``: bounded; None: all of
        it), close the store, disconnect. What could not even reach the store in time is
        :attr:`lost`."""
        if not self._started:
            return
        self._started = False
        started = time.monotonic()
        active = [a for a in self.accounts.values() if a.taking_updates or a.running]
        try:
            await asyncio.gather(*(a.quiesce() for a in active))
            remaining = (None if timeout is None
                         else max(0.0, timeout - (time.monotonic() - started)))
            # together: each account's grace runs at the same time (see stop_limit)
            await asyncio.gather(*(account.intake.flush(remaining) for account in active))
            await asyncio.gather(*(account.positions.close() for account in active),
                                 return_exceptions=True)
        except BaseException:
            for account in self.accounts.values():
                with contextlib.suppress(Exception):
                    await account.disconnect()
            raise
        try:
            if timeout is None:
                await self.engine.drain()
                await self.engine.stop()
            else:
                remaining = max(0.0, timeout - (time.monotonic() - started))
                await self.engine.stop(timeout=remaining)
        finally:
            for account in self.accounts.values():
                with contextlib.suppress(Exception):
                    await account.disconnect()

    async def __aenter__(self) -> TelegramApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(self.first.tg.shutdown_timeout)
