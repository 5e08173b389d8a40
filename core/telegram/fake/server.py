"""The fake Telegram itself: state, faults, the record of actions, the request dispatch.

See :mod:`tgmux.telegram.fake` for what it does and how it is used.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyrogram import Client, raw
from pyrogram.errors import RPCError
from pyrogram.raw.core import TLObject

from tgmux.telegram.fake.faults import HANG, TIMEOUT, Fault, UnknownRequest, error_code, refuse
from tgmux.telegram.fake.flood import FloodModel
from tgmux.telegram.fake.handlers import Handlers
from tgmux.telegram.fake.session import attach

if TYPE_CHECKING:
    from tgmux.backend import ChatIdentity, ReplyPart
    from tgmux.telegram.frontend import TelegramFrontend

__all__ = ["FakeTelegram", "Request", "replying_to"]

#: Requests that show up in a chat, and so count against Telegram's flood limits.
_FLOOD_COUNTED = frozenset({"send_message", "edit_message", "send_photo", "send_voice",
                            "send_audio", "send_document"})

#: Keys of an action, in the order they are written (absent when not set).
_KEY_ORDER = ("action", "chat_id", "message_id", "draft_id", "chat_action", "text", "media",
              "mime_type", "duration", "reply_to_message_id", "message_thread_id", "scope",
              "user_id", "language_code", "commands", "link_preview")

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
                 flood: FloodModel | None = None) -> None:
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
        self._changed = asyncio.Event()

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

    def fail(self, method: str, error: str, *, times: int | None = 1,
             chat_id: int | None = None, code: int | None = None,
             delivered: bool = False) -> None:
        """Answer the next ``times`` matching requests with an RPC error.

        ``method`` is a raw name (``messages.EditMessage``), an action name (``send_message``,
        ``edit_message``, ``send_draft``, ``chat_action``, ``send_photo``...) or ``*``.
        ``error`` is Telegram's error (``FLOOD_WAIT_3``, ``USER_IS_BLOCKED``, the server error
        ``RPC_CALL_FAIL``...; use ids Pyrogram knows, it logs unknown ones to
        ``unknown_errors.txt``), ``TIMEOUT`` (no answer at all) or ``HANG`` (the request
        never ends, not even by a timeout). ``delivered``: the request
        takes effect (the message is sent) and only its answer is lost or an error.
        The client's session retries timeouts and server errors by itself (each retry is a
        matching request too).
        """
        self._faults.append(Fault(method, error, code or error_code(error), chat_id, times,
                                  delivered))

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
        its catch-up (``updates.getDifference``) at the next start."""
        updates, chat_id, message_id = self.build_incoming(**fields)
        await self.push(updates)
        return chat_id, message_id

    async def push(self, updates: TLObject) -> None:
        """Push raw updates to the client, as the network does (dropped while it is not
        connected: it catches up through getDifference when it starts)."""
        client = self.client
        if client is not None and client.is_connected:
            await client.handle_updates(updates)

    # -- answering requests --------------------------------------------------------------------

    async def answer(self, query: TLObject, client: Client) -> Any:
        name = query.QUALNAME.removeprefix("functions.")
        peer = getattr(query, "peer", None) or getattr(query, "channel", None)
        chat_id = self.chat_id_of(peer)
        action = self._action_name(query)
        request = Request(name, query, chat_id, time.monotonic())
        self.requests.append(request)
        fault = next((f for f in self._faults if f.matches((name, action or name), chat_id)),
                     None)
        if fault is not None:
            if fault.times is not None:
                fault.times -= 1
            if fault.error == HANG:
                request.error = HANG
                await asyncio.Event().wait()
            if not fault.delivered:
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
