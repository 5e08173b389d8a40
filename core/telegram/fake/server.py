"""The fake Telegram itself: state, faults, the record of actions, the request dispatch.

See :mod:`tgmux.telegram.fake` for what it does and how it is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyrogram import Client, raw
from pyrogram.errors import RPCError
from pyrogram.raw.core import TLObject

from tgmux.telegram.fake.faults import (
    HANG,
    TIMEOUT,
    Fault,
    UnknownRequest,
    check_method,
    error_code,
    refuse,
)
from tgmux.telegram.fake.flood import FloodModel
from tgmux.telegram.fake.handlers import Handlers
from tgmux.telegram.fake.session import attach
from tgmux.telegram.fake.state import StateFile

if TYPE_CHECKING:
    from tgmux.backend import ChatIdentity, ReplyPart
    from tgmux.telegram.frontend import TelegramFrontend

__all__ = ["REPLY_WAIT", "FakeTelegram", "Request", "replying_to"]

log = logging.getLogger("tgmux.telegram.fake")

#: How long an incoming reply to a message the bot has not sent yet waits for it (seconds).
REPLY_WAIT = 60.0

#: Requests that show up in a chat, and so count against Telegram's flood limits.
_FLOOD_COUNTED = frozenset({"send_message", "edit_message", "send_photo", "send_voice",
                            "send_audio", "send_document"})

#: Keys of an action, in the order they are written (absent when not set).
_KEY_ORDER = ("action", "chat_id", "message_id", "draft_id", "chat_action", "text", "entities",
              "media", "mime_type", "duration", "reply_to_message_id", "message_thread_id",
              "scope", "user_id", "language_code", "commands", "link_preview")

#: (chat id, message id) of the message whose reply is being delivered, for the requests made
#: meanwhile: each action is filed under it (``FakeTelegram.action_origins``). Set by a
#: frontend watched with :meth:`FakeTelegram.file_replies`.
replying_to: ContextVar[tuple[int, int | None] | None] = ContextVar("tgmux_fake_replying_to",
                                                                   default=None)


@dataclass
class Request:
    """One raw request the fake got (``error`` set when it was answered with an RPC error)."""

    name: str
    query: TLObject
    chat_id: int | None
    at: float
    error: str | None = None  # as Telegram says it: "FLOOD_WAIT_3", "MESSAGE_NOT_MODIFIED"


class FakeTelegram(Handlers):
    """Telegram's servers, in memory, for one bot (or user account)."""

    def __init__(self, *, bot_username: str = "tgmux_bot", is_bot: bool = True,
                 user_id: int = 5_000_000_001, first_name: str = "tgmux",
                 flood: FloodModel | None = None, latency: float = 0.0,
                 seed: int | str | None = None, state: str | Path | None = None,
                 too_long: int | None = None) -> None:
        """``latency``: each push and each answer is delayed by a random 0..``latency``
        seconds (``seed`` makes the delays repeatable); pushes can so overtake each other, as
        on a real network. ``state``: a state file (:mod:`~tgmux.telegram.fake.state`) the
        fake is read from and kept in. ``too_long``: more updates pending than this and a
        difference is too long (``differenceTooLong``)."""
        super().__init__(raw.types.User(
            id=user_id, is_self=True, bot=is_bot or None, access_hash=0x5EED,
            first_name=first_name, username=bot_username or None,
            bot_info_version=1 if is_bot else None,
        ), is_bot=is_bot)
        self.actions: list[dict[str, Any]] = []
        self.action_times: list[float] = []
        #: per action: (chat id, message id) of the message it answers, None when it answers
        #: none (command menu, announcements) or nobody said (see :meth:`file_replies`)
        self.action_origins: list[tuple[int, int | None] | None] = []
        self.requests: list[Request] = []
        self.unknown: list[str] = []
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.client: Client | None = None
        #: seconds the client's session waits before it sends a request again after a
        #: timeout or server error (Pyrogram: 1 s; here 0 so that tests stay fast)
        self.retry_delay = 0.0
        #: Telegram's flood limits, enforced (FLOOD_WAIT_X) when set; None: never refused
        self.flood = flood
        self._faults: list[Fault] = []
        #: set by :meth:`release_hangs`: the requests hung by a ``HANG`` fault go on
        self._hangs_released: asyncio.Event | None = None
        self._changed = asyncio.Event()
        self.latency = latency
        self.random = random.Random(seed)
        self.log.too_long = too_long
        #: pushes on their way (with latency)
        self._pushes: set[asyncio.Task[None]] = set()
        #: monotonic time until which the connection is down (:meth:`disconnect`)
        self._down_until = 0.0
        self.state_file: StateFile | None = None
        if state is not None:
            self.state_file = StateFile(state)
            if not self.state_file.load(self):
                self.save()

    # -- wiring --------------------------------------------------------------------------------

    def attach(self, client: Client) -> Client:
        """Route ``client``'s network layer here; returns the client."""
        return attach(self, client)

    def file_replies(self, frontend: TelegramFrontend) -> None:
        """File every action ``frontend`` makes while it delivers a reply under the message
        that reply answers (:attr:`action_origins`), by wrapping its ``deliver``."""
        deliver = frontend.deliver

        async def filed(chat: ChatIdentity, parts: AsyncIterator[ReplyPart], *,
                        reply_to_message_id: int | None) -> list[ReplyPart]:
            token = replying_to.set((chat.chat_id, chat.message_id))
            try:
                return await deliver(chat, parts, reply_to_message_id=reply_to_message_id)
            finally:
                replying_to.reset(token)

        frontend.deliver = filed  # type: ignore[method-assign]

    # -- the account and the connection ----------------------------------------------------------

    def revoke_session(self, error: str | None = None) -> None:
        """Revoke the session: every later request fails with ``error`` (401
        ``AUTH_KEY_UNREGISTERED`` for a bot whose token was revoked, ``SESSION_REVOKED`` for
        a user account's session terminated elsewhere), and nothing more is pushed."""
        self.account_error = error or ("AUTH_KEY_UNREGISTERED" if self.is_bot
                                       else "SESSION_REVOKED")
        self.save()

    def ban_account(self) -> None:
        """Ban the account: every later request fails with 401 ``USER_DEACTIVATED_BAN``."""
        self.account_error = "USER_DEACTIVATED_BAN"
        self.save()

    def disconnect(self, seconds: float) -> None:
        """The connection drops for ``seconds``: nothing is pushed meanwhile (what arrives
        is only in the update log: gaps), and requests wait until it is back (the client's
        session reconnects and sends them again)."""
        self._down_until = max(self._down_until, time.monotonic() + seconds)

    def _is_down(self) -> bool:
        return time.monotonic() < self._down_until

    async def _wait_connection(self) -> None:
        while (left := self._down_until - time.monotonic()) > 0:  # noqa: ASYNC110 (extendable)
            await asyncio.sleep(left)

    async def _delay(self) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.random.uniform(0, self.latency))

    def save(self) -> None:
        """Write what changed to the state file (when there is one)."""
        if self.state_file is not None:
            self.state_file.save(self)

    def close(self) -> None:
        """Write the state file a last time and close it."""
        if self.state_file is not None:
            self.save()
            self.state_file.close()
            self.state_file = None

    async def settle_pushes(self, timeout: float = 30.0) -> None:
        """Wait until every push on its way (latency) has reached the client."""
        async with asyncio.timeout(timeout):
            while self._pushes:
                await asyncio.gather(*list(self._pushes), return_exceptions=True)

    def fail(self, method: str, error: str, *, times: int | None = 1,
             chat_id: int | None = None, code: int | None = None,
             delivered: bool = False) -> None:
        """Answer the next ``times`` matching requests with an RPC error.

        ``method`` is a raw name (``messages.EditMessage``), an action name (``send_message``,
        ``edit_message``, ``send_draft``, ``chat_action``, ``send_photo``...) or ``*``.
        ``error`` is Telegram's error (``FLOOD_WAIT_3``, ``USER_IS_BLOCKED``, the server error
        ``RPC_CALL_FAIL``...; use ids Pyrogram knows, it logs unknown ones to
        ``unknown_errors.txt``), ``TIMEOUT`` (no answer at all) or ``HANG`` (the request
        never ends, not even by a timeout, until :meth:`release_hangs`: then it is answered
        as usual). ``delivered``: the request
        takes effect (the message is sent) and only its answer is lost or an error.
        The client's session retries timeouts and server errors by itself (each retry is a
        matching request too).
        """
        check_method(method)
        self._faults.append(Fault(method, error, code or error_code(error), chat_id, times,
                                  delivered))

    def release_hangs(self) -> None:
        """Let every request a ``HANG`` fault holds go on (answered as usual)."""
        if self._hangs_released is not None:
            self._hangs_released.set()
            self._hangs_released = None

    # -- recording -----------------------------------------------------------------------------

    def _record(self, action: dict[str, Any]) -> dict[str, Any]:
        order = {key: i for i, key in enumerate(_KEY_ORDER)}
        action = dict(sorted(((k, v) for k, v in action.items() if v is not None),
                             key=lambda kv: order.get(kv[0], len(order))))
        self.actions.append(action)
        self.action_times.append(time.monotonic())
        self.action_origins.append(replying_to.get())
        for listener in list(self.listeners):
            listener(action)
        self._changed.set()
        self._changed = asyncio.Event()
        return action

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], *, start: int = 0,
                       timeout: float = 10.0) -> dict[str, Any]:
        """The first action from index ``start`` on that matches, waiting for it if needed."""
        async with asyncio.timeout(timeout):
            seen = start
            while True:
                for action in self.actions[seen:]:
                    if predicate(action):
                        return action
                seen = len(self.actions)
                await self._changed.wait()

    # -- incoming messages ---------------------------------------------------------------------

    async def incoming(self, **fields: Any) -> tuple[int, int]:
        """Deliver one incoming message (fields as in a ``tgmux simulate`` input line);
        returns ``(chat_id, message_id)``. While the client is offline the message waits for
        its catch-up (``updates.getDifference``) at the next start. A reply to a message the
        bot has not sent yet (``reply_to_message_id`` past the chat's last outgoing id) waits
        for it, up to :data:`REPLY_WAIT` seconds: a script replies to the bot's answers."""
        target = fields.get("reply_to_message_id")
        if target is not None:
            await self._sent_yet(fields.get("chat_id", fields.get("user_id")), target)
        updates, chat_id, message_id = self.build_incoming(**fields)
        self.save()
        await self.push(updates)
        return chat_id, message_id

    async def _sent_yet(self, chat_id: Any, message_id: int) -> None:
        """Wait until the bot sent ``message_id`` in ``chat_id`` when it is one of its next
        messages (at most :data:`REPLY_WAIT` s; then the line is refused as unknown)."""
        if not isinstance(chat_id, int) or not self.will_send(chat_id, message_id):
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPLY_WAIT):
                while self.will_send(chat_id, message_id):
                    changed = self._changed
                    await changed.wait()

    async def push(self, updates: TLObject | None) -> None:
        """Push raw updates to the client, as the network does (dropped while it is not
        connected, or the connection is down: it catches up through getDifference). With
        latency the push is on its way when this returns (pushes can overtake each other)."""
        if updates is None:  # a gap: in the log only
            return
        if self.latency > 0:
            task = asyncio.create_task(self._push_later(updates))
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)
            return
        await self._push_now(updates)

    async def _push_later(self, updates: TLObject) -> None:
        await self._delay()
        await self._push_now(updates)

    async def _push_now(self, updates: TLObject) -> None:
        client = self.client
        if client is not None and client.is_connected and self.account_error is None \
                and not self._is_down():
            try:
                await client.handle_updates(updates)
            except Exception as exc:
                # As on the network (Pyrogram handles each push in a task of its own), the
                # sender never hears of it: the push is lost, the update log still has it.
                log.error("the client failed to handle pushed updates (%s: %s); they are "
                          "lost unless it fetches them again", type(exc).__name__, exc)
                return
            if isinstance(updates, raw.types.Updates):
                self.served(updates.updates)
                self.save()
            elif isinstance(updates, (raw.types.UpdateShortMessage,
                                      raw.types.UpdateShortChatMessage)):
                # a compact update carries the message: a client that knows its peers has it
                chat = updates.user_id if isinstance(updates, raw.types.UpdateShortMessage) \
                    else -updates.chat_id
                self.undelivered.pop((chat, updates.id), None)
                self.save()

    # -- answering requests --------------------------------------------------------------------

    async def answer(self, query: TLObject, client: Client) -> Any:
        name = query.QUALNAME.removeprefix("functions.")
        peer = getattr(query, "peer", None) or getattr(query, "channel", None)
        chat_id = self.chat_id_of(peer)
        action = self._action_name(query)
        request = Request(name, query, chat_id, time.monotonic())
        self.requests.append(request)
        await self._wait_connection()
        await self._delay()
        if self.account_error is not None:
            request.error = self.account_error
            refuse(self.account_error, type(query), 401)
        fault = next((f for f in self._faults if f.matches((name, action or name), chat_id)),
                     None)
        if fault is not None:
            if fault.times is not None:
                fault.times -= 1
            if fault.error == HANG:
                request.error = HANG
                if self._hangs_released is None:
                    self._hangs_released = asyncio.Event()
                await self._hangs_released.wait()
                request.error = fault = None  # answered late, as if the network woke up
            elif not fault.delivered:
                self._raise(fault, request)
        if self.flood is not None and action in _FLOOD_COUNTED and chat_id is not None \
                and not self._repeated(query, chat_id):
            wait = self.flood.admit(chat_id)
            if wait:
                request.error = f"FLOOD_WAIT_{wait}"
                refuse(request.error, type(query), 420)
        handler = getattr(self, "_on_" + name.replace(".", "_"), None)
        if handler is None:
            self.unknown.append(name)
            raise UnknownRequest(f"the fake Telegram has no answer for {name}: {query}")
        try:
            result = await handler(query)
            self.save()
        except RPCError as exc:
            error = str(exc.ID or exc.NAME)
            if error.endswith("_X") and isinstance(exc.value, int):
                error = f"{error[:-2]}_{exc.value}"
            request.error = error
            raise
        if fault is not None:  # done, but the client never hears so
            self._raise(fault, request)
        return result

    def _repeated(self, query: TLObject, chat_id: int) -> bool:
        """The session sending a request again (same ``random_id``): answered, not counted."""
        random_id = getattr(query, "random_id", None)
        return random_id is not None and (chat_id, random_id) in self._sent

    @staticmethod
    def _raise(fault: Fault, request: Request) -> None:
        request.error = fault.error
        if fault.error == TIMEOUT:
            raise TimeoutError("Request timed out")  # what Pyrogram's Session.send raises
        refuse(fault.error, type(request.query), fault.code)
