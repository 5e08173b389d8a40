"""The engine: takes messages from a frontend, keeps each chat in order, runs chats
concurrently, routes, runs commands and hooks, calls backends and hands the reply stream back
to the frontend.

Per-chat ordering: :meth:`Engine.submit` reserves the message's place in its chat's queue
before its first ``await``, so a chat's messages are answered in the order the frontend
submitted them, however concurrently the frontend calls it. Different chats run concurrently,
at most ``engine.concurrency`` at a time.

Nothing is lost: a message is written to the store's inbox before it is queued, marked
dispatched when a backend gets it, and done after its reply. On start, a message that never
reached a backend is answered; one a backend already had (the process died mid-reply) is not
replayed, since the provider may have it already (a duplicated, perhaps charged, chat turn):
the user is told and asked to send it again.

Why one module of about 950 lines: intake, ordering, the inbox states, the turn's stream and
a reload's swap of backends share the slot, worker and backend state and must change together
(a message's inbox state follows where it is in its chat's queue; a removed backend closes when
its turns are over). What stands apart lives apart: routing (``tgmux.router``), the built-in
commands (``tgmux.chat_commands``), reply shaping (``tgmux.reply``), metrics
(``tgmux.metrics``), the backends in use and the step deadline (``tgmux.backend_use``), the
message types (``tgmux.types``), reading a new config file (``tgmux.reload``), which queued
messages are one turn (an album, a burst: ``tgmux.merging``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tgmux.access import Gate, is_admin
from tgmux.backend import Backend, Turn
from tgmux.backend_use import BackendsInUse, StepDeadline
from tgmux.chat_commands import (
    BUILTIN_COMMANDS,
    admin_only_notice,
    builtin_answers,
    help_text,
    interrupted_notice,
    run_builtin,
)
from tgmux.circuit import STATE_VALUES, Circuit
from tgmux.config import Config
from tgmux.config.schema import BackendCore
from tgmux.errors import USER_MESSAGES, BackendError, CircuitOpenError, ConfigError, ErrorKind
from tgmux.gctuning import serving_started, serving_stopped
from tgmux.hooks import PluginManager, await_me_maybe, call_all, call_chained, call_first, flatten
from tgmux.logs import log_fields
from tgmux.media_links import MediaLinks
from tgmux.menu_publisher import MenuPublisher
from tgmux.merging import ChatQueue, abandon, finish, merged, message_ids, take_turn
from tgmux.metrics import Metrics
from tgmux.personas import PersonaChoices
from tgmux.redact import redact_urls
from tgmux.reply import ReplyShaper, clean_part
from tgmux.router import RouteDecision, Router
from tgmux.store import FollowedCache, GuardedStore, Store, StoreUnavailable
from tgmux.turns import build_turn, history_for, keep_context, prune_context, take_context
from tgmux.types import (
    DROP,
    ChatIdentity,
    ChatType,
    CommandContext,
    CommandSpec,
    Frontend,
    IncomingMessage,
    MediaUnavailable,
    Metadata,
    Notice,
    PluginCommand,
    ProviderEvent,
    ReplyPart,
    Text,
    TextDelta,
    delay_notifier,
)
from tgmux.usage import UsageRecorder

__all__ = [  # the message types are re-exported: plugins have imported them from here
    "DROP",
    "CommandContext",
    "Engine",
    "Frontend",
    "IncomingMessage",
    "PluginCommand",
    "ProviderEvent",
]

log = logging.getLogger("tgmux.engine")

NOT_UNDERSTOOD_MEDIA = "I can only read text messages here. Please write your message as text."
#: Replies per backend whose time ``/status`` reports the median of.
RECENT_REPLIES = 100
INTERNAL_ERROR = "Something went wrong on our side while answering. Please try again."


@dataclass
class _Slot:
    message: IncomingMessage
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    fresh: bool = False  # False: seen before (duplicate) or not accepted
    interrupted: bool = False  # a backend had it when the process stopped
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop()
                                        .create_future())


class Engine:
    #: Answered messages are remembered this long (seconds), to skip duplicates.
    INBOX_RETENTION = 7 * 86400
    #: How often (seconds) the inbox forgets what is older than that.
    PRUNE_INTERVAL = 600.0
    #: Chats whose ``/backend`` choice is kept in memory at most.
    OVERRIDES_KEPT = 100_000

    def __init__(self, config: Config, plugin_manager: PluginManager, store: Store,
                 frontend: Frontend, *, accounts: list[str] | None = None) -> None:
        self.config = config
        self.pm = plugin_manager
        self.store = GuardedStore(store, timeout=config.data.store.timeout)  # never hangs
        self.frontend = frontend
        self.routers = {name: Router(config, name) for name in config.accounts}
        self.metrics = Metrics()
        #: Public links to bytes backends publish (``Turn.share``), served by the ops server at
        #: ``/media/{token}``; only with ``server.public_url`` (else nothing could fetch them).
        public_url = config.data.server.public_url
        self.media_links = MediaLinks(public_url) if public_url is not None else None
        #: The accounts whose old messages this engine answers at start (``tgmux run
        #: --account``; a standby adds the ones it takes over with :meth:`serve_account`).
        self.served: list[str] = list(config.accounts if accounts is None else accounts)
        self.metrics.before_scrape(self._count_backlog)
        self.backends: dict[str, Backend] = {}
        self.circuits: dict[str, Circuit] = {}
        #: per backend name: the last replies' seconds (for ``/status``'s p50)
        self.recent_latency: dict[str, deque[float]] = {}
        self._in_use = BackendsInUse()
        self._retiring: set[asyncio.Task[None]] = set()
        self.gate = Gate(self.store)
        self.usage = UsageRecorder(self.store, self.metrics, self._in_use)  # and its cost
        self.plugin_commands: dict[str, PluginCommand] = {}
        self.menus = MenuPublisher(self)  # Telegram's command menus, by scope
        self._overrides: FollowedCache[str | None] = self.store.followed("override",
                                                                        self.OVERRIDES_KEPT)
        self.personas = PersonaChoices(self.store)  # each chat's /persona (tgmux.personas)
        # Keyed by (account, chat id): one user talking to two accounts is two chats.
        self._queues: dict[tuple[str, int], ChatQueue[_Slot]] = {}
        self._workers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._limit = asyncio.Semaphore(config.data.engine.concurrency)
        self._started = False
        self._accepting = False
        self._pruner: asyncio.Task[None] | None = None
        self._given_up: set[str] = set()  # accounts whose lease was lost (stop_serving)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start backends, call startup hooks, re-queue unanswered messages."""
        try:
            await self.store.open()
        except Exception as exc:
            raise ConfigError(redact_urls(f"{self.config.where(('store',))}: cannot open "
                                          f"{self.config.data.store.url}: {exc}")) from exc
        for name in self.config.backend_settings:
            try:
                self.backends[name] = await self._start_backend(name, self.config)
            except ConfigError:
                await self._close_backends()
                await self.store.close()
                raise
            self.circuits[name] = self._circuit(name, self.config)
        for command in flatten(await call_all(self.pm.hook.tgmux_commands)):
            name = command.spec.name
            if name in {c.name for c in BUILTIN_COMMANDS}:
                log.warning("plugin command /%s ignored: built-in", name)
                continue
            self.plugin_commands[name] = command
        await self._prune()
        await self.gate.load_blocked()  # the console's blocks (tgmux.access), kept in the store
        self._pruner = asyncio.create_task(self._prune_periodically(), name="tgmux-inbox-prune")
        self._started = True
        self._accepting = True
        serving_started()  # GC thresholds for many turns in flight (tgmux.gctuning)
        await call_all(self.pm.hook.tgmux_startup, engine=self)
        for account in self.served:
            await self._resume(account)

    async def _start_backend(self, name: str, config: Config) -> Backend:
        """A started instance of backend ``name`` as ``config`` sets it up (ConfigError: it
        could not start; it is closed again)."""
        backend = config.backend_classes[name](name, config.backend_settings[name],
                                               self.store.namespace(f"backend:{name}"))
        backend._event_sink = self.emit_event
        try:
            await backend.start()
        except Exception as exc:
            log.debug("backend %s failed to start", name, exc_info=True)
            with contextlib.suppress(Exception):
                await backend.close()
            raise ConfigError(f"{config.where(('backends', name))}: could not start: "
                              f"{exc}") from exc
        return backend

    def _circuit(self, name: str, config: Config) -> Circuit:
        breaker = _core_of(config, name).circuit
        return Circuit(name, breaker.failures, breaker.cooldown,
                       on_change=lambda state: self.metrics.of(
                           self.metrics.circuit_state, name).set(STATE_VALUES[state]))

    async def reload(self, config: Config) -> list[str]:
        """Run on ``config`` from the next message on (a reload: ``tgmux.reload`` decides
        what of a new file applies). Backends whose type and settings did not change keep
        their instance (connections, limiter and circuit state, sub-user maps); changed ones
        are rebuilt, removed ones close once their turns in flight are over. Either all of it
        applies or, when a new or rebuilt backend cannot start (ConfigError), none of it.
        Returns what changed among the backends ("backend lucy: rebuilt", …)."""
        if not self._accepting:
            raise ConfigError("not reloaded: tgmux is not running (starting or stopping)")
        changes: list[str] = []
        kept: dict[str, Backend] = {}
        started: dict[str, Backend] = {}
        closed: list[Backend] = []  # old instances closed already, to free what they held
        try:
            for name in config.backend_settings:
                current = self.backends.get(name)
                if (current is not None and type(current) is config.backend_classes[name]
                        and current.settings == config.backend_settings[name]):
                    kept[name] = current
                    continue
                started[name] = await self._start_again(name, config, current, closed)
                changes.append(f"backend {name}: {'rebuilt' if current else 'added'}")
        except BaseException:
            for backend in started.values():
                with contextlib.suppress(Exception):
                    await backend.close()
            raise
        changes += [f"backend {n}: removed" for n in self.backends
                    if n not in config.backend_settings]
        for name in kept:
            before, after = _core_of(self.config, name), _core_of(config, name)
            circuit = self.circuits[name]
            if before.circuit != after.circuit:  # the state is kept, the thresholds change
                circuit.failures, circuit.cooldown = after.circuit.failures, after.circuit.cooldown
                changes.append(f"backend {name}: circuit changed")
            if (before.fallback, before.fallback_on) != (after.fallback, after.fallback_on):
                changes.append(f"backend {name}: fallback changed")
        retired = [b for n, b in self.backends.items() if n not in kept and b not in closed]
        self.config = config
        self.routers = {name: Router(config, name) for name in config.accounts}
        self.backends = {n: kept.get(n) or started[n] for n in config.backend_settings}
        self.circuits = {n: self.circuits[n] if n in kept else self._circuit(n, config)
                         for n in config.backend_settings}
        for backend in retired:
            self._retire(backend)
        self.menus.republish(self.served)
        return changes

    async def _start_again(self, name: str, config: Config, current: Backend | None,
                           closed: list[Backend]) -> Backend:
        """A new instance of ``name`` for ``config``. When it cannot start while the current
        one runs (that one may hold what the new one needs: a webhook's port), the current one
        finishes its turns and is closed (added to ``closed``), and the new one is tried once
        more; if that fails too, an instance on the old settings takes the current one's
        place, and the error is raised."""
        try:
            return await self._start_backend(name, config)
        except ConfigError:
            if current is None:
                raise
            log.info("backend %s: the new instance could not start next to the old one; "
                     "trying again once the old one is closed", name)
            await self._close_when_idle(current)
            closed.append(current)
        try:
            return await self._start_backend(name, config)
        except ConfigError:
            self.backends[name] = await self._start_backend(name, self.config)
            closed.remove(current)  # replaced: the one in place now is not closed
            raise

    def _retire(self, backend: Backend) -> None:
        task = asyncio.create_task(self._close_when_idle(backend),
                                   name=f"tgmux-retire-{backend.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_idle(self, backend: Backend) -> None:
        """Close ``backend`` once no turn uses it (bounded: a turn's timeout and a minute
        more for its delivery)."""
        limit = self.config.data.engine.turn_timeout + 60
        if not await self._in_use.idle(backend, limit):
            log.warning("backend %s: still in use after %.0f s; closing it anyway",
                        backend.name, limit)
        try:
            await backend.close()
        except Exception:
            log.exception("closing backend %s failed", backend.name)

    async def _count_backlog(self) -> None:
        for account in self.served:
            try:
                backlog = await self.store.inbox_backlog(account=account)
            except Exception:  # a scrape must not fail; an outage is logged once (store.guard)
                log.debug("inbox backlog of %s unknown: the store did not answer", account)
                continue
            self.metrics.of(self.metrics.inbox_pending, account).set(backlog)

    async def serve_account(self, account: str) -> None:
        """Start answering for ``account`` in a running engine (a standby that took it over):
        its messages from before are answered first, as at start."""
        if account not in self.served:
            self._overrides.forget(account)  # another process ran it meanwhile
            self.personas.forget(account)
            self.served.append(account)
            self._given_up.discard(account)
            await self._resume(account)

    def stop_serving(self, account: str) -> None:
        """Answer nothing more for ``account`` at once (its lease is lost): queued messages stay
        pending, turns under way are cancelled, left dispatched (see tgmux.telegram.leases)."""
        self.served[:] = [a for a in self.served if a != account]
        self._given_up.add(account)
        for key in [k for k in self._workers if k[0] == account]:
            self._workers.pop(key).cancel()
            for slot in self._queues.pop(key, ()):  # no one waits for them here any more
                slot.done.cancel()

    async def _resume(self, account: str) -> None:
        unanswered = await self.store.inbox_unanswered(account=account)
        if unanswered:
            log.info("%s: %d message(s) from before the last stop are unanswered", account,
                     len(unanswered))
        for entry in unanswered:
            # its media (no bytes are kept) is fetched again if its backend reads it
            slot = self._reserve(IncomingMessage.from_payload(
                entry.payload, getattr(self.frontend, "fetch_media", None)))
            slot.fresh = True
            # Replaying a turn a provider may already have had would duplicate it there
            # (and charge it twice): the user is asked to resend instead.
            slot.interrupted = entry.dispatched
            slot.ready.set()

    async def stop(self, timeout: float = 20.0) -> None:
        """Stop taking messages, finish in-flight replies (bounded), close everything."""
        if not self._started:
            return
        self._accepting = False
        for queue in self._queues.values():  # a turn waiting for more of a burst: no more
            queue.close()
        workers = [t for t in self._workers.values() if not t.done()]
        if workers:
            _, pending = await asyncio.wait(workers, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d chat(s) still busy after %.0fs; their messages stay pending "
                            "and are answered after the next start", len(pending), timeout)
                await asyncio.gather(*pending, return_exceptions=True)
        await self.usage.stop()  # cut replies read on for their usage: recorded as they are
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
            self._pruner = None
        await call_all(self.pm.hook.tgmux_shutdown, engine=self)
        if self._retiring:  # no turn is left: they close at once
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await self._close_backends()
        await self.store.close()
        self._started = False
        serving_stopped()

    async def _close_backends(self) -> None:
        for backend in self.backends.values():
            try:
                await backend.close()
            except Exception:
                log.exception("closing backend %s failed", backend.name)
        self.backends.clear()

    async def _prune(self) -> None:
        try:
            await self.store.inbox_prune(time.time() - self.INBOX_RETENTION)
            await prune_context(self.store)
            await self.usage.prune(self.config)
        except StoreUnavailable:  # the outage is said once by the guard; the next round retries
            log.debug("inbox not pruned: the store is not answering")
        except Exception as exc:  # the next round tries again; answering matters more
            log.warning("pruning the inbox failed: %s", redact_urls(str(exc)))

    async def _prune_periodically(self) -> None:
        """Answered messages are forgotten while running too, not only at start: a bot that
        runs for months must not grow its store (or its memory, with ``memory://``)."""
        while True:
            await asyncio.sleep(self.PRUNE_INTERVAL)
            await self._prune()

    async def drain(self) -> None:
        """Wait until every queued message is answered."""
        while workers := [t for t in self._workers.values() if not t.done()]:
            await asyncio.gather(*workers, return_exceptions=True)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- intake ----------------------------------------------------------------------------------

    def _reserve(self, message: IncomingMessage) -> _Slot:
        slot = _Slot(message)
        key = (message.chat.account, message.chat.chat_id)
        self._queues.setdefault(key, ChatQueue()).append(slot)
        worker = self._workers.get(key)
        if worker is None or worker.done():
            self._workers[key] = asyncio.create_task(self._chat_worker(key),
                                                         name=f"tgmux-chat-{key[0]}-{key[1]}")
        return slot

    async def submit(self, message: IncomingMessage) -> asyncio.Future[None]:
        """Queue a message; returns a future that resolves when it has been answered.

        Ordering is fixed before the first await: call order is answer order within a chat.
        """
        if not self._accepting:
            raise RuntimeError("engine is not accepting messages (not started or stopping)")
        self.metrics.of(self.metrics.messages_received, message.chat.account).inc()
        self.metrics.activity.seen(message)  # the console's last hour (tgmux.activity): O(1)
        slot = self._reserve(message)
        try:
            if message.chat.message_id is None:
                slot.fresh = True
            else:
                try:
                    slot.fresh = await self.store.inbox_accept(
                        message.chat.chat_id, message.chat.message_id, message.to_payload(),
                        account=message.chat.account, position=message.position)
                except Exception:
                    # Better an answer without dedup or restart safety than no answer at all.
                    log.exception("chat %s message %s: the store did not take it; answering "
                                  "it anyway", message.chat.chat_id, message.chat.message_id)
                    slot.fresh = True
                if not slot.fresh:
                    log.info("chat %s message %s already handled; skipped",
                             message.chat.chat_id, message.chat.message_id)
        finally:
            slot.ready.set()
        return slot.done

    async def _chat_worker(self, key: tuple[str, int]) -> None:
        queue = self._queues[key]
        while queue:
            slot = queue[0]
            await slot.ready.wait()
            taken = [slot]  # and the messages of its album or burst (tgmux.merging)
            try:
                if slot.fresh and key[0] not in self._given_up:  # else left in the inbox
                    taken = await take_turn(queue, self.config.data.engine.merge_window)
                    async with self._limit:
                        await self._handle(merged(taken), interrupted=slot.interrupted)
            except asyncio.CancelledError:
                abandon(taken)
                raise
            except Exception:
                log.exception("chat %s (%s): unhandled error", key[1], key[0])
            finally:
                finish(queue, taken)
        self._queues.pop(key, None)
        self._workers.pop(key, None)

    # -- handling --------------------------------------------------------------------------------

    async def _handle(self, message: IncomingMessage, *, interrupted: bool = False) -> None:
        chat = message.chat
        log_fields.set({"account": chat.account, "chat_id": chat.chat_id})
        try:
            if interrupted:
                sent = await self._send(chat, [Notice(interrupted_notice(message.text))],
                                        chat.message_id)
                if not sent:  # nothing more can be done: say so where an operator looks
                    log.warning("chat %s message %s: the user could not be told that its "
                                "answer was cut off by a restart; the notice is lost",
                                chat.chat_id, chat.message_id)
            else:
                await self._answer(message)
        except Exception as exc:  # the user is always told something
            log.exception("chat %s message %s: failed", chat.chat_id, chat.message_id)
            text = await call_first(self.pm, "tgmux_error", turn=None, error=exc,
                                    message=message)
            await self._send(chat, [Notice(text or INTERNAL_ERROR)], chat.message_id)
        for message_id in message_ids(message):
            try:
                await self.store.inbox_done(chat.chat_id, message_id, account=chat.account)
            except Exception:  # answered all the same; at worst flagged again after a restart
                log.exception("chat %s message %s: could not mark it answered", chat.chat_id,
                              message_id)

    async def decide(self, message: IncomingMessage) -> RouteDecision | None:
        chosen = await call_first(self.pm, "tgmux_route", message=message, engine=self)
        account, chat_id = message.chat.account, message.chat.chat_id
        return self.router_for(account).decide(
            message, override=await self.override(account, chat_id), chosen=chosen,
            persona=await self.personas.choice(account, chat_id, self.config))

    async def override(self, account: str, chat_id: int) -> str | None:
        """The chat's ``/backend`` choice. Kept in memory once read (bounded; a store round trip
        per message saved), dropped when any process changes it (tgmux.store.changes)."""
        return await self._overrides.get(
            (account, chat_id), lambda: self.store.get_override(chat_id, account=account))

    async def set_override(self, account: str, chat_id: int, backend: str | None) -> None:
        """Set (None: clear) the chat's ``/backend`` choice, in the store and here."""
        await self._overrides.put((account, chat_id), lambda: self.store.set_override(
            chat_id, backend, account=account), backend)

    def router_for(self, account: str) -> Router:
        """The account's routing (an unknown account: the first one's)."""
        return self.routers.get(account) or next(iter(self.routers.values()))

    async def backend_for(self, message: IncomingMessage) -> Backend | None:
        """The backend that will answer ``message``, or None when nothing will (no route, a
        group message that does not trigger the bot, a sender ``access`` refuses). For plugins
        (a voice transcriber: does the answering backend hear voice itself?)."""
        decision = await self.decide(message)
        if decision is None or not self._triggered(message, decision):
            return None
        if self.gate.denied(self.router_for(message.chat.account).account, message):
            return None
        return self.backends.get(decision.backend)

    async def reply_to(self, message: IncomingMessage, parts: list[ReplyPart]) -> list[ReplyPart]:
        """Send parts to the chat ``message`` came from, as a reply to it, at once (a plugin's
        word before the answer: what a voice message said). The parts that were sent."""
        return await self._send(message.chat, parts, message.chat.message_id)

    def _triggered(self, message: IncomingMessage, decision: RouteDecision | None) -> bool:
        chat_type = message.chat.chat_type
        if chat_type == "private":
            return True
        if chat_type == "channel":
            return decision is not None and decision.reason != "default"
        trigger = decision.group_trigger if decision else "mention"
        if trigger == "always":
            return True
        if trigger == "command":
            return message.command is not None
        return message.addressed or message.command is not None

    async def _answer(self, message: IncomingMessage) -> None:
        chat = message.chat
        decision = await self.decide(message)
        triggered = self._triggered(message, decision)
        # Every message, triggered or not: moderation and logging plugins must see them all.
        verdict = await call_first(self.pm, "tgmux_pre_route", message=message, engine=self,
                                   triggered=triggered)
        if verdict is DROP:
            return
        if verdict is not None:
            await self._send(chat, _as_parts(verdict), chat.message_id)
            return
        if not triggered:
            await self._observe(message, decision)
            return
        account = self.router_for(chat.account).account
        refused = self.gate.denied(account, message)
        command = message.command
        if refused is None and not builtin_answers(self, command, decision):
            try:
                refused = await self.gate.limited(account, message)
            except Exception as exc:  # the limits' counters are down: answer all the same
                log.warning("chat %s: limits not checked, the store failed: %s", chat.chat_id,
                            exc)
        if refused is not None:  # marked processed; no backend ever sees it
            log.info("chat %s: user %s %s", chat.chat_id, chat.user_id, refused.reason)
            if refused.reply:
                await self._send(chat, [Notice(refused.reply)], chat.message_id)
            return
        self.menus.seen(message, decision)
        # Plugins rewrite it (a voice message into its text) once it may go on: a refused
        # message costs no provider anything, a transcription service included.
        try:
            rewritten = await call_chained(self.pm, "tgmux_incoming", "message", message,
                                           engine=self)
        except BackendError as exc:
            log.warning("chat %s message %s: not rewritten: %s", chat.chat_id,
                        chat.message_id, exc.log_text())
            text = await call_first(self.pm, "tgmux_error", turn=None, error=exc,
                                    message=message)
            await self._send(chat, [Notice(text or exc.user_message)], chat.message_id)
            return
        if rewritten is not message:  # its text may match another route now
            message, decision = rewritten, await self.decide(rewritten)
            command = message.command
        if builtin_answers(self, command, decision):
            await self._send(chat, await run_builtin(self, command, message, decision),
                             chat.message_id)
            return
        if command in self.plugin_commands:
            if not self._may_run(self.plugin_commands[command].spec, message):
                await self._send(chat, [Notice(admin_only_notice(command))], chat.message_id)
                return
            ctx = CommandContext(message, self, message.args)
            result = await await_me_maybe(self.plugin_commands[command].handler(ctx))
            if hasattr(result, "__aiter__"):
                await self.frontend.deliver(chat, result, reply_to_message_id=chat.message_id)
            else:
                await self._send(chat, _as_parts(result), chat.message_id)
            return
        if decision is not None and decision.backend not in self.backends:
            decision = await self.decide(message)  # a reload since: decide on the new config
        if decision is None or decision.backend not in self.backends:
            await self._send(chat, [Notice("No AI is configured for this chat.")], chat.message_id)
            return
        backend = self.backends[decision.backend]
        # the turn's backends (its fallbacks too) stay open while it runs, reload or not
        chain = [] if command else [self.backends[n] for n in decision.fallback
                                    if n in self.backends and n != backend.name]
        with self._in_use.hold([backend, *chain]):
            await self._answer_with(message, decision, backend, chain)

    async def _observe(self, message: IncomingMessage, decision: RouteDecision | None) -> None:
        """Show an untriggered group message to its route's backend (:meth:`Backend.observe`).
        Awaited in the chat's worker, so it is done before the chat's next message is."""
        chat = message.chat
        if decision is None or chat.chat_type not in ("group", "supergroup"):
            return
        if self.gate.denied(self.router_for(chat.account).account, message) is not None:
            return
        await keep_context(self.store, message, decision)  # route key group_context
        backend = self.backends.get(decision.backend)
        if backend is None or not backend.observes() or not message.text.strip():
            return
        turn = self.turn_for(message, decision, backend)
        try:
            with self._in_use.hold([backend]):
                async with asyncio.timeout(self.config.data.engine.turn_timeout):
                    await backend.observe(turn)
        except Exception as exc:  # never shown: the chat did not ask for anything
            log.warning("chat %s message %s: %s could not observe it: %s", chat.chat_id,
                        chat.message_id, backend.name, exc)

    async def _answer_with(self, message: IncomingMessage, decision: RouteDecision,
                           backend: Backend, chain: list[Backend]) -> None:
        chat, command = message.chat, message.command
        backend_commands = {c.name: c for c in backend.commands()}
        if command is not None and command not in backend_commands:
            await self._send(chat, [Notice(self.menus.unavailable(message, decision))],
                             chat.message_id)
            return
        if command is not None and not self._may_run(backend_commands[command], message):
            await self._send(chat, [Notice(admin_only_notice(command))], chat.message_id)
            return
        if message.media is not None and message.media.kind not in backend.accepts_media:
            await self._send(chat, [Notice(NOT_UNDERSTOOD_MEDIA)], chat.message_id)
            return
        if not message.text.strip() and message.media is None:
            await self._send(chat, [Notice("Send me a message and I will answer.")],
                             chat.message_id)
            return
        turn = await take_context(self.store, self.turn_for(message, decision, backend), decision)
        turn = await call_chained(self.pm, "tgmux_before_backend", "turn", turn, backend=backend)
        for message_id in message_ids(message):
            await self.store.inbox_dispatched(chat.chat_id, message_id, account=chat.account)
        answered = [turn]  # the turn of the backend that answered (a fallback's, maybe)
        completed: list[Turn] = []  # the answering turn, once its reply came whole
        # aclosing: the stream is finished in this task even if the frontend stops early.
        async with contextlib.aclosing(self._reply_stream(turn, backend, chain, message,
                                                          answered, completed)) as parts:
            sent = await self.frontend.deliver(chat, parts, reply_to_message_id=chat.message_id)
        if completed:
            await self._remember(completed[-1], sent)
        try:
            await call_all(self.pm.hook.tgmux_reply_sent, turn=answered[-1], parts=sent)
        except Exception:  # the user has the answer: a broken observer must not say otherwise
            log.exception("chat %s: a tgmux_reply_sent hook failed", chat.chat_id)

    async def _remember(self, turn: Turn, sent: list[ReplyPart]) -> None:
        """Add the exchange to the conversation memory of a backend that asked for one: the
        reply as the chat received it (after the hooks), never a command's."""
        reply = "\n\n".join(p.text for p in sent if isinstance(p, Text))
        if turn.history is None or turn.command or not reply.strip():
            return
        backend = self.backends.get(turn.backend_name)
        if backend is None:  # a reload removed it meanwhile: its memory is not used any more
            return
        try:
            await turn.history.append(backend.remembered_text(turn), reply)
        except Exception:  # the user has the answer; the next turn has less context
            log.exception("chat %s: the reply could not be remembered", turn.chat.chat_id)

    def turn_for(self, message: IncomingMessage, decision: RouteDecision, backend: Backend) -> Turn:
        chat = message.chat

        async def notify(text: str) -> None:
            await self._send(chat, [Notice(text)], chat.message_id)

        return build_turn(message, decision, backend, store=self.store, notify=notify,
                          share=self.media_links.share if self.media_links is not None else None)

    async def _reply_stream(self, turn: Turn, backend: Backend, chain: list[Backend],
                            message: IncomingMessage, answered: list[Turn],
                            completed: list[Turn] | None = None) -> AsyncIterator[ReplyPart]:
        """The chosen backend's reply, or — when it fails before showing anything, with a kind
        its ``fallback_on`` lists, or its circuit is open — the next one's in the chain (flat:
        the fallbacks' own chains are not followed). A backend's own commands never fall
        back. ``answered`` gets the turn of each backend asked; the last one answered.
        ``completed`` gets the answering turn when its reply came whole (no error, not cut)."""
        deadline = asyncio.get_running_loop().time() + self.config.data.engine.turn_timeout
        current, current_turn = backend, turn
        for position in range(len(chain) + 1):
            fell_back: list[BaseException] = []
            async for part in self._backend_stream(current_turn, current, message, deadline,
                                                   may_fall_back=position < len(chain),
                                                   fell_back=fell_back, completed=completed):
                yield part
            if not fell_back:
                if position:
                    log.info("chat %s: answered by %s in place of %s", turn.chat.chat_id,
                             current.name, backend.name)
                return
            following = chain[position]
            log.warning("chat %s: %s failed before answering (%s); trying %s",
                        turn.chat.chat_id, current.name, _kind_of(fell_back[0]), following.name)
            current = following
            current_turn = dataclasses.replace(
                turn, options=following.settings, kv=following.kv, backend_name=following.name,
                fallback_from=backend.name,
                history=history_for(self.store, following, turn.chat, following.settings))
            answered.append(current_turn)

    async def _backend_stream(self, turn: Turn, backend: Backend, message: IncomingMessage,
                              deadline: float, *, may_fall_back: bool = False,
                              fell_back: list[BaseException] | None = None,
                              completed: list[Turn] | None = None,
                              ) -> AsyncIterator[ReplyPart]:
        """The backend's parts through ``tgmux_after_backend``; errors become a Notice — or,
        with ``may_fall_back``, a failure before anything visible whose kind falls back is put
        in ``fell_back`` instead, and nothing is yielded for it.

        ``completed`` gets ``turn`` when the backend's reply ended normally and whole.

        ``deadline`` (``turn_timeout``, one for the whole chain) bounds the time spent in the
        backend only: it is checked around each step of the backend, never around a
        ``yield``, so time the frontend takes to deliver (flood waits, edit pacing) neither
        counts nor cancels the chat's worker."""

        async def tell_delay(seconds: float) -> None:
            await turn.notify(f"Your reply is delayed by about {round(seconds)} s "
                              "(the AI provider's rate limit). I'll answer as soon as I can.")

        # Set, never reset: the frontend may drive this generator from another task, where a
        # reset token would not belong; the next turn sets its own.
        delay_notifier.set(_once(tell_delay))
        log_fields.set({**(log_fields.get() or {}), "backend": backend.name})
        # an instance a reload removed meanwhile has a circuit no longer kept: a throwaway one
        circuit = self.circuits.get(backend.name) or self._circuit(backend.name, self.config)
        if turn.command and not next((c.calls_provider for c in backend.commands()
                                      if c.name == turn.command), True):
            circuit = None  # it reads what tgmux keeps: answered even with the provider down
        loop = asyncio.get_running_loop()
        started = loop.time()
        first: float | None = None
        failure: Exception | None = None
        notice: str | None = None
        shaper = ReplyShaper(self.config.data.engine.max_reply_chars, turn.options,
                             command=turn.command)
        finished = False
        source: Any = None
        steps = StepDeadline(loop, deadline)
        try:
            if circuit is not None and not circuit.allow():
                raise CircuitOpenError(f"{backend.name}: circuit open (retry in "
                                       f"{circuit.retry_in():.0f} s)")
            source = backend.run_command(turn) if turn.command else backend.reply(turn)
            while True:
                try:
                    part = await steps.next(source)
                except StopAsyncIteration:
                    finished = True
                    break
                if first is None and not isinstance(part, Metadata):
                    first = loop.time() - started
                    self.metrics.of(self.metrics.first_token, backend.name).observe(first)
                if isinstance(part, TextDelta):
                    for out in shaper.delta(part):
                        yield out
                else:
                    result = await call_chained(self.pm, "tgmux_after_backend", "part",
                                                shaper.own(part), turn=turn, engine=self)
                    for out in result if isinstance(result, list) else [result]:
                        for shaped in shaper.complete(out):
                            yield shaped
                if shaper.cut:  # no need to read the rest (a provider may send megabytes)
                    finished = True
                    log.info("chat %s: %s: reply cut at %d characters", turn.chat.chat_id,
                             backend.name, shaper.max_chars)
                    break
        except BackendError as exc:
            # an open circuit was said once when it opened: not again for every message
            log.log(logging.INFO if isinstance(exc, CircuitOpenError) else logging.WARNING,
                    "chat %s: %s: %s", turn.chat.chat_id, backend.name, exc.log_text(),
                    extra={"request_id": exc.request_id} if exc.request_id else {})
            failure, notice = exc, exc.user_message
        except MediaUnavailable as exc:  # the frontend could not fetch it: not the backend's
            log.warning("chat %s: %s: the %s was not fetched: %s", turn.chat.chat_id,
                        backend.name, turn.media.kind if turn.media else "media", exc)
            failure, notice = exc, exc.user_message
        except TimeoutError as exc:
            log.warning("chat %s: %s: no complete answer in %.0fs", turn.chat.chat_id,
                        backend.name, self.config.data.engine.turn_timeout)
            failure, notice = exc, USER_MESSAGES[ErrorKind.TIMEOUT]
        except Exception as exc:
            log.exception("chat %s: backend %s failed", turn.chat.chat_id, backend.name)
            failure, notice = exc, INTERNAL_ERROR
        finally:
            steps.close()
            moves_on = (failure is not None and may_fall_back and first is None
                        and _kind_of(failure) in self._falls_back_on(backend.name))
            # counted however the stream ended: also when the frontend stopped reading
            # (a send failed) or the worker was cancelled at shutdown
            self._count_reply(turn, backend, loop.time() - started, failure, finished,
                              moves_on)
            # closes the source; a cut reply's usage may come after its text: read on for it
            await self.usage.settle(self.config, turn, backend, shaper.usage, failure, moves_on,
                                    source=source, cut=shaper.cut, after_backend=lambda part:
                                    call_chained(self.pm, "tgmux_after_backend", "part", part,
                                                 turn=turn, engine=self))
            if circuit is None:
                pass
            elif isinstance(failure, BackendError | TimeoutError) and \
                    not isinstance(failure, CircuitOpenError):
                circuit.failed(_kind_of(failure))
            elif failure is None and finished:
                circuit.succeeded()
            elif failure is None or isinstance(failure, MediaUnavailable):
                circuit.abandoned()  # delivery stopped, cancelled, no media: not the provider
        if moves_on and fell_back is not None and failure is not None:
            fell_back.append(failure)
            return
        if completed is not None and failure is None and finished and not shaper.cut:
            completed.append(turn)
        for out in shaper.end():
            yield out
        if failure is not None:
            text = await call_first(self.pm, "tgmux_error", turn=turn, error=failure,
                                    message=message)
            yield Notice(text or notice or INTERNAL_ERROR)

    def _falls_back_on(self, backend: str) -> list[str]:
        return _core_of(self.config, backend).fallback_on

    def _count_reply(self, turn: Turn, backend: Backend, seconds: float,
                     failure: Exception | None, finished: bool, moved_on: bool) -> None:
        metrics = self.metrics
        metrics.of(metrics.backend_latency, backend.name).observe(seconds)
        if failure is None and finished:
            recent = self.recent_latency.get(backend.name)
            if recent is None:
                recent = self.recent_latency[backend.name] = deque(maxlen=RECENT_REPLIES)
            recent.append(seconds)
        outcome = ("fell_back" if moved_on else "error" if failure is not None
                   else "ok" if finished else "cancelled")
        metrics.of(metrics.replies, turn.chat.account, backend.name, outcome).inc()
        metrics.activity.replied(backend.name, outcome, failure, _kind_of)
        if failure is not None:
            metrics.of(metrics.provider_errors, backend.name, _kind_of(failure)).inc()

    async def _send(self, chat: ChatIdentity, parts: list[ReplyPart],
                    reply_to: int | None) -> list[ReplyPart]:
        async def stream() -> AsyncIterator[ReplyPart]:
            for part in parts:
                yield clean_part(part)

        return await self.frontend.deliver(chat, stream(), reply_to_message_id=reply_to)

    # -- commands --------------------------------------------------------------------------------

    def is_admin(self, user_id: int | None, account: str = "main") -> bool:
        """Whether ``user_id`` may use admin-only commands with ``account`` (:func:`is_admin`)."""
        return is_admin(self.router_for(account).account, user_id)

    def _may_run(self, spec: CommandSpec, message: IncomingMessage) -> bool:
        return not spec.admin_only or self.is_admin(message.chat.user_id, message.chat.account)

    def help_text(self, decision: RouteDecision | None, account: str = "main") -> str:
        return help_text(self, decision, account)

    def command_specs(self) -> list[CommandSpec]:
        """Every command any chat may use (each chat's menu: :attr:`menus`)."""
        return self.menus.every_command()

    # -- events ----------------------------------------------------------------------------------

    async def emit_event(self, event: ProviderEvent) -> None:
        await call_all(self.pm.hook.tgmux_provider_event, event=event, engine=self)

    async def deliver(self, chat_id: int, parts: list[ReplyPart], *,
                      chat_type: ChatType | None = None) -> list[ReplyPart]:
        """Send parts to a chat outside any conversation turn (events, announcements).
        ``chat_type`` defaults to private for positive ids and supergroup for negative ones."""
        chat_type = chat_type or ("private" if chat_id > 0 else "supergroup")
        chat = ChatIdentity(chat_type=chat_type, chat_id=chat_id)
        return await self._send(chat, parts, None)


def _core_of(config: Config, backend: str) -> BackendCore:
    return config.backend_core.get(backend) or BackendCore()


def _kind_of(failure: BaseException) -> str:
    """An error kind's name (``timeout`` for the turn's own deadline, ``media_unavailable``
    for a media that could not be fetched, ``internal`` for a bug)."""
    if isinstance(failure, BackendError):
        return failure.kind.value
    if isinstance(failure, MediaUnavailable):
        return "media_unavailable"
    return "timeout" if isinstance(failure, TimeoutError) else "internal"


def _as_parts(value: Any) -> list[ReplyPart]:
    if value is None:
        return []
    if isinstance(value, str):
        return [Text(value)]
    if isinstance(value, list | tuple):
        return [Text(v) if isinstance(v, str) else v for v in value]
    return [value]


def _once(fn: Callable[[float], Awaitable[None]]) -> Callable[[float], Awaitable[None]]:
    told = False

    async def wrapper(seconds: float) -> None:
        nonlocal told
        if not told:
            told = True
            await fn(seconds)

    return wrapper
